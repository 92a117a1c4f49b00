"""Cross-validation folds over the curated clips: ``<work>/folds.csv`` (``fname,fold``).

The method's folds are a shuffled ``KFold`` (``make_folds`` with no labels or groups). For real
collections the folds can keep groups apart (a speaker, a recording session, a source file: no
group in two folds, so validation measures unseen groups), be stratified by label, or be read from
a column the dataset gives (ESC-50's five folds). Groups and given folds are columns of the
dataset's ``metadata.csv`` (``freesound prepare`` writes it). ``check_folds`` checks what is
written: groups disjoint across folds, and every class present in every training part.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from freesound.data.dataset import Dataset, multi_hot, read_csv
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.fileio import atomic_write_csv
from freesound.paths import folds_path

METADATA_FILE = "metadata.csv"


def make_folds(fnames, n_folds: int = 5, seed: int = 42, *, targets=None, groups=None,
               stratify: bool = False) -> pd.DataFrame:
    """Assign each clip a fold.

    Parameters
    ----------
    fnames : sequence of str
    n_folds, seed : the number of folds and the shuffling seed
    targets : (N, C) 0/1 array, needed with ``stratify``
    groups : sequence of N group names, or None. No group is split across folds:
        ``GroupKFold`` (shuffled), or with ``stratify`` ``StratifiedGroupKFold`` for single-label
        data and, for multi-label data, iterative stratification (Sechidis et al. 2011, the
        ``iterative-stratification`` package) over the groups' summed label counts.
    stratify : keep each class's share about equal across folds: ``StratifiedKFold`` for
        single-label data, ``MultilabelStratifiedKFold`` (iterative stratification) for multi-label.

    With neither groups nor ``stratify`` this is the method's shuffled ``KFold`` (unchanged).

    Returns
    -------
    DataFrame with columns ``fname`` and ``fold`` (0 .. n_folds-1), in the input order.

    Raises
    ------
    FreesoundError
        Fewer clips (or groups) than folds, or ``stratify`` without targets.
    """
    fnames = list(fnames)
    if n_folds < 2 or n_folds > len(fnames):
        raise FreesoundError(f"cannot make {n_folds} folds from {len(fnames)} clips")
    if stratify and targets is None:
        raise FreesoundError("stratified folds need the clips' labels")
    fold = np.zeros(len(fnames), dtype=int)
    for k, valid_index in enumerate(_valid_parts(fnames, n_folds, seed, targets, groups, stratify)):
        fold[valid_index] = k
    return pd.DataFrame({"fname": fnames, "fold": fold.tolist()})


def _valid_parts(fnames, n_folds, seed, targets, groups, stratify):
    """The validation indices of each fold, from the splitter the options call for."""
    index = np.arange(len(fnames))
    if groups is None:
        if not stratify:
            return [valid for _, valid in KFold(n_folds, shuffle=True, random_state=seed).split(index)]
        targets = np.asarray(targets)
        if (targets.sum(1) == 1).all():
            splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
            return [valid for _, valid in splitter.split(index, targets.argmax(1))]
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return [valid for _, valid in splitter.split(index, targets)]
    names, group_index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    if len(names) < n_folds:
        raise FreesoundError(f"cannot make {n_folds} folds from {len(names)} groups; use --folds {len(names)} "
                             f"or fewer (with one group a fold, every group is held out once)")
    if not stratify:
        splitter = GroupKFold(n_folds, shuffle=True, random_state=seed)
        return [valid for _, valid in splitter.split(index, groups=group_index)]
    targets = np.asarray(targets)
    if (targets.sum(1) == 1).all():
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
        return [valid for _, valid in splitter.split(index, targets.argmax(1), groups=group_index)]
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    # Stratify the groups, each weighted by its clips' label counts, then give clips their group's fold.
    counts = np.zeros((len(names), targets.shape[1]))
    np.add.at(counts, group_index, targets)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [np.flatnonzero(np.isin(group_index, valid)) for _, valid in splitter.split(np.arange(len(names)), counts > 0)]


def folds_from_values(fnames, values) -> tuple:
    """Folds given by the dataset: each distinct value is one fold, numbered in sorted order
    (numerically when every value is a whole number, so ESC-50's folds 1..5 become 0..4).

    Returns
    -------
    folds : DataFrame ``fname,fold``, in the input order
    mapping : dict, given value -> fold number

    Raises
    ------
    FreesoundError
        An empty value, or fewer than two distinct values.
    """
    values = [str(v).strip() for v in values]
    if not all(values):
        fname = next(f for f, v in zip(fnames, values) if not v)
        raise FreesoundError(f"clip {fname!r} has no fold value")
    distinct = set(values)
    if len(distinct) < 2:
        raise FreesoundError(f"the fold column has {len(distinct)} distinct value(s); two or more make folds")
    numeric = all(v.lstrip("-").isdigit() for v in distinct)
    order = sorted(distinct, key=int if numeric else str)
    mapping = {value: k for k, value in enumerate(order)}
    return pd.DataFrame({"fname": list(fnames), "fold": [mapping[v] for v in values]}), mapping


def check_folds(folds: pd.DataFrame, targets: np.ndarray, classes, groups=None) -> list:
    """Check folds that are about to be written.

    Parameters
    ----------
    folds : DataFrame ``fname,fold``
    targets : (N, C) 0/1 array in ``folds``' row order
    classes : the C class names
    groups : N group names, or None

    Returns
    -------
    list of str, one warning per class that is missing from some fold's training part (the
    clips of the other folds), naming the class and the folds.

    Raises
    ------
    FreesoundError
        A group whose clips are in more than one fold (named, with its folds).
    """
    fold = folds.fold.to_numpy()
    if groups is not None:
        spread = pd.DataFrame({"group": np.asarray(groups, dtype=str), "fold": fold}).groupby("group").fold.unique()
        split = spread[spread.map(len) > 1]
        if len(split):
            raise FreesoundError(f"group {split.index[0]!r} is in folds {sorted(split.iloc[0].tolist())}: "
                                 f"its clips would be trained on and validated at once")
    messages = []
    targets = np.asarray(targets) > 0
    for c, name in enumerate(classes):
        missing = [int(k) for k in np.unique(fold) if not targets[fold != k, c].any()]
        if missing and targets[:, c].any():
            messages.append(f"class {name!r} has no training clip when fold(s) {', '.join(map(str, missing))} "
                            f"are held out ({int(targets[:, c].sum())} clip(s) in all)")
    return messages


def read_metadata_column(data_root, column: str, fnames, metadata=None) -> list:
    """Column ``column`` of the dataset's ``metadata.csv`` (or ``metadata``) for each of ``fnames``.

    Raises
    ------
    FreesoundError
        No metadata file, no such column (the valid ones named), or a clip the file lacks.
    """
    path = Path(metadata) if metadata else Path(data_root) / METADATA_FILE
    if not path.is_file():
        raise FreesoundError(f"{path} not found: groups and given folds are read from it "
                             f"(`freesound prepare` writes it; or name a CSV with --metadata)")
    frame = read_csv(path, dtype=str, keep_default_na=False)
    for name in ("fname", column):
        if name not in frame.columns:
            raise FreesoundError(f"{path}: no column {name!r}; its columns are {', '.join(frame.columns)}")
    frame = frame.drop_duplicates("fname", keep="first").set_index("fname")[column]
    absent = [f for f in fnames if f not in frame.index]
    if absent:
        raise FreesoundError(f"{path}: no row for clip {absent[0]!r} ({len(absent)} curated clip(s) missing)")
    values = frame.loc[list(fnames)].str.strip()
    empty = values[values == ""]
    if len(empty):
        raise FreesoundError(f"{path}: clip {empty.index[0]!r} has an empty {column!r}")
    return values.tolist()


@dataclass(frozen=True)
class FoldsResult:
    """What ``dataset_folds`` made: ``folds`` (``fname,fold``), how (``method``), the given-value
    mapping of ``--from-column`` (or None) and the number of groups (0 without)."""

    folds: pd.DataFrame
    method: str
    mapping: dict | None = None
    n_groups: int = 0


def dataset_folds(dataset: Dataset, *, n_folds: int = 5, seed: int = 42, group_by: str | None = None,
                  stratify: bool = False, from_column: str | None = None, metadata=None) -> FoldsResult:
    """``freesound make-folds``: folds of a dataset's curated clips, checked.

    ``group_by`` and ``from_column`` name columns of the dataset's ``metadata.csv`` (or of
    ``metadata``). A class missing from a training part is a ``FreesoundWarning`` naming it; a
    group split across folds is an error.
    """
    fnames = dataset.curated.fname.tolist()
    targets = multi_hot(dataset.curated.labels, dataset.classes)
    groups = read_metadata_column(dataset.root, group_by, fnames, metadata) if group_by else None
    mapping = None
    if from_column:
        folds, mapping = folds_from_values(fnames, read_metadata_column(dataset.root, from_column, fnames, metadata))
        method = f"given by {from_column!r}"
    else:
        folds = make_folds(fnames, n_folds, seed, targets=targets, groups=groups, stratify=stratify)
        method = ("stratified " if stratify else "shuffled ") + (f"grouped by {group_by!r}" if groups else "KFold")
    for message in check_folds(folds, targets, dataset.classes, groups):
        warnings.warn(message, FreesoundWarning, stacklevel=2)
    return FoldsResult(folds, method, mapping, len(set(groups)) if groups else 0)


def write_folds(work, folds: pd.DataFrame) -> Path:
    path = folds_path(work)
    atomic_write_csv(path, folds, index=False)
    return path


def recorded_folds(work) -> list | None:
    """The fold numbers of ``<work>/folds.csv``, or None when there is none: the folds a trained
    experiment under ``work`` must have (the file is checked as ``read_folds`` checks it)."""
    path = folds_path(work)
    if not path.is_file():
        return None
    return sorted(set(_read_folds_file(path).fold))


def read_folds(work, curated_fnames) -> pd.DataFrame:
    """Read ``folds.csv``, checking it (``check_folds_file``) and that it covers exactly the
    dataset's curated clips."""
    path = folds_path(work)
    if not path.is_file():
        raise FreesoundError(f"{path} not found; run `freesound make-folds` first")
    folds = _read_folds_file(path)
    if set(folds.fname) != set(curated_fnames):
        raise FreesoundError(f"{path} does not match this dataset's curated clips; rerun `freesound make-folds`")
    return folds


def _read_folds_file(path: Path) -> pd.DataFrame:
    frame = read_csv(path, dtype=str, keep_default_na=False)
    return check_folds_file(frame, path)


def check_folds_file(frame: pd.DataFrame, path) -> pd.DataFrame:
    """``folds.csv`` as read (all columns text), checked: columns ``fname`` and ``fold``, each clip
    once, and the folds whole numbers 0 .. K-1 for some K >= 2.

    Returns
    -------
    DataFrame ``fname`` (str), ``fold`` (int), in the file's order

    Raises
    ------
    FreesoundError
        One sentence naming ``path`` and the first offending clip or fold.
    """
    missing = [column for column in ("fname", "fold") if column not in frame.columns]
    if missing:
        raise FreesoundError(f"{path}: no column {missing[0]!r} (expected the columns fname,fold; "
                             f"rerun `freesound make-folds`)")
    twice = frame.fname[frame.fname.duplicated()]
    if len(twice):
        raise FreesoundError(f"{path} lists clip {twice.iloc[0]!r} more than once ({twice.nunique()} clip(s) "
                             f"repeated): a clip has one fold; rerun `freesound make-folds`")
    values = frame.fold.str.strip()
    whole = values.str.fullmatch(r"-?[0-9]+")
    if not whole.all():
        row = frame[~whole].iloc[0]
        raise FreesoundError(f"{path}: clip {row.fname!r} has fold {row.fold!r}, not a whole number")
    folds = values.astype(int)
    n_folds = folds.nunique()
    outside = folds[(folds < 0) | (folds >= n_folds)]
    if len(outside):
        raise FreesoundError(f"{path}: clip {frame.fname[outside.index[0]]!r} has fold {outside.iloc[0]}, outside "
                             f"0..{n_folds - 1} (its {n_folds} folds must be numbered 0 to {n_folds - 1})")
    if n_folds < 2:
        raise FreesoundError(f"{path} has {n_folds} fold; cross-validation needs 2 or more")
    return pd.DataFrame({"fname": frame.fname.to_numpy(), "fold": folds.to_numpy()})


def requested_folds(work, curated_fnames, folds=None) -> list:
    """The folds to train: ``folds`` (e.g. ``train --fold``), each once and each a fold of
    ``folds.csv`` (read and checked by ``read_folds``), or, when None, every fold there.

    Raises
    ------
    FreesoundError
        A fold given twice, or one that ``folds.csv`` does not have (named, with the folds it has).
    """
    recorded = sorted(set(read_folds(work, curated_fnames).fold))
    if folds is None:
        return recorded
    folds = list(folds)
    for fold in folds:
        if folds.count(fold) > 1:
            raise FreesoundError(f"fold {fold} is asked for {folds.count(fold)} times; name each fold once")
        if fold not in recorded:
            raise FreesoundError(f"fold {fold} is not in {folds_path(work)} (its folds are "
                                 f"{', '.join(map(str, recorded))})")
    return folds


def held_out_fingerprint(fnames) -> str:
    """A short fingerprint of a fold's held-out clips: the first 16 hex digits of the SHA-256 of
    their sorted names, one a line. Recorded with each fold's weights and training state, so that
    a fold is never used with, nor resumed on, another split than it trained on."""
    text = "\n".join(sorted(str(name) for name in fnames))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fold_fingerprint(folds: pd.DataFrame, fold: int) -> str:
    """``held_out_fingerprint`` of the clips ``folds`` (``fname,fold``) holds out in ``fold``."""
    return held_out_fingerprint(folds.fname[folds.fold == fold])
