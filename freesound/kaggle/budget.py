"""The kernel's time budget: cheaper plans, the cost model that projects them, and the choice.

A *plan* says how much of the ensemble predicts the clips still to come: the tile step, how many
folds of each experiment run, which experiments run, and whether the stackers do. ``plan_ladder``
lists plans from the full ensemble down to the cheapest, in the order that gives up the least
first:

1. **a larger tile step** (64, then 128, then 256 frames): neighbouring tiles at step 64 overlap
   by 75 %, so their predictions are strongly correlated and a clip's mean over half or a quarter
   of them moves little; clips of up to 256 frames (~4 s) keep their one tile, so this saves most
   on long clips. (The winners predicted at step 64; we know of no measurement of the loss.)
2. **fewer folds of every experiment** (all, then one fewer, ... down to one): folds are the same
   model trained on 80 % of the same data, near duplicates whose geometric mean smooths but adds
   no new view.
3. **fewer experiments**, the lowest-ranked first (by out-of-fold lwlrap when the manifest has it,
   else the last in the ensemble's order), down to one: experiments differ in model, loss or seed,
   which is what a blend gains from, so they go last. The stackers go with the first experiment
   dropped: they read every experiment's probabilities.

The kernel measures, after a first part of the clips, how many seconds one *unit* costs (one tile
through one fold model, per experiment, in tiles of that experiment's length; a step longer than
an experiment's tile is its tile; a whole-clip model's pass counts the clip's frames in tiles)
and how many seconds a clip costs besides (decoding not hidden behind the model, stackers,
bookkeeping), projects each plan on the tiles the clips to come will give (their widths from
their file sizes, ``expected_widths``), and keeps the first plan of the ladder that fits the
time left (``choose_plan``). A kernel with windows (BirdCLEF) predicts each window as a clip of
its own, so there a window is what the projections count as a clip.
Everything here is a pure function of numbers; ``freesound.kaggle.runtime`` does the measuring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from freesound.predict.tiles import TILE, tile_layout

#: The tile steps the ladder tries, in order; 64 is the method's.
TILE_STEPS = (64, 128, 256)
#: Kaggle's limits for this competition's kernels (DESIGN.md: 1 h on a GPU, 4 h on a CPU), and
#: the default budgets under them. The margin (10 min of the GPU's hour, 30 min of the CPU's 4 h)
#: covers what the kernel's clock does not see (starting the image and Python, unpacking the
#: package, importing torch) and a slow spell after the last projection.
KAGGLE_LIMIT_SECONDS = {"cuda": 3600.0, "cpu": 4 * 3600.0}
DEFAULT_BUDGET_SECONDS = {"cuda": 3000.0, "cpu": 12600.0}
#: Kaggle targets other than this competition's (``build-kernel --target``): ``cpu4`` is BirdCLEF's
#: (2025: 90 minutes, CPU only, 4 cores, about 600 one-minute test soundscapes in Ogg Vorbis, i.e.
#: 10 h of audio). Its budget leaves 10 minutes for what the kernel's clock does not see, as above;
#: an estimate measured here is scaled to its cores (``scale_to_cores``).
TARGETS = {
    "cpu4": {"device": "cpu", "cores": 4, "limit_seconds": 5400.0, "budget_seconds": 4800.0, "clips": 600,
             "hours": 10.0, "audio_format": "ogg"},
}
#: A plan is chosen only when its projection leaves this fraction of the time left unused.
HEADROOM = 0.05
#: The next chunk is predicted only when this multiple of its projected time is left: a chunk can
#: run slower than the mean of those before it (other processes sharing the CPU), and the rows it
#: would leave out cost less than an overrun, which disqualifies the submission.
CHUNK_SAFETY = 1.5
#: The first projection comes after this fraction of the clips (and at least one chunk).
FIRST_PART = 0.01


@dataclass(frozen=True)
class Plan:
    """How much of the ensemble runs.

    Attributes
    ----------
    tile_step : int, frames between tile starts
    folds : tuple of (experiment, number of folds), the experiments that run, in ensemble order
    stackers : bool, whether the stackers run (only with every experiment)
    """

    tile_step: int
    folds: tuple
    stackers: bool

    def describe(self, full: "Plan") -> str:
        """``tile step 128, 3 of 5 folds, experiments a, b (c dropped), no stackers``."""
        totals = dict(full.folds)
        kept = [name for name, _ in self.folds]
        fold_counts = sorted({(n, totals[name]) for name, n in self.folds})
        folds = ", ".join(f"{n} of {total} folds" if n < total else f"all {total} folds" for n, total in fold_counts)
        dropped = [name for name in totals if name not in kept]
        experiments = ", ".join(kept) + (f" ({', '.join(dropped)} dropped)" if dropped else "")
        stackers = "" if not full.stackers else (", stackers" if self.stackers else ", no stackers")
        return f"tile step {self.tile_step}, {folds}, experiments {experiments}{stackers}"


def plan_ladder(folds: dict, stackers: bool, *, tile_step: int = 64, ranking=None, steps=TILE_STEPS) -> list:
    """Every plan from the full ensemble to the cheapest, in the order of the module docstring.

    Parameters
    ----------
    folds : dict experiment -> number of fold models, in ensemble order
    stackers : bool, whether the ensemble has stackers
    tile_step : int, the full plan's step
    ranking : list of experiment names, best first, optional; default the ensemble order
    steps : the tile steps tried; those not above ``tile_step`` are skipped

    Returns
    -------
    list of Plan, the full ensemble first; each plan costs no more than the one before
    """
    order = list(folds)
    ranked = [name for name in (ranking or []) if name in folds]
    ranked += [name for name in order if name not in ranked]
    step = tile_step
    ladder = [Plan(step, tuple(folds.items()), stackers)]
    for larger in (s for s in steps if s > tile_step):
        step = larger
        ladder.append(Plan(step, tuple(folds.items()), stackers))
    for count in range(max(folds.values()) - 1, 0, -1):
        ladder.append(Plan(step, tuple((name, min(n, count)) for name, n in folds.items()), stackers))
    for keep in range(len(order) - 1, 0, -1):
        kept = set(ranked[:keep])
        ladder.append(Plan(step, tuple((name, 1) for name in order if name in kept), False))
    return ladder


def mean_tiles(widths, step: int, tile: int = TILE, whole_clip: bool = False) -> float:
    """The mean number of tiles of ``tile`` frames per clip at ``step`` (at most ``tile``: the
    step the ``Tagger`` takes) over clips of ``widths`` frames.

    A whole-clip model (``[input] whole_clip``) makes one pass over a clip's frames, padded to at
    least one tile: it counts as ``max(width, tile) / tile`` tiles, since a convolutional
    network's cost grows with its input's frames.
    """
    widths = np.asarray(widths, dtype=np.int64)
    if widths.size == 0:
        raise ValueError("no clip widths to project from")
    if whole_clip:
        return float(np.mean(np.maximum(widths, tile))) / tile
    return float(np.mean([tile_layout(int(width), min(step, tile), tile)[0] for width in widths]))


def expected_widths(widths, sizes, coming_sizes) -> np.ndarray:
    """The log-mel widths (frames) of clips not decoded yet, from their files' sizes.

    A test set's files share a format (FSDKaggle2019's are all 16-bit 44.1 kHz wav), so frames are
    about proportional to bytes: ``coming_sizes x sum(widths) / sum(sizes)`` over the clips decoded
    so far, at least one frame. A reading of the file sizes costs a few milliseconds a thousand
    files and follows the clips to come however ``sample_submission.csv`` is ordered.

    Parameters
    ----------
    widths, sizes : the decoded clips' widths (frames) and file sizes (bytes)
    coming_sizes : the file sizes (bytes) of the clips to come; 0 for a file that cannot be read

    Returns
    -------
    np.ndarray of int64, one width per coming clip
    """
    total_bytes = float(np.sum(sizes))
    coming = np.asarray(coming_sizes, dtype=np.float64)
    if total_bytes <= 0:  # nothing to scale by: the clips seen stand for the ones to come
        return np.resize(np.asarray(widths, dtype=np.int64), coming.size)
    return np.maximum(1, np.rint(coming * float(np.sum(widths)) / total_bytes)).astype(np.int64)


def plan_units(plan: Plan, widths, inputs: dict | None = None) -> dict:
    """Units (one tile through one fold model) per clip of each experiment of ``plan``, for clips
    like ``widths``: experiment -> float. ``inputs`` maps an experiment to its
    ``freesound.config.InputConfig`` (its ``tile_frames`` and ``whole_clip``; default, and for
    experiments it leaves out, the method's 256-frame tiles)."""
    inputs = inputs or {}
    layouts = {name: (inputs[name].tile_frames, inputs[name].whole_clip) if name in inputs else (TILE, False)
               for name, _ in plan.folds}
    counts = {layout: mean_tiles(widths, plan.tile_step, *layout) for layout in set(layouts.values())}
    return {name: counts[layouts[name]] * n for name, n in plan.folds}


def project_seconds(plan: Plan, widths, clips: int, seconds_per_unit: dict, seconds_per_clip: float,
                    inputs: dict | None = None) -> float:
    """Seconds ``clips`` more clips like ``widths`` take under ``plan``.

    ``clips x (seconds_per_clip + sum over experiments of units per clip x seconds_per_unit)``.

    Parameters
    ----------
    seconds_per_unit : dict experiment -> seconds one tile takes through one of its fold models
    seconds_per_clip : float, the seconds of a clip besides the models
    inputs : dict experiment -> InputConfig, as for ``plan_units``
    """
    per_clip = seconds_per_clip + sum(units * seconds_per_unit[name]
                                      for name, units in plan_units(plan, widths, inputs).items())
    return clips * per_clip


def choose_plan(ladder: list, current: int, seconds_left: float, widths, clips: int, seconds_per_unit: dict,
                seconds_per_clip: float, headroom: float = HEADROOM, inputs: dict | None = None) -> tuple:
    """The first plan from ``ladder[current]`` on whose projection fits ``seconds_left``
    (``inputs``: each experiment's InputConfig, as for ``plan_units``).

    Plans before ``current`` are not considered, so a run only ever gets cheaper.

    Returns
    -------
    (index into ``ladder``, projected seconds): the last plan (and its projection) when none fits
    """
    projections = []
    for index in range(current, len(ladder)):
        projected = project_seconds(ladder[index], widths, clips, seconds_per_unit, seconds_per_clip, inputs)
        if projected <= (1.0 - headroom) * seconds_left:
            return index, projected
        projections.append(projected)
    return len(ladder) - 1, projections[-1]


def budget_seconds(time_limit, device_type: str) -> float:
    """The kernel's budget: ``time_limit`` (seconds, or a dict device type -> seconds) for the
    device it runs on, else ``DEFAULT_BUDGET_SECONDS`` (a device other than CUDA counts as CPU).

    Raises
    ------
    ValueError
        A budget that is not a positive number.
    """
    kind = "cuda" if device_type == "cuda" else "cpu"
    if time_limit is None:
        seconds = DEFAULT_BUDGET_SECONDS[kind]
    elif isinstance(time_limit, dict):
        seconds = time_limit.get(kind, DEFAULT_BUDGET_SECONDS[kind])
    else:
        seconds = time_limit
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds < math.inf:
        raise ValueError(f"a time limit must be a finite, positive number of seconds, got {seconds!r}")
    return float(seconds)


def scale_to_cores(seconds: float, cores_here: int, target_cores: int) -> float:
    """Seconds measured on ``cores_here`` cores as they would be on ``target_cores``, assuming the
    work divides evenly between cores (torch's intra-op threads, the decoding workers): an
    optimistic bound for more cores, as memory bandwidth and clock speeds differ between machines.

    Raises
    ------
    ValueError
        A core count below 1.
    """
    if cores_here < 1 or target_cores < 1:
        raise ValueError(f"core counts must be at least 1, got {cores_here} and {target_cores}")
    return seconds * cores_here / target_cores
