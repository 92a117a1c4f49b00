"""``freesound evaluate``: score a submission-format CSV against true labels.

Rows are clips (a first column ``fname``, FSDKaggle2019's submission) or windows (``row_id``,
``<file stem>_<end second>``, BirdCLEF's submission). The labels file is keyed by the same column
and holds either a ``labels`` column (comma-separated class names; a window may have none) or one
0/1 column per class (BirdCLEF's solution format). Any of ``freesound.metrics.METRICS`` scores them
(``metrics``, default lwlrap).

Scores stay float64 from the CSV to the metric (parsed exactly, never rounded to float32), so two
scores that differ only past float32's precision still rank as written. Every labelled row must
have exactly one row of predictions, unless ``subset`` asks to score only the predicted ones.

The class columns must be the class vocabulary, no more and no fewer: an extra column is ranked
with the others and changes the score. The vocabulary is a ``sample_submission.csv`` (by default
the one beside the labels file, as in the dataset layout), or the labels file's own class
columns. Without either, only the labels' classes are known: a labelled class without a column
is refused, and a column that no clip is labelled with is named in a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data.dataset import multi_hot, parse_labels, read_csv, read_labels_csv
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.metrics import score_predictions

#: The columns rows are keyed by, and what such a row is called in messages.
ROW_KEYS = {"fname": "clip", "row_id": "window"}


def _names(values, shown: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:shown])) + (f" and {len(values) - shown} more" if len(values) > shown else "")


def row_key(columns, path) -> str:
    """The column rows are keyed by: ``fname`` (clips) or ``row_id`` (windows).

    Raises
    ------
    FreesoundError
        Neither column, or both, naming the file.
    """
    keys = [key for key in ROW_KEYS if key in columns]
    if len(keys) != 1:
        raise FreesoundError(f"{path}: expected a 'fname' (clips) or 'row_id' (windows) column followed by class "
                             f"columns, got {'both' if keys else _names(map(repr, list(columns)[:3]))}")
    return keys[0]


def read_predictions_csv(path) -> tuple[pd.DataFrame, list]:
    """A submission-format CSV as (frame with its key column, ``fname`` or ``row_id``, then float64
    class columns; classes).

    Values are read as text and parsed by Python's ``float`` (exact, whatever the pandas
    version's own float parser does), and kept in float64.

    Raises
    ------
    FreesoundError
        No ``fname`` or ``row_id`` column, no class column or no row, a clip (window) with more
        than one row, or a value that is not a finite number (naming the row and the class).
    """
    path = Path(path)
    frame = read_csv(path, dtype=str, keep_default_na=False)
    key = row_key(frame.columns, path)
    noun = ROW_KEYS[key]
    duplicated = frame[key][frame[key].duplicated()].unique()
    if len(duplicated):
        raise FreesoundError(f"{path}: {len(duplicated)} {noun}(s) have more than one row of predictions: "
                             f"{_names(duplicated)}")
    classes = [c for c in frame.columns if c != key]
    if not classes or frame.empty:
        raise FreesoundError(f"{path}: no {'rows' if classes else 'class columns'} of predictions to score")
    try:
        probs = frame[classes].to_numpy(dtype=np.float64)
    except ValueError:  # some cell is not a number: find it for the message
        probs = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.argwhere(~np.isfinite(probs))
    if len(bad):
        row, column = bad[0]
        cell = frame[classes[column]].iloc[row]
        raise FreesoundError(f"{path}: {len(bad)} prediction(s) are not finite numbers, e.g. "
                             f"{classes[column]!r} of {frame[key].iloc[row]} is {cell!r}")
    return pd.concat([frame[[key]], pd.DataFrame(probs, columns=classes, index=frame.index)], axis=1), classes


def vocabulary_classes(path) -> list:
    """The classes of a ``sample_submission.csv``: its columns after ``fname`` or ``row_id``.

    Raises
    ------
    FreesoundError
        Another first column, or no class column.
    """
    path = Path(path)
    header = read_csv(path, nrows=0).columns.tolist()
    if not header or header[0] not in ROW_KEYS or len(header) < 2:
        raise FreesoundError(f"{path}: expected a header 'fname,<class>,...' or 'row_id,<class>,...', "
                             f"got {header[:3]}")
    return header[1:]


def check_class_columns(columns, classes, source, predictions_csv) -> list:
    """The vocabulary's ``classes``, once the predictions' class ``columns`` are found to be exactly them.

    Parameters
    ----------
    columns : the predictions file's class columns, in its order
    classes : the vocabulary, in its order (the scores' per-class order)
    source : the file the vocabulary comes from, for messages (a ``sample_submission.csv``, or a
        labels file with one column per class)

    Returns
    -------
    list of str, ``classes``

    Raises
    ------
    FreesoundError
        Columns that are not classes, or classes without a column, named.
    """
    classes = list(classes)
    extra = [name for name in columns if name not in set(classes)]
    if extra:
        raise FreesoundError(f"{predictions_csv}: {len(extra)} column(s) are not classes of the vocabulary "
                             f"({source}): {_names(map(repr, extra))}; they would be ranked with the classes "
                             "and change the score")
    missing = [name for name in classes if name not in set(columns)]
    if missing:
        raise FreesoundError(f"{predictions_csv} has no column for {len(missing)} of the {len(classes)} classes "
                             f"({source}): {_names(map(repr, missing))}")
    return classes


def check_labelled_columns(columns, labels_csv, predictions_csv, key: str = "fname") -> None:
    """Without a vocabulary: every class ``labels_csv`` (keyed by ``key``, with a ``labels``
    column) names must be one of the predictions' class ``columns``; a column no row is labelled
    with gets a ``FreesoundWarning``.

    Raises
    ------
    FreesoundError
        A labelled class without a column, with the first row labelled with it (either file may
        be at fault: without a vocabulary there is no telling).
    """
    frame = read_csv(labels_csv, dtype=str, keep_default_na=False)
    if "labels" not in frame.columns or key not in frame.columns:
        return  # read_labels names the missing column
    first_row = {}
    for name, text in zip(frame[key], frame.labels):
        for label in text.split(","):
            first_row.setdefault(label.strip(), name)
    first_row.pop("", None)  # an empty label is read_labels's to name
    noun = ROW_KEYS[key]
    unknown = [label for label in first_row if label not in set(columns)]
    if unknown:
        raise FreesoundError(f"{predictions_csv} has no column for {len(unknown)} class(es) that {labels_csv} "
                             f"labels {noun}s with: {_names(f'{c!r} (e.g. {first_row[c]})' for c in unknown)}; "
                             "give the dataset (--data) to check both against its class vocabulary")
    unlabelled = [name for name in columns if name not in first_row]
    if unlabelled:
        warnings.warn(f"{predictions_csv}: no {noun} of {labels_csv} is labelled with {len(unlabelled)} of its class "
                      f"columns, ranked with the others all the same: {_names(map(repr, unlabelled))}; give the "
                      "dataset (--data) to check them against its class vocabulary", FreesoundWarning, stacklevel=2)


def read_labels(labels_csv, key: str, classes) -> pd.DataFrame:
    """The true labels as a 0/1 float32 frame: index ``key``, one column per class in ``classes`` order.

    ``labels_csv`` holds ``key`` and either ``labels`` (comma-separated; a window's may be empty,
    a clip's may not) or one 0/1 column per class (BirdCLEF's solution format, its columns checked
    against ``classes`` by the caller).

    Raises
    ------
    FreesoundError
        No ``key`` column, a label outside ``classes``, a row given twice, or a class cell that is
        not 0 or 1, naming the file.
    """
    labels_csv = Path(labels_csv)
    if key == "fname" and "labels" in read_csv(labels_csv, nrows=0).columns:  # the dataset's own format
        labels = read_labels_csv(labels_csv, classes)
        return pd.DataFrame(multi_hot(labels.labels, classes), index=pd.Index(labels.fname, name=key),
                            columns=list(classes))
    frame = read_csv(labels_csv, dtype=str, keep_default_na=False)
    if key not in frame.columns:
        raise FreesoundError(f"{labels_csv}: no {key!r} column to match the predictions' {ROW_KEYS[key]}s by")
    duplicated = frame[key][frame[key].duplicated()].unique()
    if len(duplicated):
        raise FreesoundError(f"{labels_csv}: {len(duplicated)} {ROW_KEYS[key]}(s) appear more than once: "
                             f"{_names(duplicated)}")
    if "labels" in frame.columns:
        rows = [parse_labels(text, classes, where=f"{labels_csv}, row {row + 2} ({name})") if text.strip() else ()
                for row, (name, text) in enumerate(zip(frame[key], frame.labels))]
        truth = multi_hot(rows, classes)
    else:
        cells = frame[list(classes)]
        truth = cells.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        bad = np.argwhere(~np.isin(truth, (0.0, 1.0)))
        if len(bad):
            row, column = bad[0]
            raise FreesoundError(f"{labels_csv}: {len(bad)} label cell(s) are not 0 or 1, e.g. {classes[column]!r} "
                                 f"of {frame[key].iloc[row]} is {cells.iloc[row, column]!r}")
    return pd.DataFrame(truth, index=pd.Index(frame[key], name=key), columns=list(classes))


def evaluate_csv(predictions_csv, labels_csv, *, subset: bool = False, vocabulary=None, metrics=("lwlrap",)) -> dict:
    """Score a submission-format CSV against the true labels (rows matched by ``fname`` or ``row_id``).

    Parameters
    ----------
    predictions_csv : path, ``fname`` (clips) or ``row_id`` (windows), then one probability
        column per class
    labels_csv : path, keyed by the same column, with ``labels`` (e.g. ``test_labels.csv``) or one
        0/1 column per class (BirdCLEF's solution format)
    subset : score only the labelled rows that have predictions (default: all must have)
    vocabulary : path of a ``sample_submission.csv`` giving the classes (default: the one in
        ``labels_csv``'s folder, if any; else a solution file's class columns; else the labels'
        classes are checked, see the module docstring)
    metrics : names of ``freesound.metrics.METRICS``

    Returns
    -------
    dict of ``freesound.metrics.score_predictions`` (``clips`` is the number of rows scored), plus
    ``labelled_clips``, the number of rows in ``labels_csv``, and ``unit``, ``"clips"`` or
    ``"windows"``.

    Raises
    ------
    FreesoundError
        Naming the rows: predicted but not labelled, labelled but not predicted (without
        ``subset``), predicted twice; a value that is not a finite number; class columns that
        are not the vocabulary (``check_class_columns``, ``check_labelled_columns``); a label
        outside the vocabulary; labels a metric cannot score (no positive at all; for ROC-AUC a
        class positive in every row).
    """
    predictions_csv, labels_csv = Path(predictions_csv), Path(labels_csv)
    predictions, columns = read_predictions_csv(predictions_csv)
    key = predictions.columns[0]
    noun = ROW_KEYS[key]
    beside = labels_csv.parent / "sample_submission.csv"
    vocabulary = vocabulary if vocabulary is not None else beside if beside.is_file() else None
    label_columns = read_csv(labels_csv, nrows=0).columns.tolist()
    # A solution file (one 0/1 column per class) names every class itself.
    is_solution = "labels" not in label_columns and key in label_columns
    solution = [c for c in label_columns if c != key] if is_solution else None
    if vocabulary is not None:
        classes = check_class_columns(columns, vocabulary_classes(vocabulary), vocabulary, predictions_csv)
        if solution is not None:
            check_class_columns(solution, classes, vocabulary, labels_csv)
    elif solution is not None:
        classes = check_class_columns(columns, solution, labels_csv, predictions_csv)
    else:
        check_labelled_columns(columns, labels_csv, predictions_csv, key)
        classes = columns
    labels = read_labels(labels_csv, key, classes)
    unlabelled = [name for name in predictions[key] if name not in labels.index]
    if unlabelled:
        raise FreesoundError(f"{labels_csv} has no labels for {len(unlabelled)} predicted {noun}(s): "
                             f"{_names(unlabelled)}")
    unpredicted = labels.index.difference(predictions[key], sort=False)
    if len(unpredicted) and not subset:
        raise FreesoundError(f"{predictions_csv} has no predictions for {len(unpredicted)} of the {len(labels)} "
                             f"labelled {noun}(s) in {labels_csv}: {_names(unpredicted)}; to score only the "
                             f"predicted {noun}s, ask for a subset (`freesound evaluate --subset`)")
    truth = labels.loc[predictions[key]].to_numpy()
    try:
        scores = score_predictions(truth, predictions[classes].to_numpy(), classes, metrics=metrics)
    except ValueError as error:
        raise FreesoundError(f"cannot score {predictions_csv} against {labels_csv}: {error}") from None
    scores.update(labelled_clips=int(len(labels)), unit=f"{noun}s")
    return scores
