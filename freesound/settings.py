"""The one place that reads the environment. Library code takes paths and devices as arguments;
only the CLI and the kernel entry point call these to pick defaults."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_ROOT_VARIABLE = "FREESOUND_KAGGLE_ROOT"


def kaggle_root() -> Path:
    """``/kaggle`` unless ``FREESOUND_KAGGLE_ROOT`` names another root (for local simulation)."""
    return Path(os.environ.get(KAGGLE_ROOT_VARIABLE, "/kaggle"))


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers() -> int:
    """Worker processes for feature extraction: the CPUs this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


#: cuBLAS reads its workspace size from this variable; the two values below make its results
#: deterministic (NVIDIA's cuBLAS guide, "Results reproducibility", CUDA >= 10.2).
CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_CUBLAS_WORKSPACES = (":4096:8", ":16:8")


def use_deterministic_cublas_workspace() -> str:
    """Set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless it already holds a deterministic value;
    return the value in effect.

    PyTorch sizes its cuBLAS workspace from the variable when the process first uses cuBLAS, so
    it must be set before the first CUDA matrix product (``train.deterministic`` training sets it
    as it starts).
    """
    if os.environ.get(CUBLAS_WORKSPACE_VARIABLE) not in DETERMINISTIC_CUBLAS_WORKSPACES:
        os.environ[CUBLAS_WORKSPACE_VARIABLE] = DETERMINISTIC_CUBLAS_WORKSPACES[0]
    return os.environ[CUBLAS_WORKSPACE_VARIABLE]


#: The variables ``torchrun`` (torch.distributed.run) sets in every process it starts
#: (PyTorch's "torchrun (Elastic Launch)" documentation).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective operation (a gradient all-reduce, the validation gather, the wait for
#: local rank 0 to cache log-mels) may wait for a process before it fails; overrides the default.
DDP_TIMEOUT_VARIABLE = "FREESOUND_DDP_TIMEOUT_S"
#: 30 minutes, torch's own default for gloo: long enough for a node's local rank 0 to cache
#: missing log-mels while the others wait, short enough that a hung rank fails the run.
DEFAULT_DDP_TIMEOUT_S = 1800.0


def torchrun_environment() -> dict | None:
    """The process's place in a ``torchrun`` job, or None when it was not started by one.

    Returns
    -------
    dict or None
        ``rank``, ``world_size``, ``local_rank``, ``local_world_size`` (int), ``master_addr``
        (str), ``master_port`` (int) and ``timeout_s`` (float: ``FREESOUND_DDP_TIMEOUT_S`` or
        ``DEFAULT_DDP_TIMEOUT_S``). None unless ``RANK`` and ``WORLD_SIZE`` are both set.

    Raises
    ------
    ValueError
        A variable is set but not a number, or a variable torchrun always sets is missing (the
        message names it).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ and name != "LOCAL_WORLD_SIZE"]
    if missing:
        raise ValueError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         "not: start distributed training with torchrun")
    values = {}
    for name in TORCHRUN_VARIABLES:
        if name == "MASTER_ADDR":
            continue
        raw = os.environ.get(name, os.environ["WORLD_SIZE"] if name == "LOCAL_WORLD_SIZE" else None)
        try:
            values[name.lower()] = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    timeout = os.environ.get(DDP_TIMEOUT_VARIABLE, str(DEFAULT_DDP_TIMEOUT_S))
    try:
        values["timeout_s"] = float(timeout)
    except ValueError:
        raise ValueError(f"environment variable {DDP_TIMEOUT_VARIABLE}={timeout!r} is not a number of seconds") from None
    if values["timeout_s"] <= 0:
        raise ValueError(f"environment variable {DDP_TIMEOUT_VARIABLE} must be positive, got {timeout!r}")
    values["master_addr"] = os.environ["MASTER_ADDR"]
    return values
