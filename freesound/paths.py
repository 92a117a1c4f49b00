"""Every path under a work directory (``--work``, default ``data/``), in one place.

::

    <work>/
      features/<dataset>-<path hash>/<audio config hash>/<split>/   the log-mel cache
      folds.csv                                                     fname,fold of the curated clips
      experiments/<name>/fold_<k>/{model.pt, config.toml, log.csv}  weights: the Kaggle dataset
      train_state/<name>/fold_<k>/state.pt                          what --resume continues from
      predictions/<name>/                                           OOF and test predictions
      search/<name>/                                                a hyperparameter search

``experiments/`` is uploaded to Kaggle as the weights dataset, so nothing that a kernel does not
need (resume states, predictions) is kept in it.
"""

from __future__ import annotations

from pathlib import Path

from freesound.errors import FreesoundError

FOLDS_FILE = "folds.csv"
CHECKPOINT_FILE = "model.pt"


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


def train_state_dir(work, name: str) -> Path:
    return Path(work) / "train_state" / name


def train_state_path(work, name: str, fold: int) -> Path:
    return train_state_dir(work, name) / f"fold_{fold}" / "state.pt"


def predictions_dir(work, name: str) -> Path:
    return Path(work) / "predictions" / name


def search_dir(work, name: str) -> Path:
    return Path(work) / "search" / name


def experiment_checkpoints(directory, folds=None, required=None) -> list:
    """``fold_<k>/model.pt`` paths of an experiment directory, sorted by fold.

    With ``folds`` given, exactly those folds, each of which must be there. Otherwise every fold
    found, and none may be missing: no fold numbered below the highest one, no ``fold_<k>``
    folder without its ``model.pt`` (a training that never finished an epoch) and none of
    ``required`` (e.g. the folds of ``folds.csv``, ``freesound.data.folds.recorded_folds``). A
    prediction from some of the folds would silently differ from the ensemble's, so an error
    names the missing ones.

    Raises
    ------
    FreesoundError
        No trained fold, or a missing one (named).
    """
    directory = Path(directory)
    fold_dirs = {int(path.name.removeprefix("fold_")): path for path in directory.glob("fold_*")
                 if path.is_dir() and path.name.removeprefix("fold_").isdigit()}
    found = {k: path / CHECKPOINT_FILE for k, path in fold_dirs.items() if (path / CHECKPOINT_FILE).is_file()}
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
    return [found[k] for k in folds]
