"""Ensemble selection: which trained experiments to blend, chosen by out-of-fold lwlrap.

The winning team picked its first-level models by trying combinations of trained experiments for
the best CV score. ``select_ensemble`` does that over the experiments' out-of-fold predictions
(``<work>/predictions/<name>/oof.csv``, written by ``freesound predict``): every candidate subset
is scored by the OOF lwlrap of its geometric-mean blend, the blend ``freesound predict`` uses.

Which subsets: with ``n`` experiments and subsets of 1 to ``K`` of them, every subset is scored
while there are at most ``EXHAUSTIVE_LIMIT`` (20,000) of them, ``sum(C(n, k) for k <= K)``; for
example all subsets of 14 experiments (16,383), or subsets of up to 7 of 15. Beyond that, greedy
forward selection: start from the best single experiment, repeatedly add the experiment that
most improves the blend's OOF lwlrap, and stop when no addition improves it or the subset has
``K`` experiments. Greedy's first step scores every single experiment, so its result is never
worse than the best of them.

Scoring is vectorised: the experiments' log-probabilities are read once into an ``(E, N, C)``
array; a subset's blend is the sum of its experiments' logs (a multiple of the log of the geometric
mean: lwlrap ranks classes within each clip, so neither the ``exp`` nor the division by the
subset's size changes anything) and blocks of subsets are
blended by matrix products and scored at once (``freesound.metrics.label_precisions``). No file
is read per subset.

Another metric of ``freesound.metrics.METRICS`` (``metric``: ROC-AUC or padded cmAP, which rank
the clips within each class) scores each subset's geometric-mean blend itself, one subset at a
time: about as long per subset as one call of the metric on ``(N, C)`` (0.1 to 0.2 s for 5,000
clips of 80 classes), so ``--max-size`` or the greedy search keep large selections short.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.config import ConfigError, StackerConfig, dump_ensemble, is_ensemble_file, load_experiment
from freesound.data.dataset import Dataset, multi_hot, read_csv
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv, atomic_write_text
from freesound.metrics import METRICS, check_metric, label_precisions
from freesound.paths import predictions_dir
from freesound.tools.plots import plot_selection

#: The most subsets scored exhaustively; above it, greedy forward selection.
EXHAUSTIVE_LIMIT = 20_000
#: Probabilities are clipped here before the log, as ``freesound.predict.geometric_mean`` does.
MIN_PROBABILITY = 1e-12
#: How subset names are joined in tables.
SEPARATOR = " + "
#: Blended scores held at once while scoring (float64, 32 MiB), and subsets blended per block.
_BATCH_VALUES = 1 << 22
_SUBSET_BLOCK = 2048


@dataclass(frozen=True)
class OOFSet:
    """Out-of-fold probabilities of several experiments on the clips every one of them predicted.

    Attributes
    ----------
    names : tuple of str, the ``E`` experiment names
    fnames : np.ndarray ``(N,)`` of str, the clips, in the first experiment's order
    classes : tuple of str, the ``C`` classes in column order
    truth : np.ndarray ``(N, C)`` bool, the clips' curated labels
    log_probs : np.ndarray ``(E, N, C)`` float64, log of each experiment's probabilities (clipped
        at ``MIN_PROBABILITY``); float64 as read, so near-ties rank as in the files (float32 saved
        no measurable time: ``benchmarks/RESULTS.md``, "Ensemble selection")
    """

    names: tuple
    fnames: np.ndarray
    classes: tuple
    truth: np.ndarray
    log_probs: np.ndarray


@dataclass(frozen=True)
class Selection:
    """Scored subsets of experiments, best first.

    Attributes
    ----------
    names : tuple of str, the ``E`` experiments subsets are drawn from
    masks : np.ndarray ``(S, E)`` bool, one row per scored subset, sorted by OOF lwlrap (highest
        first; on ties the subset scored first, which is the smaller one, comes first)
    scores : np.ndarray ``(S,)`` float64, each subset's blend OOF score
    method : ``"exhaustive"`` or ``"greedy"``
    metric : the score's metric (``freesound.metrics.METRICS``)
    """

    names: tuple
    masks: np.ndarray
    scores: np.ndarray
    method: str
    metric: str = "lwlrap"

    def subset(self, index: int) -> tuple:
        """Experiment names of the ``index``-th best subset, in the order they were given."""
        return tuple(name for name, chosen in zip(self.names, self.masks[index]) if chosen)

    @property
    def best(self) -> tuple:
        return self.subset(0)

    @property
    def best_score(self) -> float:
        return float(self.scores[0])

    def single_scores(self) -> dict:
        """OOF score of each experiment on its own (every selection scores all of them)."""
        singles = np.flatnonzero(self.masks.sum(axis=1) == 1)
        return {self.subset(i)[0]: float(self.scores[i]) for i in singles}

    def table(self, top: int | None = None) -> pd.DataFrame:
        """``rank``, ``size``, the score (named by its metric) and ``experiments`` (joined by ``SEPARATOR``),
        best first."""
        count = len(self.scores) if top is None else min(top, len(self.scores))
        return pd.DataFrame({
            "rank": np.arange(1, count + 1),
            "size": self.masks[:count].sum(axis=1),
            self.metric: self.scores[:count],
            "experiments": [SEPARATOR.join(self.subset(i)) for i in range(count)],
        })


def experiment_names(specs, experiments_dir="experiments") -> tuple:
    """Names of experiments given as names or ``.toml`` paths; a name needs no file (imported
    experiments have none). Duplicates are an error."""
    names = tuple(load_experiment(spec, experiments_dir).name if str(spec).endswith(".toml") else str(spec)
                  for spec in specs)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise FreesoundError(f"experiment(s) given more than once: {', '.join(repeated)}")
    return names


def _read_oof_csv(path: Path, classes) -> pd.DataFrame:
    """One experiment's ``oof.csv``, indexed by fname, columns checked against ``classes``."""
    if not path.is_file():
        raise FreesoundError(f"{path} not found; run `freesound predict` on the experiment first")
    frame = read_csv(path, dtype={"fname": str})
    if frame.columns[0] != "fname":
        raise FreesoundError(f"{path}: expected a 'fname' column followed by class columns")
    columns = list(frame.columns[1:])
    if columns != list(classes):
        missing, extra = sorted(set(classes) - set(columns)), sorted(set(columns) - set(classes))
        detail = "; ".join(part for part in (missing and f"lacks {', '.join(missing)}",
                                             extra and f"has unknown {', '.join(extra)}") if part)
        raise FreesoundError(f"{path}: its class columns differ from the dataset's classes "
                             f"({detail or 'same classes in another order'})")
    if frame.fname.duplicated().any():
        raise FreesoundError(f"{path}: clip {frame.fname[frame.fname.duplicated()].iloc[0]} appears twice")
    return frame.set_index("fname")


def load_oof_set(names, dataset: Dataset, work, *, log=print) -> OOFSet:
    """Read the experiments' ``oof.csv`` files and align them on the clips they all predicted.

    Parameters
    ----------
    names : sequence of experiment names (``<work>/predictions/<name>/oof.csv``)
    dataset : the dataset the experiments were trained on (classes and curated labels)
    work : the work directory
    log : callable told when experiments predicted different clips

    Raises
    ------
    FreesoundError
        A missing file, class columns other than the dataset's, clips the dataset does not have,
        or no clip common to every experiment.
    """
    names = tuple(names)
    if not names:
        raise FreesoundError("no experiments given")
    frames = {name: _read_oof_csv(predictions_dir(work, name) / "oof.csv", dataset.classes) for name in names}
    labels = dataset.curated.set_index("fname").labels
    for name, frame in frames.items():
        unknown = frame.index.difference(labels.index)
        if len(unknown):
            raise FreesoundError(f"experiment {name!r} has OOF predictions for {len(unknown)} clip(s) that are not "
                                 f"curated clips of {dataset.root} (e.g. {unknown[0]}); was it trained on other data?")
    first = frames[names[0]].index
    common = first[np.logical_and.reduce([first.isin(frame.index) for frame in frames.values()])]
    if not len(common):
        raise FreesoundError(f"experiments {', '.join(names)} have no out-of-fold clip in common")
    partial = [f"{name} has {len(frame)}" for name, frame in frames.items() if len(frame) != len(common)]
    if partial:
        log(f"scoring on the {len(common)} clips every experiment predicted ({', '.join(partial)})")
    probs = np.stack([frames[name].loc[common].to_numpy(dtype=np.float64) for name in names])
    return OOFSet(
        names=names,
        fnames=np.asarray(common),
        classes=tuple(dataset.classes),
        truth=multi_hot(labels.loc[common], dataset.classes).astype(bool),
        log_probs=np.log(np.clip(probs, MIN_PROBABILITY, None)),
    )


def count_subsets(n: int, max_size: int) -> int:
    """Number of non-empty subsets of ``n`` items with at most ``max_size`` items."""
    return sum(comb(n, k) for k in range(1, min(max_size, n) + 1))


def enumerate_subsets(n: int, max_size: int) -> np.ndarray:
    """Every non-empty subset of ``n`` items with at most ``max_size`` items.

    Returns
    -------
    np.ndarray ``(count_subsets(n, max_size), n)`` bool, by size, then lexicographically.
    """
    masks = np.zeros((count_subsets(n, max_size), n), dtype=bool)
    combinations = (c for k in range(1, min(max_size, n) + 1) for c in itertools.combinations(range(n), k))
    for row, chosen in enumerate(combinations):
        masks[row, list(chosen)] = True
    return masks


def score_subsets(oof: OOFSet, masks, metric: str = "lwlrap") -> np.ndarray:
    """OOF score (``metric``, lwlrap by default) of the geometric-mean blend of each subset.

    Parameters
    ----------
    oof : the experiments' aligned OOF probabilities
    masks : array-like ``(S, E)`` bool, each row a non-empty subset of ``oof.names``
    metric : a name of ``freesound.metrics.METRICS``

    Returns
    -------
    np.ndarray ``(S,)`` float64, equal to ``METRICS[metric](oof.truth, geometric_mean(probs[subset]))``
    (for lwlrap: summed logs in the dtype of ``oof.log_probs``).

    Only the clip rows lwlrap looks at are blended: the log-probabilities are gathered once per
    positive label into ``(E, P, C)``, then blocks of subsets are blended by one matrix product
    per chunk of labels and scored by ``freesound.metrics.label_precisions`` (lwlrap is the mean
    over positive labels, so chunks add up), with the blended scores in memory bounded.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != len(oof.names) or not masks.any(axis=1).all():
        raise ValueError(f"masks must be (subsets, {len(oof.names)}) with at least one experiment per row")
    if check_metric(metric) != "lwlrap":
        return _score_blends(oof, masks, METRICS[metric])
    weights = masks.astype(oof.log_probs.dtype)  # summed logs rank classes as their mean does
    clips, labels = np.nonzero(oof.truth)
    n_experiments, _, n_classes = oof.log_probs.shape
    rows = oof.log_probs[:, clips].reshape(n_experiments, -1)  # (E, P·C)
    sums = np.zeros(len(masks))
    for start in range(0, len(masks), _SUBSET_BLOCK):
        block = weights[start:start + _SUBSET_BLOCK]
        step = max(1, _BATCH_VALUES // (len(block) * n_classes))
        for first in range(0, len(labels), step):
            chunk = slice(first, first + step)
            blends = block @ rows[:, first * n_classes:(first + step) * n_classes]
            precisions = label_precisions(blends.reshape(len(block), -1, n_classes), labels[chunk],
                                          oof.truth[clips[chunk]])
            sums[start:start + len(block)] += precisions.sum(axis=1)
    return sums / len(labels)


def _score_blends(oof: OOFSet, masks: np.ndarray, score) -> np.ndarray:
    """``score(truth, blend)`` of each subset's geometric-mean blend, one subset at a time.

    The blend is the geometric mean itself, not a sum of logs: a padded metric (cmAP) pads with
    probability 1, which must tie with a blend of 1 as it does in ``freesound predict``'s output.
    """
    sizes = masks.sum(axis=1)
    return np.array([score(oof.truth, np.exp(np.tensordot(mask.astype(float), oof.log_probs, axes=1) / size))
                     for mask, size in zip(masks, sizes)])


def greedy_selection(oof: OOFSet, max_size: int, metric: str = "lwlrap") -> tuple:
    """Greedy forward selection (see the module docstring).

    Returns
    -------
    masks : np.ndarray ``(S, E)`` bool, every subset scored, in the order scored
    scores : np.ndarray ``(S,)`` float64
    """
    n = len(oof.names)
    chosen = np.zeros(n, dtype=bool)
    best = -np.inf
    all_masks, all_scores = [], []
    while chosen.sum() < min(max_size, n):
        candidates = np.flatnonzero(~chosen)
        masks = np.repeat(chosen[None], len(candidates), axis=0)
        masks[np.arange(len(candidates)), candidates] = True
        scores = score_subsets(oof, masks, metric)
        all_masks.append(masks)
        all_scores.append(scores)
        if scores.max() <= best:
            break
        best = scores.max()
        chosen = masks[int(np.argmax(scores))]
    return np.concatenate(all_masks), np.concatenate(all_scores)


def select_ensemble(oof: OOFSet, max_size: int | None = None, limit: int = EXHAUSTIVE_LIMIT,
                    metric: str = "lwlrap") -> Selection:
    """Score subsets of ``oof.names`` of at most ``max_size`` experiments (default: all) by the
    blend's OOF ``metric`` (a name of ``freesound.metrics.METRICS``).

    Exhaustive while ``count_subsets(E, max_size) <= limit``, else greedy forward selection.
    """
    n = len(oof.names)
    max_size = n if max_size is None else max_size
    if max_size < 1:
        raise FreesoundError(f"the largest subset must hold at least one experiment, got {max_size}")
    if count_subsets(n, max_size) <= limit:
        method, masks = "exhaustive", enumerate_subsets(n, max_size)
        scores = score_subsets(oof, masks, metric)
    else:
        method = "greedy"
        masks, scores = greedy_selection(oof, max_size, metric)
    order = np.argsort(-scores, kind="stable")
    return Selection(oof.names, masks[order], scores[order], method, metric)


def format_selection(selection: Selection, top: int = 10) -> str:
    """The top subsets as a text table, then the best blend against the best single experiment."""
    table, metric = selection.table(top), selection.metric
    lines = [f"{selection.method} selection over {len(selection.names)} experiments: "
             f"{len(selection.scores)} subsets scored by blend OOF {metric}",
             f"  {'rank':>4}  {'size':>4}  {metric:>7}  experiments"]
    lines += [f"  {rank:>4}  {size:>4}  {score:7.4f}  {experiments}"
              for rank, size, score, experiments in table.itertuples(index=False)]
    single_name, single_score = max(selection.single_scores().items(), key=lambda item: item[1])
    lines.append(f"best single experiment: {single_name} {single_score:.4f}; best blend: "
                 f"{SEPARATOR.join(selection.best)} {selection.best_score:.4f} "
                 f"({selection.best_score - single_score:+.4f})")
    return "\n".join(lines)


def write_ensemble_file(path, experiments, stackers=(), header: str = "") -> Path:
    """Write an ensemble file atomically; refuses to replace a TOML file that is not an ensemble."""
    path = Path(path)
    if path.suffix != ".toml":
        raise FreesoundError(f"{path}: an ensemble file must end in .toml")
    if path.is_file():
        try:
            is_ensemble = is_ensemble_file(path)
        except ConfigError:
            is_ensemble = False
        if not is_ensemble:
            raise FreesoundError(f"{path} exists and is not an ensemble file; choose another output path")
    atomic_write_text(path, dump_ensemble(experiments, stackers, header))
    return path


def save_selection(selection: Selection, out, *, stackers=(StackerConfig(),), top: int = 10) -> dict:
    """Write the best subset as an ensemble file, the table as CSV and the top subsets as a PNG.

    Parameters
    ----------
    selection : the scored subsets
    out : path of the ensemble file (``.toml``); the table goes beside it as
        ``<stem>.selection.csv`` (every scored subset) and ``<stem>.selection.png`` (the ``top``)
    stackers : ``StackerConfig`` tables to write into the ensemble file (none: a plain blend)

    Returns
    -------
    dict with the ``ensemble``, ``csv`` and ``png`` paths
    """
    out = Path(out)
    header = (f"Selected by `freesound select-ensemble` ({selection.method}, {len(selection.scores)} subsets of "
              f"{', '.join(selection.names)}):\nblend OOF {selection.metric} {selection.best_score:.4f}.")
    paths = {"ensemble": write_ensemble_file(out, selection.best, stackers, header)}
    paths["csv"] = out.with_suffix(".selection.csv")
    atomic_write_csv(paths["csv"], selection.table(), index=False)
    paths["png"] = plot_selection(selection.table(top), out.with_suffix(".selection.png"),
                                  f"{out.stem}: top subsets by blend OOF {selection.metric} ({selection.method})")
    return paths
