"""Optional runtimes and model packages for an offline kernel: wheels attached as a Kaggle dataset.

A Kaggle kernel without internet cannot ``pip install``. A wheel is a zip archive of the files
``pip`` would install, so for a package that is not in the image the kernel extracts every
attached wheel of it (``*.whl`` in any ``<root>/input/*/`` folder, or one level deeper) into a
temporary folder at the front of ``sys.path``, removed when the process exits. Wheels must match
the image's Python and platform (``pip download --only-binary=:all: --python-version 3.11
--platform manylinux_2_28_x86_64 ...``; ``docs/kernels.md`` says how). What cannot be imported
afterwards is reported, and the models run in torch.

The same goes for the optional packages some model families import (``freesound.versions.OPTIONAL``:
timm): a kernel whose ensemble has such a model (its manifest's ``packages``) attaches their wheels
when the image lacks them, then checks their versions before predicting anything
(``require_packages``), and stops with one sentence when it cannot.
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

from freesound.errors import FreesoundError
from freesound.versions import OPTIONAL, installed_version, is_older

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


def require_packages(names, input_dir, log) -> dict:
    """Make the optional packages ``names`` (keys of ``freesound.versions.OPTIONAL``) importable
    at their minimum versions: attach the wheels in ``input_dir`` of those the image lacks, import
    each, and log its version and where it came from.

    Parameters
    ----------
    names : list of str, distribution names (a manifest's ``packages``; empty: nothing is done)
    input_dir : path-like, ``<root>/input``, searched by ``find_wheels``
    log : callable taking one line

    Returns
    -------
    dict name -> version

    Raises
    ------
    FreesoundError
        A package is neither installed nor attached, is older than its minimum, or fails to import
        (a wheel for another Python, a torchvision that does not match torch); one sentence naming
        it and how to attach a wheel.
    """
    names = list(names)
    attached = {wheel_distribution(wheel): wheel for wheel in attach_wheels(find_wheels(input_dir), names)}
    found = {}
    for name in names:
        minimum, version = OPTIONAL[name], installed_version(name)
        fix = (f"attach a dataset holding {name}'s wheel ({name}>={minimum}; pip download --no-deps "
               f"{name}=={minimum}, see docs/kernels.md)")
        if version is None:
            raise FreesoundError(f"this kernel's ensemble needs {name} {minimum} or newer, which this image does not "
                                 f"have and no {name} wheel is attached below {input_dir}: {fix}")
        if is_older(version, minimum):
            raise FreesoundError(f"this kernel's ensemble needs {name} {minimum} or newer, this image has {version}: "
                                 f"{fix}")
        problem = importable([name])
        if problem is not None:
            raise FreesoundError(f"this kernel's ensemble needs {name}, and {name} {version} cannot be imported here "
                                 f"({problem}); {fix}")
        source = f"attached from {attached[name].name}" if name in attached else "installed"
        log(f"versions: {name} {version} ({source})")
        found[name] = version
    return found
