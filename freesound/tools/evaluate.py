"""``freesound evaluate``: score a submission-format CSV against true labels.

Scores stay float64 from the CSV to the metric (parsed exactly, never rounded to float32), so two
scores that differ only past float32's precision still rank as written. Every labelled clip must
have exactly one row of predictions, unless ``subset`` asks to score only the predicted ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data.dataset import multi_hot, read_csv, read_labels_csv
from freesound.errors import FreesoundError
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


def evaluate_csv(predictions_csv, labels_csv, *, subset: bool = False) -> dict:
    """Score a submission-format CSV against a ``fname,labels`` CSV (rows matched by fname).

    Parameters
    ----------
    predictions_csv : path, ``fname`` then one probability column per class
    labels_csv : path, ``fname,labels`` (e.g. ``test_labels.csv``)
    subset : score only the labelled clips that have predictions (default: all must have)

    Returns
    -------
    dict of ``freesound.metrics.score_predictions`` (``clips`` is the number scored), plus
    ``labelled_clips``, the number of clips in ``labels_csv``.

    Raises
    ------
    FreesoundError
        Naming the clips: predicted but not labelled, labelled but not predicted (without
        ``subset``), predicted twice; or a value that is not a finite number.
    """
    predictions_csv, labels_csv = Path(predictions_csv), Path(labels_csv)
    predictions, classes = read_predictions_csv(predictions_csv)
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
