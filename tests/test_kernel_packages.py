"""Optional model packages in kernels (timm): the manifest names them, the kernel attaches their
wheels when the image lacks them and checks their versions before predicting, or stops with one
sentence; and ``FREESOUND_REQUIRE_TIMM=1`` turns a test skipped for want of timm into a failure.

The cases without timm simulate a Kaggle image that lacks it (they run where timm is not
installed); the real timm case runs in ``make test-timm``.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from freesound import versions
from freesound.errors import FreesoundError
from freesound.kaggle.wheels import require_packages
from kernel_build import build_kernels
from kernel_build.manifest import build_manifest
from test_kernel import CLASSES, kaggle_tree, run_script, save_fold, write_competition

REPO = Path(__file__).resolve().parents[1]
TIMM_INSTALLED = importlib.util.find_spec("timm") is not None
# Not "could not import": conftest's FREESOUND_REQUIRE_TIMM rule must not fail these skips.
needs_image_without_timm = pytest.mark.skipif(
    TIMM_INSTALLED, reason="timm is installed in this environment; the case simulates an image without it")


def save_timm_fold(path: Path) -> None:
    """A checkpoint of a timm model as training writes it (only its header is read before the check)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_name": "timm", "model_params": {"num_classes": len(CLASSES), "backbone": "test_efficientnet"},
                "state_dict": {}, "classes": CLASSES, "audio_config": {}}, path)


def write_wheel(folder: Path, version: str, init: str = "") -> Path:
    """A wheel of a fake ``timm`` distribution: its module sets ``__version__``, then runs ``init``."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"timm-{version}-py3-none-any.whl"
    info = f"timm-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("timm/__init__.py", f"__version__ = {version!r}\n{init}")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: timm\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def clean_imports(monkeypatch):
    """Undo what attaching a fake wheel does to ``sys.path`` and the module cache."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("timm", None)
    importlib.invalidate_caches()


def test_model_packages_name_the_optional_distributions_of_the_models():
    assert versions.model_packages(["aux_skip_attention", "timm", "fcnet", "timm"]) == ["timm"]
    assert versions.model_packages(["aux_skip_attention", "simple_cnn"]) == []
    assert versions.OPTIONAL == {"timm": versions.TIMM} and versions.TIMM == "1.0.22"
    assert versions.problems({"timm": "0.9.16"}) == [
        "timm 0.9.16 is older than the 1.0.22 freesound needs; choose a newer environment or install timm>=1.0.22"]


def test_the_manifest_lists_timm_only_when_an_experiment_is_a_timm_model(tmp_path):
    weights = tmp_path / "experiments"
    for fold in range(2):
        save_fold(weights / f"asa/fold_{fold}/model.pt", "aux_skip_attention",
                  {"num_classes": len(CLASSES), "base_size": 4}, seed=fold)
        save_timm_fold(weights / f"tiny_timm/fold_{fold}/model.pt")
    folds = [f"fold_{fold}/model.pt" for fold in range(2)]
    without = {"name": "asa", "experiments": {"asa": [f"asa/{f}" for f in folds]}, "stackers": {}}
    with_timm = {"name": "both", "experiments": {"asa": [f"asa/{f}" for f in folds],
                                                 "tiny_timm": [f"tiny_timm/{f}" for f in folds]}, "stackers": {}}
    assert build_manifest(without, weights)["packages"] == []
    assert build_manifest(with_timm, weights)["packages"] == ["timm"]


def test_no_packages_asked_attaches_and_logs_nothing(tmp_path):
    lines = []
    assert require_packages([], tmp_path, lines.append) == {} and lines == []


@needs_image_without_timm
def test_a_timm_wheel_attached_as_a_dataset_is_imported_and_its_version_logged(tmp_path, clean_imports):
    write_wheel(tmp_path / "input" / "timm-wheel", versions.TIMM)
    lines = []
    assert require_packages(["timm"], tmp_path / "input", lines.append) == {"timm": versions.TIMM}
    assert lines == [f"versions: timm {versions.TIMM} (attached from timm-{versions.TIMM}-py3-none-any.whl)"]
    assert importlib.import_module("timm").__version__ == versions.TIMM


@needs_image_without_timm
def test_an_attached_timm_older_than_the_minimum_is_refused_in_one_sentence(tmp_path, clean_imports):
    write_wheel(tmp_path / "input" / "old" / "wheels", "0.9.16")  # one level deeper, as zip dir-mode serves it
    with pytest.raises(FreesoundError) as error:
        require_packages(["timm"], tmp_path / "input", print)
    assert str(error.value) == (
        "this kernel's ensemble needs timm 1.0.22 or newer, this image has 0.9.16: attach a dataset holding "
        "timm's wheel (timm>=1.0.22; pip download --no-deps timm==1.0.22, see docs/kernels.md)")


@needs_image_without_timm
def test_an_attached_timm_that_fails_to_import_is_named_with_the_reason(tmp_path, clean_imports):
    write_wheel(tmp_path / "input" / "timm-wheel", versions.TIMM,
                init="raise RuntimeError('operator torchvision::nms does not exist')\n")
    with pytest.raises(FreesoundError, match=r"^this kernel's ensemble needs timm, and timm 1\.0\.22 cannot be "
                                             r"imported here \(timm: RuntimeError: operator torchvision::nms does "
                                             r"not exist\); attach a dataset"):
        require_packages(["timm"], tmp_path / "input", print)


@needs_image_without_timm
def test_an_ensemble_kernel_with_a_timm_model_and_no_timm_stops_in_one_line(tmp_path):
    base = tmp_path / "build"
    work = base / "work"
    for fold in range(2):
        save_fold(work / f"experiments/asa/fold_{fold}/model.pt", "aux_skip_attention",
                  {"num_classes": len(CLASSES), "base_size": 4}, seed=fold)
        save_timm_fold(work / f"experiments/tiny_timm/fold_{fold}/model.pt")
    write_competition(base / "competition")
    folds = [f"fold_{fold}/model.pt" for fold in range(2)]
    ensemble = {"name": "mixed", "experiments": {name: [f"{name}/{f}" for f in folds] for name in ("asa", "tiny_timm")},
                "stackers": {}}
    written = build_kernels(work, ensemble=ensemble, out_dir=base / "kernel", log=lambda line: None)
    root = kaggle_tree({"base": base, "work": work}, tmp_path / "kaggle")

    result = run_script(written["ensemble_kernel"], root, tmp_path / "tmp")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == (
        f"error: this kernel's ensemble needs timm 1.0.22 or newer, which this image does not have and no timm "
        f"wheel is attached below {root / 'input'}: attach a dataset holding timm's wheel (timm>=1.0.22; pip "
        "download --no-deps timm==1.0.22, see docs/kernels.md)\n")
    assert "sha256 verified" not in result.stdout  # stopped before anything else
    assert list((root / "working").iterdir()) == []


@pytest.mark.timm
def test_an_installed_timm_is_checked_and_logged(tmp_path):
    timm = pytest.importorskip("timm")
    lines = []
    assert require_packages(["timm"], tmp_path, lines.append) == {"timm": timm.__version__}
    assert lines == [f"versions: timm {timm.__version__} (installed)"]
    assert not versions.is_older(timm.__version__, versions.TIMM)


PROBE = '''
import pytest


def test_needs_timm():
    pytest.skip("could not import 'timm': No module named 'timm'")


def test_skips_for_another_reason():
    pytest.skip("timm is installed in this environment")
'''


@pytest.mark.parametrize("required", ["1", ""])
def test_require_timm_fails_a_test_skipped_for_want_of_timm(tmp_path, required):
    (tmp_path / "test_probe.py").write_text(PROBE)
    # This suite's conftest.py as a plugin of a pytest run on the probe alone.
    env = {**os.environ, "FREESOUND_REQUIRE_TIMM": required, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                             "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    summary = (result.stdout.strip().splitlines() or [result.stderr])[-1]
    if required:
        assert result.returncode == 1 and summary.startswith("1 failed, 1 skipped"), result.stdout
        assert ("FREESOUND_REQUIRE_TIMM=1, but this was skipped for want of timm: could not import 'timm'"
                in result.stdout)
    else:
        assert result.returncode == 0 and summary.startswith("2 skipped"), result.stdout
