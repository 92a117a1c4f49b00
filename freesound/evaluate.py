"""Scoring predictions: lwlrap overall, per fold and per class, and readable tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data import multi_hot, read_csv, read_labels_csv
from freesound.errors import FreesoundError
from freesound.metrics import lwlrap, per_class_lwlrap


def score_predictions(truth: np.ndarray, probs: np.ndarray, classes, folds=None) -> dict:
    """Overall, per-fold and per-class lwlrap as a JSON-able dict."""
    per_class, weight = per_class_lwlrap(truth, probs)
    scores = {
        "lwlrap": float(lwlrap(truth, probs)),
        "clips": int(len(truth)),
        "per_class": {name: {"lwlrap": float(s), "weight": float(w)} for name, s, w in zip(classes, per_class, weight)},
    }
    if folds is not None:
        scores["per_fold"] = {str(k): float(lwlrap(truth[folds == k], probs[folds == k])) for k in sorted(set(folds))}
    return scores


def probability_frame(fnames, probs: np.ndarray, classes) -> pd.DataFrame:
    """The submission layout: ``fname`` then one column per class."""
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "fname", list(fnames))
    return frame


def format_scores(name: str, scores: dict, top: int | None = None) -> str:
    """A readable table: overall and per-fold lwlrap, then classes from worst to best."""
    lines = [f"{name}: OOF lwlrap {scores['lwlrap']:.4f} on {scores['clips']} clips"]
    if "per_fold" in scores:
        lines.append("  per fold: " + "  ".join(f"{k}: {v:.4f}" for k, v in scores["per_fold"].items()))
    ranked = sorted(scores["per_class"].items(), key=lambda item: item[1]["lwlrap"])
    if top is not None:
        ranked = ranked[:top]
    width = max(len(name) for name, _ in ranked) if ranked else 10
    lines.append(f"  {'class'.ljust(width)}  lwlrap  weight")
    lines += [f"  {cls.ljust(width)}  {v['lwlrap']:.4f}  {v['weight']:.4f}" for cls, v in ranked]
    return "\n".join(lines)


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
