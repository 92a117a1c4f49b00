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

Beside lwlrap, the metrics of later competitions, both computed by scikit-learn as their public
Kaggle metric code does (``roc_auc``: BirdCLEF 2024 and 2025; ``padded_cmap``: BirdCLEF 2023).
``METRICS`` names all three; each is higher-is-better, with 1 for a perfect ranking. lwlrap ranks
the classes within each clip; ROC-AUC and average precision rank the clips within each class.

``score_predictions`` collects the overall, per-fold and per-class scores of one or more metrics as
a JSON-able dict (what ``oof_scores.json`` holds) and ``format_scores`` prints it as a table.
"""

from __future__ import annotations

import numpy as np


def _validate(truth, scores, metric: str = "lwlrap") -> tuple[np.ndarray, np.ndarray]:
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
        raise ValueError(f"truth has no positive label; {metric} is undefined")
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


def _class_mean(per_class: np.ndarray) -> float:
    """The unweighted mean of the scored classes' values (scikit-learn's ``average="macro"``)."""
    return float(np.mean(per_class[~np.isnan(per_class)]))


def _named_classes(columns: np.ndarray, classes) -> str:
    """The first five of ``columns`` by their names in ``classes``, or by index without them."""
    shown = [str(classes[column]) for column in columns[:5]] if classes is not None else columns[:5].tolist()
    return f"{'classes' if classes is not None else 'columns'} {shown}{' ...' if len(columns) > 5 else ''}"


def per_class_roc_auc(truth, scores, classes=None) -> np.ndarray:
    """Each class's ROC-AUC ``(C,)`` float64, NaN for a class without a positive row.

    Parameters
    ----------
    truth : array-like ``(N, C)``, binary (0/1 or bool)
    scores : array-like ``(N, C)``, real-valued, higher meaning more likely
    classes : the ``C`` class names, for the error to name a class by (default: its column index)

    Raises
    ------
    ValueError
        Shapes differ, truth is not binary, a score is not finite, truth has no positive at all,
        or a class has positive rows only (its ROC-AUC is undefined; see ``roc_auc``).
    """
    from sklearn.metrics import roc_auc_score  # lazily: lwlrap alone does not need scikit-learn

    truth, scores = _validate(truth, scores, "roc_auc")
    positives = truth.sum(axis=0)
    without_negatives = np.flatnonzero(positives == len(truth))
    if len(without_negatives):
        raise ValueError(f"ROC-AUC is undefined for {len(without_negatives)} class(es) with no negative row "
                         f"({_named_classes(without_negatives, classes)}), "
                         "as in BirdCLEF's metric: score more rows than these classes cover")
    per_class = np.full(truth.shape[1], np.nan)
    for column in np.flatnonzero(positives):
        per_class[column] = roc_auc_score(truth[:, column], scores[:, column])
    return per_class


def roc_auc(truth, scores, classes=None) -> float:
    """Macro ROC-AUC over the classes with at least one positive row: BirdCLEF 2024's and 2025's metric.

    Source: the public Kaggle metric "birdclef-roc-auc" keeps the solution's columns whose sum
    is above 0 and returns ``sklearn.metrics.roc_auc_score(solution, submission,
    average="macro")`` on them; this is that value (the unweighted mean of the columns' AUCs, ties
    counted half as scikit-learn does). A class with positive rows but no negative one has no
    ROC-AUC: scikit-learn refuses it (older versions raise, newer ones return NaN with a warning,
    which turns the mean into NaN), so the Kaggle metric gives no score; here it is a
    ``ValueError`` naming the classes.

    Parameters
    ----------
    truth : array-like ``(N, C)``, binary (0/1 or bool); rows are clips or windows
    scores : array-like ``(N, C)``, real-valued, higher meaning more likely
    classes : the ``C`` class names, for an error to name a class by (default: its column index)

    Returns
    -------
    float in ``[0, 1]``; 0.5 for scores unrelated to the truth, 1 for a perfect ranking.

    Raises
    ------
    ValueError
        As ``per_class_roc_auc``.
    """
    return _class_mean(per_class_roc_auc(truth, scores, classes))


def per_class_padded_ap(truth, scores, padding_factor: int = 5, classes=None) -> np.ndarray:
    """Each class's average precision ``(C,)`` after ``padded_cmap``'s padding; their mean is it.

    Raises
    ------
    ValueError
        As ``padded_cmap``.
    """
    from sklearn.metrics import average_precision_score  # lazily, as in per_class_roc_auc

    truth, scores = _validate(truth, scores, "cmap")
    if not (isinstance(padding_factor, (int, np.integer)) and padding_factor >= 0):
        raise ValueError(f"padding_factor must be a whole number of rows, 0 or more, got {padding_factor!r}")
    without_positives = np.flatnonzero(~truth.any(axis=0))
    if padding_factor == 0 and len(without_positives):
        raise ValueError("average precision is undefined for a class without a positive row "
                         f"({_named_classes(without_positives, classes)}); "
                         "pad (padding_factor 1 or more) or leave such classes out")
    ones = np.ones((padding_factor, truth.shape[1]))
    padded_truth, padded_scores = np.vstack([truth, ones.astype(bool)]), np.vstack([scores, ones])
    return np.array([average_precision_score(padded_truth[:, column], padded_scores[:, column])
                     for column in range(truth.shape[1])])


def padded_cmap(truth, scores, padding_factor: int = 5, classes=None) -> float:
    """Padded class-mean average precision (cmAP): BirdCLEF 2023's metric.

    Source: BirdCLEF 2023's evaluation page and its public Kaggle metric code append
    ``padding_factor`` rows of ones to both the solution and the submission (every class then has
    positives, and a class the truth lacks scores near 1 instead of being undefined), then return
    ``sklearn.metrics.average_precision_score(solution, submission, average="macro")``; this is
    that value, the unweighted mean over classes of the padded columns' average precision (a tied
    group of scores counts at its end, as in lwlrap).

    Parameters
    ----------
    truth : array-like ``(N, C)``, binary (0/1 or bool); rows are clips or windows
    scores : array-like ``(N, C)``, real-valued, higher meaning more likely; the padding scores
        1, so probabilities in ``[0, 1]`` are what the padding was made for
    padding_factor : rows of ones appended (BirdCLEF 2023: 5)
    classes : the ``C`` class names, for an error to name a class by (default: its column index)

    Returns
    -------
    float in ``(0, 1]``

    Raises
    ------
    ValueError
        Shapes differ, truth is not binary, a score is not finite, truth has no positive at all,
        a ``padding_factor`` below 0, or 0 with a class that has no positive row.
    """
    return _class_mean(per_class_padded_ap(truth, scores, padding_factor, classes=classes))


#: The metrics by name, each ``(truth (N, C), scores (N, C)) -> float``, higher is better.
METRICS = {"lwlrap": lwlrap, "roc_auc": roc_auc, "cmap": padded_cmap}


#: The per-class values ``(C,)`` of the metrics that average over classes (NaN: not scored);
#: ``per_class_lwlrap`` also returns the classes' weights.
PER_CLASS = {"roc_auc": per_class_roc_auc, "cmap": per_class_padded_ap}


def check_metric(name: str) -> str:
    """``name`` if it names a metric of ``METRICS``.

    Raises
    ------
    ValueError
        An unknown name, with the valid ones.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return name


def score_predictions(truth: np.ndarray, probs: np.ndarray, classes, folds=None, metrics=("lwlrap",)) -> dict:
    """Overall, per-fold and per-class scores of ``metrics`` as a JSON-able dict.

    Parameters
    ----------
    truth, probs : ``(N, C)`` binary truth and scores
    classes : the ``C`` class names
    folds : ``(N,)`` fold of each row, for per-fold scores (None: none)
    metrics : names of ``METRICS``, in the order reported

    Returns
    -------
    dict: each metric's overall score under its name, ``clips`` (N), ``per_class`` (class ->
    ``{metric: value}``, lwlrap's with its ``weight``; None for a class a metric does not score,
    such as a class without positives for ROC-AUC), and with ``folds`` ``per_fold`` (lwlrap's) and
    ``per_fold_<metric>`` (the others'). With lwlrap alone it is what it has always been.

    Raises
    ------
    ValueError
        An unknown metric, or what the metrics raise.
    """
    metrics = tuple(dict.fromkeys(check_metric(metric) for metric in metrics))
    scores, per_class = {}, {name: {} for name in classes}
    for metric in metrics:
        if metric == "lwlrap":
            values, weight = per_class_lwlrap(truth, probs)
            scores[metric] = float(lwlrap(truth, probs))
            for name, value, share in zip(classes, values, weight):
                per_class[name].update(lwlrap=float(value), weight=float(share))
        else:
            values = PER_CLASS[metric](truth, probs, classes=classes)
            scores[metric] = _class_mean(values)
            for name, value in zip(classes, values):
                per_class[name][metric] = None if np.isnan(value) else float(value)
    scores.update(clips=int(len(truth)), per_class=per_class)
    if folds is not None:
        for metric in metrics:
            key = "per_fold" if metric == "lwlrap" else f"per_fold_{metric}"
            named = {} if metric == "lwlrap" else {"classes": classes}  # lwlrap names no class
            scores[key] = {str(k): float(METRICS[metric](truth[folds == k], probs[folds == k], **named))
                           for k in sorted(set(folds))}
    return scores


def scored_metrics(scores: dict) -> list:
    """The metrics a ``score_predictions`` dict holds, in its order."""
    return [key for key in scores if key in METRICS]


def format_scores(name: str, scores: dict, top: int | None = None, label: str = "OOF", unit: str = "clips") -> str:
    """A readable table: each metric overall and per fold, then classes from worst to best by the first.

    ``label`` says what was scored: ``"OOF"`` for out-of-fold tables, ``""`` for a held-out test
    set (``freesound evaluate``); ``unit`` names the rows (clips, or BirdCLEF's windows).
    """
    metrics = scored_metrics(scores)
    overall = ", ".join(f"{metric} {scores[metric]:.4f}" for metric in metrics)
    lines = [f"{name}: {f'{label} ' if label else ''}{overall} on {scores['clips']} {unit}"]
    for metric in metrics:
        key = "per_fold" if metric == "lwlrap" else f"per_fold_{metric}"
        if key in scores:
            title = "per fold" if len(metrics) == 1 else f"per fold ({metric})"
            lines.append(f"  {title}: " + "  ".join(f"{k}: {v:.4f}" for k, v in scores[key].items()))
    columns = [column for metric in metrics for column in ((metric, "weight") if metric == "lwlrap" else (metric,))]
    first = metrics[0]
    ranked = sorted(scores["per_class"].items(),
                    key=lambda item: (item[1][first] is None, item[1][first] or 0.0))
    if top is not None:
        ranked = ranked[:top]
    width = max(len(name) for name, _ in ranked) if ranked else 10

    def cell(value, column):
        return ("-" if value is None else f"{value:.4f}").rjust(max(len(column), 6))

    lines.append(f"  {'class'.ljust(width)}  " + "  ".join(column.rjust(max(len(column), 6)) for column in columns))
    lines += [f"  {cls.ljust(width)}  " + "  ".join(cell(v[column], column) for column in columns) for cls, v in ranked]
    return "\n".join(lines)
