"""The lowest versions of Python and of every runtime dependency this package works with, in one place.

``setup.py`` turns ``MINIMUM`` into the package's requirements, the Kaggle kernel checks the
``KERNEL`` ones before it imports anything else (``kernel_report``), and ``make test-min`` runs the
kernel tests and a fast part of the suite in a fresh environment holding exactly these versions
(``constraints``). Raise a number here when code needs a newer release, and say why beside it.

Only the standard library is imported, and nothing from this package: ``setup.py`` executes this
file on its own, and a kernel runs it before it knows whether the image can run the rest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import re

#: The oldest Python: ``freesound.config`` reads TOML with ``tomllib`` (3.11); 3.10 reached its end
#: of life in October 2026.
PYTHON = "3.11"

#: Distribution name -> lowest version, each the oldest tested by ``make test-min`` on Python 3.11
#: except torch (see ``TESTED_TORCH``).
MINIMUM = {
    # torch.amp.GradScaler("cuda") (training) arrived in 2.3.
    "torch": "2.3",
    "numpy": "1.24",
    # The oldest with wheels for Python 3.11.
    "scipy": "1.9.2",
    "pandas": "2.0",
    # 0.10.0 and 0.10.1 import pkg_resources, which a fresh environment no longer has.
    "librosa": "0.10.2",
    # librosa 0.10 requires 0.12.1.
    "soundfile": "0.12.1",
    # GroupKFold(shuffle=True), for make-folds --group-by, came in 1.6.
    "scikit-learn": "1.6",
    # Multi-label stratified folds (make-folds --stratify).
    "iterative-stratification": "0.1.9",
    # The tests read a CLI run's stderr apart from its stdout, which click's CliRunner does from 8.2.
    "click": "8.2",
    "jinja2": "3.1",
    "tqdm": "4.60",
    "matplotlib": "3.7",
    # RetryHeartbeatStaleTrialCallback and heartbeat_stale_trial_callback (search) are Optuna 5's.
    "optuna": "5.0",
}

#: The experiment trackers (``pip install 'freesound[tracking]'``, ``freesound.training.tracking``):
#: optional, so not in ``MINIMUM``; the releases tested, not older ones. MLflow 3.17 refuses a
#: folder store, hence the SQLite default; wandb's ``reinit="create_new"`` (one run per fold in a
#: process) came in 0.19.10.
TRACKING = ["mlflow>=3.17", "tensorboard>=2.21", "wandb>=0.31"]

#: timm (``pip install 'freesound[timm]'``, the model family ``[model] name = "timm"``): optional, so
#: not in ``MINIMUM``. 1.0.22 is the release tested (``make test-timm`` pins it), not an older one:
#: 1.0.21 and older import a function huggingface_hub 1.0 removed, so with today's hub they
#: cannot fetch hub weights (``pretrained = true``).
#: It brings torchvision, which must match torch exactly (the CI's local torch 2.13.0 build has no
#: match, so ``make test-timm`` runs in its own environment with torch 2.14.1 and torchvision
#: 0.29.1), and safetensors.
TIMM = "1.0.22"

#: Optional distributions some model families import -> their lowest version: a kernel whose
#: ensemble has such a model checks it before it runs (``MODEL_PACKAGES``, ``freesound.kaggle.wheels``).
OPTIONAL = {"timm": TIMM}

#: Model name (``[model] name``, a checkpoint's ``model_name``) -> the optional distribution it imports.
MODEL_PACKAGES = {"timm": "timm"}

#: The one torch build the CI machines have (a CPU build on local disk): the torch minimum is
#: declared from the APIs used, not tested.
TESTED_TORCH = "2.13.0"

#: What the kernel runtime imports (``freesound.kaggle``): checked before a kernel runs.
KERNEL = ("numpy", "pandas", "scipy", "torch", "librosa", "soundfile")

#: Distribution name -> module name, where they differ (for a package installed without metadata).
_MODULES = {"scikit-learn": "sklearn", "iterative-stratification": "iterstrat"}


def requirements() -> list:
    """``setup.py``'s ``install_requires``: ``["torch>=2.3", "numpy>=1.24", ...]``."""
    return [f"{name}>={version}" for name, version in MINIMUM.items()]


def constraints(skip=("torch",)) -> str:
    """A pip constraints file pinning every dependency to its minimum (``make test-min``).

    torch is skipped by default: the CI installs its one local build first, which satisfies the
    requirement.
    """
    return "".join(f"{name}=={version}\n" for name, version in MINIMUM.items() if name not in skip)


def version_tuple(text: str) -> tuple:
    """The numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``.

    Local tags (``+cpu``) and pre/post-release suffixes (``rc1``, ``.post1``, ``.dev0``) are
    dropped: a release candidate of a version counts as that version.

    Raises
    ------
    ValueError
        The text does not start with a number.
    """
    match = re.match(r"\d+(\.\d+)*", text.strip())
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def _padded(numbers: tuple, length: int) -> tuple:
    return numbers + (0,) * (length - len(numbers))


def is_older(installed: str, minimum: str) -> bool:
    """Whether ``installed`` is below ``minimum`` (``"1.26.4"`` vs ``"1.24"``: False)."""
    have, need = version_tuple(installed), version_tuple(minimum)
    length = max(len(have), len(need))
    return _padded(have, length) < _padded(need, length)


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed.

    Read from the package's metadata, which imports nothing; a package installed without metadata
    is imported for its ``__version__``.
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module(_MODULES.get(name, name))
    except ImportError:
        return None
    return str(getattr(module, "__version__", "0"))


def installed_versions(names=KERNEL) -> dict:
    """``{"python": "3.11.7", name: version or None, ...}`` for ``names``."""
    return {"python": platform.python_version(), **{name: installed_version(name) for name in names}}


def describe(versions: dict) -> str:
    """One line: ``"python 3.11.7, numpy 2.4.6, torch (not installed)"``."""
    return ", ".join(f"{name} {version or '(not installed)'}" for name, version in versions.items())


def problems(versions: dict) -> list:
    """One sentence for each package in ``versions`` that is missing or older than its minimum.

    Parameters
    ----------
    versions : dict, name (``"python"``, a ``MINIMUM`` or an ``OPTIONAL`` key) -> installed version or None

    Returns
    -------
    list of str, empty when every version is recent enough
    """
    found = []
    for name, version in versions.items():
        minimum = PYTHON if name == "python" else {**MINIMUM, **OPTIONAL}[name]
        if version is None:
            found.append(f"{name} is not installed; freesound needs {name} {minimum} or newer")
        elif is_older(version, minimum):
            fix = "" if name == "python" else f" or install {name}>={minimum}"
            found.append(f"{name} {version} is older than the {minimum} freesound needs; choose a newer environment{fix}")
    return found


def model_packages(model_names) -> list:
    """The optional distributions (``OPTIONAL``) that models of these names import, sorted:
    ``["aux_skip_attention", "timm"]`` -> ``["timm"]``."""
    return sorted({MODEL_PACKAGES[name] for name in model_names if name in MODEL_PACKAGES})


def kernel_report(names=KERNEL) -> tuple:
    """What a kernel prints first: the versions it runs with, and why it cannot run, if it cannot.

    Returns
    -------
    (str, str or None): ``"versions: python 3.11.7, numpy ..."`` and the first problem (one
    sentence naming the package) or None.
    """
    versions = installed_versions(names)
    found = problems(versions)
    return f"versions: {describe(versions)}", found[0] if found else None
