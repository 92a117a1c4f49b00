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
