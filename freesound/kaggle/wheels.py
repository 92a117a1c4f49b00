"""Optional runtimes for an offline kernel: wheels attached as a Kaggle dataset.

A Kaggle kernel without internet cannot ``pip install``. A wheel is a zip archive of the files
``pip`` would install, so for a package that is not in the image the kernel extracts every
attached wheel of it (``*.whl`` in any ``<root>/input/*/`` folder, or one level deeper) into a
temporary folder at the front of ``sys.path``, removed when the process exits. Wheels must match
the image's Python and platform (``pip download --only-binary=:all: --python-version 3.11
--platform manylinux_2_28_x86_64 ...``; ``docs/kernels.md`` says how). What cannot be imported
afterwards is reported, and the models run in torch.
"""

from __future__ import annotations

import atexit
import importlib
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

#: The runtimes' import names and the distributions their wheels come in, in the order tried.
RUNTIME_MODULES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


def wheel_distribution(path) -> str:
    """The normalised distribution name of a wheel file: ``onnxruntime-1.32.0-cp311-...whl`` ->
    ``onnxruntime`` (PEP 427: the name is the part before the first ``-``)."""
    return re.sub(r"[-_.]+", "_", Path(path).name.split("-", 1)[0]).lower()


def find_wheels(input_dir) -> list:
    """Every ``*.whl`` in ``input_dir``'s subfolders and one level below them, sorted by path."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        return []
    return sorted(set(input_dir.glob("*/*.whl")) | set(input_dir.glob("*/*/*.whl")))


def attach_wheels(wheels, modules, target=None) -> list:
    """Extract the wheels of ``modules`` not importable yet into ``target`` (default a temporary
    folder removed at exit) and put it first on ``sys.path``.

    Returns
    -------
    list of Path, the wheels extracted
    """
    wanted = {module for module in modules if importlib.util.find_spec(module) is None}
    chosen = [Path(wheel) for wheel in wheels if wheel_distribution(wheel) in wanted]
    if not chosen:
        return []
    if target is None:
        target = tempfile.mkdtemp(prefix="freesound-wheels-")
        atexit.register(shutil.rmtree, target, ignore_errors=True)
    for wheel in chosen:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return chosen


def importable(modules) -> str | None:
    """None when every module imports, else the first failure as ``module: reason``."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # a wheel for another Python or platform fails in many ways
            return f"{module}: {type(error).__name__}: {error}"
    return None


def kernel_runtime(input_dir, log) -> str:
    """The runtime a kernel's models run in on a CPU: the first of ``RUNTIME_MODULES`` that
    imports, after attaching its wheels from ``input_dir``; torch when none does (logged)."""
    wheels = find_wheels(input_dir)
    problems = []
    for runtime, modules in RUNTIME_MODULES.items():
        attached = attach_wheels(wheels, modules)
        if all(importlib.util.find_spec(module) is not None for module in modules):
            problem = importable(modules)
            if problem is None:
                source = f" (from {', '.join(wheel.name for wheel in attached)})" if attached else ""
                log(f"runtime: {runtime}{source}")
                return runtime
            problems.append(problem)
    log("runtime: torch" + (f" ({'; '.join(problems)})" if problems else
                            " (no ONNX runtime installed or attached as wheels)"))
    return "torch"
