"""``freesound evaluate``: score a submission-format CSV against true labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data.dataset import multi_hot, read_csv, read_labels_csv
from freesound.errors import FreesoundError
from freesound.metrics import score_predictions


def evaluate_csv(predictions_csv, labels_csv) -> dict:
    """Score a submission-format CSV against a ``fname,labels`` CSV (rows matched by fname)."""
    predictions_csv, labels_csv = Path(predictions_csv), Path(labels_csv)
    predictions = read_csv(predictions_csv)
    if "fname" not in predictions.columns:
        raise FreesoundError(f"{predictions_csv}: expected a 'fname' column followed by class columns")
    classes = [c for c in predictions.columns if c != "fname"]
    labels = read_labels_csv(labels_csv, classes).set_index("fname")
    missing = sorted(set(predictions.fname) - set(labels.index))
    if missing:
        raise FreesoundError(f"{labels_csv} has no labels for {len(missing)} predicted clip(s), e.g. {missing[0]}")
    truth = multi_hot(labels.loc[predictions.fname, "labels"], classes)
    probs = predictions[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    bad = np.argwhere(~np.isfinite(probs))
    if len(bad):
        row, column = bad[0]
        raise FreesoundError(f"{predictions_csv}: {len(bad)} prediction(s) are not finite numbers, e.g. "
                             f"{classes[column]!r} of {predictions.fname.iloc[row]} is {predictions[classes[column]].iloc[row]!r}")
    return score_predictions(truth, probs, classes)
