"""Cross-validation folds over the curated clips: ``<work>/folds.csv`` (``fname,fold``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.model_selection import KFold

from freesound.data.dataset import read_csv
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv
from freesound.paths import folds_path


def make_folds(fnames, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each clip a fold with a shuffled ``KFold``.

    Returns
    -------
    DataFrame with columns ``fname`` and ``fold`` (0 .. n_folds-1), in the input order.
    """
    fnames = list(fnames)
    if n_folds < 2 or n_folds > len(fnames):
        raise FreesoundError(f"cannot make {n_folds} folds from {len(fnames)} clips")
    fold = [0] * len(fnames)
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid_index) in enumerate(splitter.split(fnames)):
        for i in valid_index:
            fold[i] = k
    return pd.DataFrame({"fname": fnames, "fold": fold})


def write_folds(work, folds: pd.DataFrame) -> Path:
    path = folds_path(work)
    atomic_write_csv(path, folds, index=False)
    return path


def recorded_folds(work) -> list | None:
    """The fold numbers of ``<work>/folds.csv``, or None when there is none: the folds a trained
    experiment under ``work`` must have."""
    path = folds_path(work)
    if not path.is_file():
        return None
    return sorted(set(read_csv(path, usecols=["fold"], dtype={"fold": int}).fold))


def read_folds(work, curated_fnames) -> pd.DataFrame:
    """Read ``folds.csv``, checking that it covers exactly the dataset's curated clips."""
    path = folds_path(work)
    if not path.is_file():
        raise FreesoundError(f"{path} not found; run `freesound make-folds` first")
    folds = read_csv(path, dtype={"fname": str, "fold": int})
    if set(folds.fname) != set(curated_fnames):
        raise FreesoundError(f"{path} does not match this dataset's curated clips; rerun `freesound make-folds`")
    return folds
