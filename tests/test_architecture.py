"""The package's structure: the import-linter contracts hold, the kernel runtime imports only what a
Kaggle image has, reading a config stays cheap, and each subpackage's docstring names its modules."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

from freesound.versions import KERNEL

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "freesound"
#: What a Kaggle Python image has (librosa brings audioread), besides the standard library: the
#: packages whose minimum versions a kernel checks before it runs.
KAGGLE_IMAGE = set(KERNEL) | {"audioread"}
#: Optional CPU runtimes: imported inside functions of freesound.predict.runtimes only, when
#: installed or attached as wheels (freesound.kaggle.wheels); torch runs without them.
OPTIONAL_RUNTIMES = {"onnx", "onnxruntime", "openvino"}
#: The optional timm backbones (``pip install 'freesound[timm]'``, safetensors comes with timm):
#: imported inside functions of freesound.models.timm_family only, when such a model is built.
OPTIONAL_BACKBONES = {"timm", "safetensors"}


def test_import_linter_contracts_are_kept(capsys):
    status = lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "5 kept, 0 broken" in report


def test_the_kernel_runtime_imports_only_what_a_kaggle_image_has():
    graph = grimp.build_graph("freesound", include_external_packages=True)
    imported = graph.find_upstream_modules("freesound.kaggle", as_package=True)
    external = {name.partition(".")[0] for name in imported if not name.startswith("freesound")}
    assert external - set(sys.stdlib_module_names) <= KAGGLE_IMAGE | OPTIONAL_RUNTIMES | OPTIONAL_BACKBONES
    for runtime in OPTIONAL_RUNTIMES & external:
        assert graph.find_modules_that_directly_import(runtime) == {"freesound.predict.runtimes"}
    for package in OPTIONAL_BACKBONES & external:
        assert graph.find_modules_that_directly_import(package) == {"freesound.models.timm_family"}
    # and it really reaches the front end and the predictor it runs
    assert {"freesound.audio.logmel", "freesound.predict.ensemble"} <= imported


def test_reading_an_experiment_loads_no_numeric_library():
    code = ("import sys, freesound.config as c; c.load_experiment('small', 'experiments'); "
            "print(sorted(m for m in ('numpy', 'librosa', 'torch', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_each_subpackage_docstring_names_its_modules():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        modules = sorted(p.name for p in init.parent.glob("*.py") if p.name != "__init__.py")
        unnamed = [name for name in modules if name not in doc]
        assert not unnamed, f"{init.relative_to(REPO)} does not describe {unnamed}"
