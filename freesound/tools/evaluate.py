"""``freesound evaluate``: score a submission-format CSV against true labels.

Scores stay float64 from the CSV to the metric (parsed exactly, never rounded to float32), so two
scores that differ only past float32's precision still rank as written. Every labelled clip must
have exactly one row of predictions, unless ``subset`` asks to score only the predicted ones.

The class columns must be the class vocabulary, no more and no fewer: an extra column is ranked
with the others and changes the score. The vocabulary is a ``sample_submission.csv`` (by default
the one beside the labels file, as in the dataset layout). Without one, only the labels' classes
are known: a labelled class without a column is refused, and a column that no clip is labelled
with is named in a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data.dataset import multi_hot, read_classes, read_csv, read_labels_csv
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.metrics import score_predictions


def _names(values, shown: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:shown])) + (f" and {len(values) - shown} more" if len(values) > shown else "")


def read_predictions_csv(path) -> tuple[pd.DataFrame, list]:
    """A submission-format CSV as (frame with ``fname`` and float64 class columns, classes).

    Values are read as text and parsed by Python's ``float`` (exact, whatever the pandas
    version's own float parser does), and kept in float64.

    Raises
    ------
    FreesoundError
        No ``fname`` column, no class column or no row, a clip with more than one row, or a value
        that is not a finite number (naming the clip and the class).
    """
    path = Path(path)
    frame = read_csv(path, dtype=str, keep_default_na=False)
    if "fname" not in frame.columns:
        raise FreesoundError(f"{path}: expected a 'fname' column followed by class columns")
    duplicated = frame.fname[frame.fname.duplicated()].unique()
    if len(duplicated):
        raise FreesoundError(f"{path}: {len(duplicated)} clip(s) have more than one row of predictions: "
                             f"{_names(duplicated)}")
    classes = [c for c in frame.columns if c != "fname"]
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
                             f"{classes[column]!r} of {frame.fname.iloc[row]} is {cell!r}")
    return pd.concat([frame[["fname"]], pd.DataFrame(probs, columns=classes, index=frame.index)], axis=1), classes


def check_class_columns(columns, vocabulary, predictions_csv) -> list:
    """The vocabulary's classes, once the predictions' class ``columns`` are found to be exactly them.

    Parameters
    ----------
    columns : the predictions file's class columns, in its order
    vocabulary : path of a ``sample_submission.csv`` whose columns after ``fname`` are the classes

    Returns
    -------
    list of str, the classes in the vocabulary's order (the scores' per-class order)

    Raises
    ------
    FreesoundError
        Columns that are not classes, or classes without a column, named.
    """
    classes = list(read_classes(vocabulary))
    extra = [name for name in columns if name not in set(classes)]
    if extra:
        raise FreesoundError(f"{predictions_csv}: {len(extra)} column(s) are not classes of the vocabulary "
                             f"({vocabulary}): {_names(map(repr, extra))}; they would be ranked with the classes "
                             "and change the score")
    missing = [name for name in classes if name not in set(columns)]
    if missing:
        raise FreesoundError(f"{predictions_csv} has no column for {len(missing)} of the {len(classes)} classes "
                             f"({vocabulary}): {_names(map(repr, missing))}")
    return classes


def check_labelled_columns(columns, labels_csv, predictions_csv) -> None:
    """Without a vocabulary: every class ``labels_csv`` names must be one of the predictions' class
    ``columns``; a column no clip is labelled with gets a ``FreesoundWarning``.

    Raises
    ------
    FreesoundError
        A labelled class without a column, with the first clip labelled with it (either file may
        be at fault: without a vocabulary there is no telling).
    """
    frame = read_csv(labels_csv, dtype=str, keep_default_na=False)
    if "labels" not in frame.columns or "fname" not in frame.columns:
        return  # read_labels_csv names the missing column
    first_clip = {}
    for fname, text in zip(frame.fname, frame.labels):
        for label in text.split(","):
            first_clip.setdefault(label.strip(), fname)
    first_clip.pop("", None)  # an empty label is read_labels_csv's to name
    unknown = [label for label in first_clip if label not in set(columns)]
    if unknown:
        raise FreesoundError(f"{predictions_csv} has no column for {len(unknown)} class(es) that {labels_csv} "
                             f"labels clips with: {_names(f'{c!r} (e.g. {first_clip[c]})' for c in unknown)}; "
                             "give the dataset (--data) to check both against its class vocabulary")
    unlabelled = [name for name in columns if name not in first_clip]
    if unlabelled:
        warnings.warn(f"{predictions_csv}: no clip of {labels_csv} is labelled with {len(unlabelled)} of its class "
                      f"columns, ranked with the others all the same: {_names(map(repr, unlabelled))}; give the "
                      "dataset (--data) to check them against its class vocabulary", FreesoundWarning, stacklevel=2)


def evaluate_csv(predictions_csv, labels_csv, *, subset: bool = False, vocabulary=None) -> dict:
    """Score a submission-format CSV against a ``fname,labels`` CSV (rows matched by fname).

    Parameters
    ----------
    predictions_csv : path, ``fname`` then one probability column per class
    labels_csv : path, ``fname,labels`` (e.g. ``test_labels.csv``)
    subset : score only the labelled clips that have predictions (default: all must have)
    vocabulary : path of a ``sample_submission.csv`` giving the classes (default: the one in
        ``labels_csv``'s folder, if any; else the labels' classes are checked, see the module
        docstring)

    Returns
    -------
    dict of ``freesound.metrics.score_predictions`` (``clips`` is the number scored), plus
    ``labelled_clips``, the number of clips in ``labels_csv``.

    Raises
    ------
    FreesoundError
        Naming the clips: predicted but not labelled, labelled but not predicted (without
        ``subset``), predicted twice; a value that is not a finite number; class columns that
        are not the vocabulary (``check_class_columns``, ``check_labelled_columns``); a label
        outside the vocabulary.
    """
    predictions_csv, labels_csv = Path(predictions_csv), Path(labels_csv)
    predictions, columns = read_predictions_csv(predictions_csv)
    beside = labels_csv.parent / "sample_submission.csv"
    vocabulary = vocabulary if vocabulary is not None else beside if beside.is_file() else None
    if vocabulary is not None:
        classes = check_class_columns(columns, Path(vocabulary), predictions_csv)
    else:
        check_labelled_columns(columns, labels_csv, predictions_csv)
        classes = columns
    labels = read_labels_csv(labels_csv, classes).set_index("fname")
    unlabelled = [name for name in predictions.fname if name not in labels.index]
    if unlabelled:
        raise FreesoundError(f"{labels_csv} has no labels for {len(unlabelled)} predicted clip(s): "
                             f"{_names(unlabelled)}")
    unpredicted = labels.index.difference(predictions.fname, sort=False)
    if len(unpredicted) and not subset:
        raise FreesoundError(f"{predictions_csv} has no predictions for {len(unpredicted)} of the {len(labels)} "
                             f"labelled clip(s) in {labels_csv}: {_names(unpredicted)}; to score only the predicted "
                             "clips, ask for a subset (`freesound evaluate --subset`)")
    truth = multi_hot(labels.loc[predictions.fname, "labels"], classes)
    scores = score_predictions(truth, predictions[classes].to_numpy(), classes)
    scores["labelled_clips"] = int(len(labels))
    return scores
