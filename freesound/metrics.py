"""Label-weighted label-ranking average precision (lwlrap), the competition metric.

For every positive label ``(i, j)`` (clip ``i`` truly has class ``j``) the precision at its hit is
``|{positive k : s_ik >= s_ij}| / |{k : s_ik >= s_ij}|``: a tied label takes the worst rank of its
tie group, as in scikit-learn, so the value does not depend on sort order. lwlrap is the mean of
these precisions over all positive labels, which equals scikit-learn's
``label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(1))``. Grouping the
same precisions by class gives per-class scores whose label-count-weighted sum is lwlrap.

Everything is vectorised: one row-wise sort of the ``(N, C)`` scores, no Python loop over clips or
classes. ``label_precisions`` scores many score matrices against one truth at once (ensemble
selection scores thousands of candidate blends) by counting at each positive label instead.

``score_predictions`` collects the overall, per-fold and per-class scores as a JSON-able dict
(what ``oof_scores.json`` holds) and ``format_scores`` prints it as a table.
"""

from __future__ import annotations

import numpy as np


def _validate(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or scores.ndim != 2:
        raise ValueError(f"truth and scores must be 2-D (clips, classes), got {truth.shape} and {scores.shape}")
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} must have the same shape")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("truth must be binary (0/1 or bool)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    truth = truth.astype(bool)
    if not truth.any():
        raise ValueError("truth has no positive label; lwlrap is undefined")
    return truth, scores


def _precision_at_hits(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Precision at every positive label, ``(N, C)`` float64, 0 at negative labels."""
    n_clips, n_classes = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_truth = np.take_along_axis(truth, order, axis=1)
    hits = np.cumsum(sorted_truth, axis=1)
    # Each position's rank is the last position of its tie group (+1): mark group ends, then
    # carry the nearest end at or after each position back with a reversed running minimum.
    positions = np.broadcast_to(np.arange(n_classes), (n_clips, n_classes))
    is_group_end = np.ones((n_clips, n_classes), dtype=bool)
    is_group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    ends = np.where(is_group_end, positions, n_classes)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    precision = np.take_along_axis(hits, group_end, axis=1) / (group_end + 1.0)
    out = np.zeros_like(scores)
    np.put_along_axis(out, order, np.where(sorted_truth, precision, 0.0), axis=1)
    return out


def per_class_lwlrap(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """Per-class lwlrap and each class's weight.

    Parameters
    ----------
    truth : array-like ``(N, C)``
        Binary ground truth (0/1 or bool).
    scores : array-like ``(N, C)``
        Real-valued scores, higher meaning more likely.

    Returns
    -------
    per_class : np.ndarray ``(C,)``
        Mean precision at the class's positive labels (0 for a class with none).
    weight : np.ndarray ``(C,)``
        The class's share of all positive labels; ``np.sum(per_class * weight)`` is lwlrap.
    """
    truth, scores = _validate(truth, scores)
    counts = truth.sum(axis=0)
    per_class = _precision_at_hits(truth, scores).sum(axis=0) / np.maximum(counts, 1)
    return per_class, counts / counts.sum()


def lwlrap(truth, scores) -> float:
    """Label-weighted label-ranking average precision of ``scores`` ``(N, C)`` against binary
    ``truth`` ``(N, C)``; in ``(0, 1]``, 1 for a perfect ranking. Clips with no positive label
    carry no weight."""
    truth, scores = _validate(truth, scores)
    return float(_precision_at_hits(truth, scores).sum() / truth.sum())


def per_clip_lrap(truth, scores) -> np.ndarray:
    """Each clip's label-ranking average precision ``(N,)`` (NaN for a clip with no label).

    The mean precision over the clip's positive labels: 1 when its true classes are ranked first.
    """
    truth, scores = _validate(truth, scores)
    counts = truth.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, _precision_at_hits(truth, scores).sum(axis=1) / counts, np.nan)


def label_precisions(rows, labels, row_truth) -> np.ndarray:
    """Precision at each positive label of ``B`` score matrices; lwlrap is their mean.

    For a positive label ``(i, j)`` the rank is ``|{k : s_ik >= s_ij}|`` and the hits are the
    positives among them, ties included as in ``lwlrap``: ``O(B · P · C)`` comparisons for ``P``
    positive labels, much cheaper than ``B`` row-wise sorts when clips have few labels. With
    ``clips, labels = np.nonzero(truth)``,
    ``label_precisions(scores[:, clips], labels, truth[clips]).mean(axis=1)`` is the lwlrap of
    each ``scores[b]``. Inputs are not validated here.

    Parameters
    ----------
    rows : np.ndarray ``(B, P, C)``
        For ``B`` score matrices, the scores of the clip of each of ``P`` positive labels (a clip
        with two labels has its row twice).
    labels : np.ndarray ``(P,)`` int
        The class of each positive label.
    row_truth : np.ndarray ``(P, C)`` bool
        The truth row of each positive label's clip.

    Returns
    -------
    np.ndarray ``(B, P)`` float64
    """
    at_hit = np.take_along_axis(rows, np.broadcast_to(labels[None, :, None], (len(rows), len(labels), 1)), axis=2)
    at_or_above = rows >= at_hit
    ranks = np.count_nonzero(at_or_above, axis=2)
    hits = np.count_nonzero(at_or_above & row_truth[None], axis=2)
    return hits / ranks


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


def format_scores(name: str, scores: dict, top: int | None = None, label: str = "OOF lwlrap") -> str:
    """A readable table: overall and per-fold lwlrap, then classes from worst to best.

    ``label`` names the overall score: ``"OOF lwlrap"`` for out-of-fold tables, ``"lwlrap"`` for
    a held-out test set (``freesound evaluate``).
    """
    lines = [f"{name}: {label} {scores['lwlrap']:.4f} on {scores['clips']} clips"]
    if "per_fold" in scores:
        lines.append("  per fold: " + "  ".join(f"{k}: {v:.4f}" for k, v in scores["per_fold"].items()))
    ranked = sorted(scores["per_class"].items(), key=lambda item: item[1]["lwlrap"])
    if top is not None:
        ranked = ranked[:top]
    width = max(len(name) for name, _ in ranked) if ranked else 10
    lines.append(f"  {'class'.ljust(width)}  lwlrap  weight")
    lines += [f"  {cls.ljust(width)}  {v['lwlrap']:.4f}  {v['weight']:.4f}" for cls, v in ranked]
    return "\n".join(lines)
