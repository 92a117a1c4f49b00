"""Every path under a work directory (``--work``, default ``data/``), in one place.

::

    <work>/
      features/<dataset>-<path hash>/<audio config hash>/<split>/   the log-mel cache
      folds.csv                                                     fname,fold of the curated clips
      experiments/<name>/fold_<k>/{model.pt, config.toml, log.csv}  weights: the Kaggle dataset
      experiments/<name>/fold_<k>/unfinished                        there while the fold trains
      train_state/<name>/fold_<k>/state.pt                          what --resume continues from
      train_state/<name>/fold_<k>/lock                              held while the fold trains
      predictions/<name>/                                           OOF and test predictions
      search/<name>/                                                a hyperparameter search
      self_training/<name>/{rounds.csv, rounds.png}                 self-train's rounds
      tracking/<group>/<run>/                                       TensorBoard event files
      mlflow.db, mlruns/<experiment>/                               MLflow's local store

``experiments/`` is uploaded to Kaggle as the weights dataset, so nothing that a kernel does not
need (resume states, predictions) is kept in it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from freesound.errors import FreesoundError, FreesoundWarning

FOLDS_FILE = "folds.csv"
CHECKPOINT_FILE = "model.pt"
#: Written beside a fold's ``model.pt`` when its training starts and removed when it ends, so a
#: fold killed part-way (whose ``model.pt`` is some epoch's best) is never taken as trained.
UNFINISHED_FILE = "unfinished"
#: Written into an experiment's folder by ``import-weights``: its one fold is a released model,
#: not a fold of the work folder's ``folds.csv``, so that file's folds are not required of it.
IMPORTED_FILE = "imported.json"


def features_root(work) -> Path:
    return Path(work) / "features"


def folds_path(work) -> Path:
    return Path(work) / FOLDS_FILE


def weights_root(work) -> Path:
    """``<work>/experiments``: every trained experiment and stacker, the Kaggle weights dataset."""
    return Path(work) / "experiments"


def experiment_dir(work, name: str) -> Path:
    return weights_root(work) / name


def fold_dir(work, name: str, fold: int) -> Path:
    return experiment_dir(work, name) / f"fold_{fold}"


def checkpoint_path(work, name: str, fold: int) -> Path:
    return fold_dir(work, name, fold) / CHECKPOINT_FILE


def unfinished_marker(work, name: str, fold: int) -> Path:
    """``fold_<k>/unfinished``: present from the start of the fold's training until it ends."""
    return fold_dir(work, name, fold) / UNFINISHED_FILE


def fold_unfinished(work, name: str, fold: int) -> bool:
    """Whether the fold's training started and has not ended (interrupted, or still running)."""
    return unfinished_marker(work, name, fold).is_file()


def train_state_dir(work, name: str) -> Path:
    return Path(work) / "train_state" / name


def train_state_path(work, name: str, fold: int) -> Path:
    return train_state_dir(work, name) / f"fold_{fold}" / "state.pt"


def predictions_dir(work, name: str) -> Path:
    return Path(work) / "predictions" / name


def search_dir(work, name: str) -> Path:
    return Path(work) / "search" / name


def experiment_checkpoints(directory, folds=None, required=None, allow_unfinished: bool = False) -> list:
    """``fold_<k>/model.pt`` paths of an experiment directory, sorted by fold.

    With ``folds`` given, exactly those folds, each of which must be there. Otherwise every fold
    found, and none may be missing: no fold numbered below the highest one, no ``fold_<k>``
    folder without its ``model.pt`` (a training that never finished an epoch) and none of
    ``required`` (e.g. the folds of ``folds.csv``, ``freesound.data.folds.recorded_folds``). A
    prediction from some of the folds would silently differ from the ensemble's, so an error
    names the missing ones.

    A fold whose training has not ended (its ``unfinished`` marker, ``UNFINISHED_FILE``) is
    refused, or with ``allow_unfinished`` used with a ``FreesoundWarning``: its ``model.pt`` is
    the best of the epochs done so far. Imported weights have no marker, and an ``import-weights``
    experiment (``IMPORTED_FILE``) is not held to ``required``: its one fold is a released model.

    Raises
    ------
    FreesoundError
        No trained fold, a missing one, or an unfinished one (named).
    """
    directory = Path(directory)
    fold_dirs = {int(path.name.removeprefix("fold_")): path for path in directory.glob("fold_*")
                 if path.is_dir() and path.name.removeprefix("fold_").isdigit()}
    found = {k: path / CHECKPOINT_FILE for k, path in fold_dirs.items() if (path / CHECKPOINT_FILE).is_file()}
    if (directory / IMPORTED_FILE).is_file():
        required = None
    if folds is None:
        if not found:
            raise FreesoundError(f"no trained folds in {directory} (expected fold_<k>/model.pt)")
        expected = set(range(max(found) + 1)) | set(fold_dirs) | set(required or ())
        folds = sorted(found)
    else:
        expected = set(folds)
    missing = sorted(expected - set(found))
    if missing:
        raise FreesoundError(f"{directory}: fold(s) {', '.join(map(str, missing))} have no model.pt "
                             f"(expected folds {', '.join(map(str, sorted(expected)))})")
    unfinished = [k for k in folds if (fold_dirs[k] / UNFINISHED_FILE).is_file()]
    if unfinished:
        listed = ", ".join(map(str, unfinished))
        if not allow_unfinished:
            raise FreesoundError(f"{directory}: fold(s) {listed} have not finished training (interrupted or still "
                                 f"running; `freesound train {directory.name} --fold K --resume` finishes one), "
                                 f"so their model.pt is an early epoch's; --allow-unfinished uses them anyway")
        warnings.warn(f"{directory}: fold(s) {listed} have not finished training; using their model.pt, the best "
                      f"of the epochs done so far", FreesoundWarning, stacklevel=2)
    return [found[k] for k in folds]
