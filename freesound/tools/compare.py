"""``freesound compare``: trained experiments side by side, from the work folder alone.

    freesound compare small small_lq [--work DIR] [--out PNG]

One table (per experiment: folds, each fold's best validation lwlrap, their mean, and the
out-of-fold lwlrap once ``train`` or ``predict`` has scored it), one per-class table of the OOF
lwlrap, and one PNG: mean validation lwlrap per epoch, the CV scores, and the per-class lwlrap.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from freesound.errors import FreesoundError
from freesound.paths import experiment_dir, predictions_dir
from freesound.tools.plots import plot_comparison, read_fold_logs

def oof_scores(work, name: str) -> dict | None:
    """``predictions/<name>/oof_scores.json`` (``predict_oof``), or None before it exists."""
    path = predictions_dir(work, name) / "oof_scores.json"
    return json.loads(path.read_text()) if path.is_file() else None


def comparison(names, work) -> tuple:
    """The experiments' scores side by side.

    Returns
    -------
    (DataFrame, DataFrame): one row per experiment (``folds``, ``fold <k>``: that fold's best val
    lwlrap, ``mean best val``, ``OOF lwlrap``: NaN before OOF scores exist), in the order given;
    and the per-class OOF lwlrap, one row per class and one column per experiment with OOF
    scores, worst classes (of the first such experiment) first.

    Raises
    ------
    FreesoundError
        A name given twice, or an experiment with no training log (named).
    """
    names = list(names)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise FreesoundError(f"compare: {', '.join(twice)} given more than once")
    rows, classes = [], {}
    for name in names:
        logs = read_fold_logs(experiment_dir(work, name))
        best = {f"fold {fold}": float(log.val_lwlrap.max()) for fold, log in logs.items()}
        scores = oof_scores(work, name)
        rows.append({"experiment": name, "folds": len(logs), **best, "mean best val": float(np.mean(list(best.values()))),
                     "OOF lwlrap": float(scores["lwlrap"]) if scores else np.nan})
        if scores:
            classes[name] = {cls: value["lwlrap"] for cls, value in scores["per_class"].items()}
    table = pd.DataFrame(rows).set_index("experiment")
    per_class = pd.DataFrame(classes)
    if len(per_class.columns):
        per_class = per_class.sort_values(per_class.columns[0])
    return table, per_class


def mean_curves(names, work) -> dict:
    """name -> Series: each epoch's validation lwlrap, the mean over the experiment's folds."""
    return {name: pd.concat(read_fold_logs(experiment_dir(work, name)).values()).groupby("epoch").val_lwlrap.mean()
            for name in names}


def compare(names, work, out_png) -> tuple:
    """``comparison`` of ``names`` as text (``format_comparison``) and drawn in ``out_png``
    (``plots.plot_comparison``); returns ``(text, png path)``. Raises as ``comparison``."""
    table, per_class = comparison(names, work)
    png = plot_comparison(table, per_class, mean_curves(names, work), out_png)
    return format_comparison(table, per_class), png


def format_comparison(table: pd.DataFrame, per_class: pd.DataFrame) -> str:
    """The two tables as text (4 decimals; ``-`` where OOF scores do not exist yet)."""
    text = table.to_string(float_format=lambda value: f"{value:.4f}", na_rep="-")
    if len(per_class.columns):
        text += "\n\nOOF lwlrap per class (worst first)\n" + per_class.to_string(
            float_format=lambda value: f"{value:.4f}", na_rep="-")
    return text
