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
