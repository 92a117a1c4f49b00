"""Report plots: training curves, the augmentation gallery, per-class lwlrap, ensemble selection,
search progress, experiments compared, self-training rounds and a long recording's timeline.

Every plot is drawn on a ``matplotlib.figure.Figure`` with its own ``FigureCanvasAgg``, never
through ``pyplot``: no global figure state and no interactive backend is touched, so the module
is safe to use from a server, a test or a notebook that has chosen another backend. Each function
writes one PNG atomically and returns its path.

``report(name, work)`` is the library side of ``freesound report EXPERIMENT``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from freesound.audio.network_input import INPUT_SCALE, to_network_input
from freesound.errors import FreesoundError
from freesound.fileio import atomic_path
from freesound.metrics import format_scores
from freesound.paths import experiment_dir, predictions_dir
from freesound.training.augment import PadToSize, RandomCrop, RandomResizedCrop, SpecAugment, train_transform
from freesound.training.mixers import AddMixer, SigmoidConcatMixer

DPI = 100
WINDOW = 256
TRAINING_CURVES_PNG = "training_curves.png"
PER_CLASS_PNG = "per_class.png"
AUGMENTATIONS_PNG = "augmentations.png"
#: The columns of a training ``log.csv`` the curves are drawn from.
CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_lwlrap")


def _figure(width: float, height: float) -> Figure:
    """A figure (size in inches) bound to an Agg canvas of its own."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out_png) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        # The temporary name ends in .tmp, so the format must be explicit.
        figure.savefig(tmp, format="png", dpi=DPI)
    return out_png


# --------------------------------------------------------------------------------------------
# Training curves


def read_fold_logs(directory) -> dict:
    """Every non-empty ``fold_<k>/log.csv`` of an experiment directory.

    Returns
    -------
    dict fold (int) -> DataFrame holding at least ``CURVE_COLUMNS``, sorted by fold.

    Raises
    ------
    FreesoundError
        When there is no log with at least one epoch, or a log lacks a column.
    """
    directory = Path(directory)
    logs = {}
    for path in directory.glob("fold_*/log.csv"):
        suffix = path.parent.name.removeprefix("fold_")
        if not suffix.isdigit():
            continue
        frame = pd.read_csv(path)
        missing = [c for c in CURVE_COLUMNS if c not in frame.columns]
        if missing:
            raise FreesoundError(f"{path} lacks the column(s) {', '.join(missing)}")
        if len(frame):
            logs[int(suffix)] = frame
    if not logs:
        raise FreesoundError(f"no training logs in {directory} (expected fold_<k>/log.csv); train the experiment first")
    return dict(sorted(logs.items()))


def _best_row(log: pd.DataFrame) -> pd.Series:
    """The epoch training kept: the first one with the highest val lwlrap."""
    return log.loc[log.val_lwlrap.idxmax()]


def plot_training_curves(directory, out_png) -> Path:
    """Loss and val lwlrap per epoch for every fold of a trained experiment.

    Left panel: train loss (solid) and val loss (dashed) per fold; right panel: val lwlrap per
    fold, each fold's best (kept) epoch marked with a star. One colour per fold.

    Parameters
    ----------
    directory : an experiment's folder, holding ``fold_<k>/log.csv``
    out_png : path of the PNG to write

    Raises
    ------
    FreesoundError
        When the directory holds no training log.
    """
    logs = read_fold_logs(directory)
    figure = _figure(13, 5)
    loss_axes, score_axes = figure.subplots(1, 2)
    palette = [f"C{i % 10}" for i in range(len(logs))]
    for colour, (fold, log) in zip(palette, logs.items()):
        loss_axes.plot(log.epoch, log.train_loss, color=colour, label=f"fold {fold} train")
        loss_axes.plot(log.epoch, log.val_loss, color=colour, linestyle="--", label=f"fold {fold} val")
        best = _best_row(log)
        score_axes.plot(log.epoch, log.val_lwlrap, color=colour, label=f"fold {fold}: best {best.val_lwlrap:.4f}")
        score_axes.plot(best.epoch, best.val_lwlrap, marker="*", markersize=14, color=colour,
                        markeredgecolor="black", linestyle="none")
    loss_axes.set(title="loss (solid: train, dashed: validation)", xlabel="epoch", ylabel="loss")
    score_axes.set(title="validation lwlrap (star: best epoch, kept)", xlabel="epoch", ylabel="lwlrap")
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"{Path(directory).name}: training curves")
    return _save(figure, out_png)


def best_epochs_table(name: str, logs: dict) -> str:
    """Per-fold best val lwlrap as text: what ``report`` shows before OOF scores exist."""
    lines = [f"{name}: best validation lwlrap per fold (no OOF scores yet: run `freesound predict {name}`)"]
    best = {fold: _best_row(log) for fold, log in logs.items()}
    for fold, row in best.items():
        lines.append(f"  fold {fold}: {row.val_lwlrap:.4f} at epoch {int(row.epoch)} of {len(logs[fold])}")
    lines.append(f"  mean:   {np.mean([row.val_lwlrap for row in best.values()]):.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Augmentation gallery


def augmentation_panels(logmel: np.ndarray, seed: int = 0, other: np.ndarray | None = None) -> list:
    """The train-time augmentations applied to one clip, as images to show.

    Uses the real transforms and mixers, each applied once (no probability gate), with one
    ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    logmel : float32 (n_mels, frames), dB
    seed : int
    other : float32 (n_mels, frames'), the clip mixed in; default: ``logmel`` reversed in time

    Returns
    -------
    list of (title, image (n_mels, frames), kind) with kind ``"db"`` (a log-mel in dB) or
    ``"delta"`` (a delta channel of the network input, signed).
    """
    rng = np.random.default_rng(seed)
    other = logmel[:, ::-1] if other is None else other
    crop = RandomCrop(WINDOW)
    wrapped = crop(PadToSize(WINDOW, "wrap")(logmel), rng)
    window = crop(PadToSize(WINDOW, "constant")(logmel), rng)
    other_window = crop(PadToSize(WINDOW, "constant")(other), rng)
    # Mixers work on network inputs; one-hot targets let the titles show how labels combine.
    image, target = to_network_input(window), np.array([1.0, 0.0], dtype=np.float32)

    def draw_other():
        return to_network_input(other_window), np.array([0.0, 1.0], dtype=np.float32)

    concat, concat_target = SigmoidConcatMixer()(image, target, draw_other, rng)
    added, added_target = AddMixer()(image, target, draw_other, rng)
    network_input = train_transform(WINDOW)(logmel, rng)
    return [
        (f"original log-mel ({logmel.shape[1]} frames)", logmel, "db"),
        (f"pad (wrap) + random crop to {WINDOW}", wrapped, "db"),
        (f"pad (constant: clip min) + random crop to {WINDOW}", window, "db"),
        ("random resized crop (area 0.8-1, w/h 1.7-2.3)", RandomResizedCrop()(window, rng), "db"),
        ("SpecAugment (1-2 masks, min-filled)", SpecAugment()(window, rng), "db"),
        (f"sigmoid-concat mix (other clip on the left), labels {_labels(concat_target)}",
         concat[0] * INPUT_SCALE, "db"),
        (f"additive mix, labels {_labels(added_target)}", added[0] * INPUT_SCALE, "db"),
        ("network input channel 1: delta / 100", network_input[1], "delta"),
        ("network input channel 2: delta-delta / 100", network_input[2], "delta"),
    ]


def _labels(target: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:.2f}" for value in target) + "]"


def plot_augmentations(logmel: np.ndarray, out_png, seed: int = 0, other: np.ndarray | None = None) -> Path:
    """A 3x3 gallery of the train-time augmentations of one clip (see ``augmentation_panels``).

    Log-mel panels share one dB colour scale (the clip's and the other clip's range); delta panels
    use a diverging scale centred on 0.
    """
    logmel = np.asarray(logmel, dtype=np.float32)
    other = None if other is None else np.asarray(other, dtype=np.float32)
    db_images = [logmel] + ([] if other is None else [other])
    shapes = [image.shape for image in db_images]
    if any(len(shape) != 2 or 0 in shape or shape[0] != shapes[0][0] for shape in shapes):
        raise FreesoundError(f"expected non-empty (n_mels, frames) log-mels with equal n_mels, got shapes {shapes}")
    panels = augmentation_panels(logmel, seed, other)
    db_range = (min(float(i.min()) for i in db_images), max(float(i.max()) for i in db_images))
    figure = _figure(16, 10)
    for axes, (title, image, kind) in zip(figure.subplots(3, 3).flat, panels):
        if kind == "db":
            shown = axes.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=db_range[0], vmax=db_range[1])
        else:
            limit = float(np.abs(image).max()) or 1.0
            shown = axes.imshow(image, origin="lower", aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
        axes.set_title(title, fontsize="medium")
        axes.set(xlabel="frame", ylabel="mel band")
        figure.colorbar(shown, ax=axes, label="dB" if kind == "db" else None)
    figure.suptitle(f"train-time augmentations (seed {seed})")
    return _save(figure, out_png)


# --------------------------------------------------------------------------------------------
# Per-class lwlrap


def plot_per_class(scores: dict, out_png, title: str) -> Path:
    """Horizontal bars of per-class lwlrap, worst class on top, overall lwlrap as a line.

    Parameters
    ----------
    scores : dict as in ``oof_scores.json``: ``lwlrap`` and ``per_class[name]["lwlrap"|"weight"]``
    out_png : path of the PNG to write
    title : figure title

    Bars below the overall lwlrap are red, the others blue; classes with weight 0 (no positive
    clip, so no score) are drawn grey at the bottom.
    """
    per_class = scores.get("per_class") or {}
    if not per_class:
        raise FreesoundError(f"{title}: the scores hold no per-class lwlrap")
    # Worst first, unscored classes last: they are not bad, just absent from the clips.
    ranked = sorted(per_class.items(), key=lambda item: (item[1]["weight"] == 0, item[1]["lwlrap"]))
    names = [name for name, _ in ranked]
    values = [v["lwlrap"] for _, v in ranked]
    colours = ["lightgrey" if v["weight"] == 0 else f"C{0 if v['lwlrap'] >= scores['lwlrap'] else 3}" for _, v in ranked]
    figure = _figure(10, max(3.0, 0.26 * len(ranked) + 1.5))
    axes = figure.subplots()
    positions = np.arange(len(ranked))
    axes.barh(positions, values, color=colours)
    for y, (_, v) in zip(positions, ranked):
        text = f"{v['lwlrap']:.3f}  (weight {v['weight']:.3f})" if v["weight"] else "no positive clips"
        axes.text(v["lwlrap"] + 0.01, y, text, va="center", fontsize="x-small")
    axes.axvline(scores["lwlrap"], color="black", linestyle="--", label=f"overall lwlrap {scores['lwlrap']:.4f}")
    axes.set_yticks(positions, names, fontsize="small")
    axes.invert_yaxis()
    axes.set(xlim=(0, 1.25), xlabel="lwlrap", title=title)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="upper right")
    return _save(figure, out_png)


# --------------------------------------------------------------------------------------------
# Ensemble selection and hyperparameter search


def plot_selection(table: pd.DataFrame, out_png, title: str) -> Path:
    """Horizontal bars of the best subsets' blend OOF score, best on top.

    Parameters
    ----------
    table : ``freesound.tools.select.Selection.table()``: ``rank``, ``size``, the score (its
        third column, named by its metric: ``lwlrap``, ``roc_auc``, ``cmap``), ``experiments``
    out_png : path of the PNG to write
    title : figure title
    """
    if table.empty:
        raise FreesoundError(f"{title}: no subsets to plot")
    figure = _figure(11, max(3.0, 0.35 * len(table) + 1.5))
    axes = figure.subplots()
    positions = np.arange(len(table))
    metric = table.columns[2]
    scores = table[metric]
    axes.barh(positions, scores, color=["C2"] + ["C0"] * (len(table) - 1))
    low, high = float(scores.min()), float(scores.max())
    margin = max(high - low, 0.01)
    for y, value in zip(positions, scores):
        axes.text(value, y, f" {value:.4f}", va="center", fontsize="small")
    axes.set_yticks(positions, [f"{e} ({s})" for e, s in zip(table.experiments, table["size"])], fontsize="small")
    axes.invert_yaxis()
    axes.set(xlim=(low - margin, high + 0.3 * margin), xlabel=f"blend OOF {metric} (experiments in the subset)",
             title=title)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, out_png)


def plot_search_progress(trials: pd.DataFrame, out_png, title: str) -> Path:
    """OOF score of every finished trial and the best so far (a step line), by trial number.

    Parameters
    ----------
    trials : ``trials.csv`` of ``freesound search``: ``trial``, ``name``, ``state``, then the score
        named by its metric (``lwlrap``, ``roc_auc``, ``cmap``; NaN for a trial whose predictions
        were not finite; not drawn)
    out_png : path of the PNG to write
    title : figure title
    """
    trials = trials.sort_values("trial")
    metric = trials.columns[3]
    scored = trials[np.isfinite(trials[metric])]
    if scored.empty:
        raise FreesoundError(f"{title}: no scored trial to plot")
    best_so_far = np.maximum.accumulate(scored[metric].to_numpy())
    best = scored.loc[scored[metric].idxmax()]
    figure = _figure(9, 5)
    axes = figure.subplots()
    axes.plot(scored.trial, scored[metric], "o", color="C0", label="trial")
    axes.step(scored.trial, best_so_far, where="post", color="C3", label="best so far")
    axes.plot(best.trial, best[metric], marker="*", markersize=16, color="C3", markeredgecolor="black",
              linestyle="none", label=f"best: trial {int(best.trial)}, {best[metric]:.4f}")
    axes.set(xlabel="trial", ylabel=f"OOF {metric}", title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save(figure, out_png)


def plot_self_training(table: pd.DataFrame, out_png, confident: float = 0.5) -> Path:
    """Self-training rounds: CV lwlrap per round (left); the share of pool clips whose highest
    probability reaches ``confident`` and of top-label flips since the previous round (right).

    Parameters
    ----------
    table : ``rounds.csv`` of ``freesound self-train`` (``round``, ``cv_lwlrap``, ``confident_share``,
        ``top_label_flips``; NaN where not known)
    """
    figure = _figure(10, 4)
    left, right = figure.subplots(1, 2)
    scored = table[table.cv_lwlrap.notna()]
    left.plot(scored["round"], scored.cv_lwlrap.astype(float), "o-", color="C0")
    left.set(xlabel="round", ylabel="CV lwlrap (out of fold)", title="CV per round")
    later = table[table["round"] > 0]
    right.plot(later["round"], later.confident_share.astype(float), "o-", color="C2",
               label=f"pool clips with max prob >= {confident:g}")
    flips = later[later.top_label_flips.notna()]
    right.plot(flips["round"], flips.top_label_flips.astype(float), "s--", color="C3",
               label="top label flipped since last round")
    right.set(xlabel="round", ylabel="share of the unlabelled pool", ylim=(0, 1.05), title="pseudo-labels")
    right.legend(loc="best", fontsize="small")
    for axes in (left, right):
        axes.set_xticks(list(table["round"]))
        axes.grid(alpha=0.3)
    return _save(figure, out_png)


# --------------------------------------------------------------------------------------------
# The report command


#: The classes ``plot_comparison``'s per-class panel shows: the first ones of its table (the worst).
PER_CLASS_SHOWN = 30


def plot_comparison(table: pd.DataFrame, per_class: pd.DataFrame, curves: dict, out_png) -> Path:
    """Experiments side by side (``freesound compare``), one colour per experiment: mean
    validation lwlrap per epoch, the CV scores, and the OOF lwlrap of the first
    ``PER_CLASS_SHOWN`` classes of ``per_class``.

    Parameters
    ----------
    table : one row per experiment (index: names) with ``mean best val`` and ``OOF lwlrap``
        (NaN: none yet); ``freesound.tools.compare.comparison``
    per_class : one row per class, one column per experiment with OOF scores
    curves : name -> Series of the mean validation lwlrap indexed by epoch
    out_png : path of the PNG to write
    """
    shown = per_class.head(PER_CLASS_SHOWN)
    figure = _figure(16, max(5.0, 0.25 * len(shown) + 1.5))
    curve_axes, cv_axes, class_axes = figure.subplots(1, 3, width_ratios=[1, 0.7, 1.3])
    colours = {name: f"C{index % 10}" for index, name in enumerate(table.index)}
    for name, curve in curves.items():
        curve_axes.plot(curve.index, curve.values, color=colours[name], label=name)
    curve_axes.set(title="validation lwlrap, mean of the folds", xlabel="epoch", ylabel="lwlrap")
    curve_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    positions = np.arange(len(table))
    # Greys: the experiments' colours would read as experiments here.
    cv_axes.bar(positions - 0.2, table["mean best val"], width=0.4, color="0.65", label="mean best val")
    cv_axes.bar(positions + 0.2, table["OOF lwlrap"].fillna(0.0), width=0.4, color="0.25", label="OOF (0: none yet)")
    cv_axes.set_xticks(positions, table.index, rotation=30, ha="right")
    cv_axes.set(title="CV lwlrap", ylabel="lwlrap")
    height = 0.8 / max(len(shown.columns), 1)
    for index, name in enumerate(shown.columns):
        class_axes.barh(np.arange(len(shown)) + index * height, shown[name], height=height, color=colours[name],
                        label=name)
    class_axes.set_yticks(np.arange(len(shown)) + 0.4 - height / 2, shown.index, fontsize="small")
    class_axes.invert_yaxis()
    class_axes.set(title="OOF lwlrap per class (worst first)" if len(shown.columns) else "no OOF scores yet",
                   xlabel="lwlrap")
    for axes in (curve_axes, cv_axes, class_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.suptitle(" vs ".join(table.index))
    return _save(figure, out_png)


def report(name: str, work, out_dir=None, example_logmel: np.ndarray | None = None) -> dict:
    """Plots and a score table for a trained experiment.

    Parameters
    ----------
    name : experiment name (``<work>/experiments/<name>/fold_<k>/log.csv``)
    work : the work directory
    out_dir : where the PNGs go; default ``<work>/predictions/<name>/``
    example_logmel : optional log-mel (n_mels, frames); when given, the augmentation gallery of
        that clip is drawn too

    Returns
    -------
    dict with ``pngs`` (list of Path) and ``table`` (str): the CV table from
    ``predictions/<name>/oof_scores.json`` when ``freesound predict`` has written it, else the
    per-fold best validation lwlrap from the training logs.
    """
    predictions = predictions_dir(work, name)
    out_dir = Path(out_dir) if out_dir is not None else predictions
    experiment = experiment_dir(work, name)
    pngs = [plot_training_curves(experiment, out_dir / TRAINING_CURVES_PNG)]
    scores_path = predictions / "oof_scores.json"
    if scores_path.is_file():
        scores = json.loads(scores_path.read_text())
        pngs.append(plot_per_class(scores, out_dir / PER_CLASS_PNG, f"{name}: out-of-fold lwlrap per class"))
        table = format_scores(name, scores)
    else:
        table = best_epochs_table(name, read_fold_logs(experiment))
    if example_logmel is not None:
        pngs.append(plot_augmentations(example_logmel, out_dir / AUGMENTATIONS_PNG))
    return {"pngs": pngs, "table": table}


# --------------------------------------------------------------------------------------------
# Timeline of a long recording


def plot_timeline(samples: np.ndarray, sample_rate: int, probabilities: pd.DataFrame, starts, window_seconds: float,
                  out_png, title: str, top: int = 10) -> Path:
    """The waveform above a class-by-time heat map of the window probabilities of ``top`` classes.

    Parameters
    ----------
    samples : np.ndarray float (n,), the recording (mono) at ``sample_rate`` Hz
    probabilities : DataFrame (n_windows, C), one row per window in time order, columns the classes
    starts : sequence of float, each window's start in seconds
    window_seconds : float, the windows' length; each is drawn as a column centred on its middle,
        as wide as the step between windows, the first and last stretched to the first window's
        start and the last window's end
    top : the classes drawn, those with the highest maximum over the windows, highest on top
    """
    starts = np.asarray(starts, dtype=np.float64)
    centres = starts + window_seconds / 2
    step = float(np.diff(starts).min()) if len(starts) > 1 else window_seconds
    edges = np.concatenate([[starts[0]], centres[1:] - step / 2, [starts[-1] + window_seconds]])
    ranked = probabilities.max(axis=0).sort_values(ascending=False).index[:top]
    figure = _figure(12, 2.0 + 0.3 * len(ranked))
    wave_axes, heat_axes = figure.subplots(2, 1, sharex=True, height_ratios=[1, max(2, len(ranked) // 3)])
    stride = max(1, len(samples) // 20000)  # a few thousand points draw the envelope as well as all
    wave_axes.plot(np.arange(0, len(samples), stride) / sample_rate, samples[::stride], linewidth=0.4, color="C0")
    wave_axes.set(ylabel="amplitude", title=title)
    mesh = heat_axes.pcolormesh(edges, np.arange(len(ranked) + 1), probabilities[ranked].to_numpy().T,
                                vmin=0.0, vmax=1.0, cmap="magma")
    heat_axes.set_yticks(np.arange(len(ranked)) + 0.5, list(ranked), fontsize="small")
    heat_axes.invert_yaxis()
    heat_axes.set(xlabel="time (s)", xlim=(0.0, max(edges[-1], len(samples) / sample_rate)))
    figure.colorbar(mesh, ax=heat_axes, label="probability")
    return _save(figure, out_png)
