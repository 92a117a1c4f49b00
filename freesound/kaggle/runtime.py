"""The Kaggle kernel runtime: what a built kernel script calls once it has unpacked the package.

A kernel (see ``kernel_build``) embeds this package and a *manifest*: a JSON-able dict holding the
ensemble spec (``freesound.predict.ensemble``), every weight file's path relative to the weights dataset
with its size and sha256, each experiment's resolved config and the package version. At run
time, under a root that is ``/kaggle`` unless ``FREESOUND_KAGGLE_ROOT`` names another:

- the competition data is read from ``<root>/input/<competition>/``, the test audio from its
  ``<test dir>/`` (the manifest's ``competition``: by default ``freesound-audio-tagging-2019`` and
  ``test``; ``build-kernel --competition --test-dir``);
- each weight is looked up below every ``<root>/input/*/`` folder and up to two levels deeper
  (``kaggle datasets create --dir-mode zip`` may serve a tree one level deeper than uploaded)
  and its sha256 is checked;
- the optional packages the ensemble's models import (the manifest's ``packages``: timm for a
  timm model) are attached from wheels in ``<root>/input/*/`` when the image lacks them, and their
  versions checked and logged (``freesound.kaggle.wheels.require_packages``); one sentence says
  what is missing and how to attach it;
- then one tiny convolution checks that torch can drive the GPU; if it cannot,
  one warning names the GPU and the architectures torch supports and the kernel uses the CPU;
- every row of ``sample_submission.csv`` is predicted in its order by ``EnsemblePredictor``, the
  same code path as local ``freesound predict``; undecodable clips are predicted from silence
  and listed, so the submission is always complete; truncated clips (fewer frames decode than
  their header states) are predicted from what decodes, with a warning, and listed;
- within a time budget (the manifest's ``time_limit``, else ``freesound.kaggle.budget``'s default
  for the device): after a first part of the clips the kernel projects the whole run and, when
  the projection is over budget, goes on with a cheaper plan it names (``predict_within_budget``);
  the plans used and the projection are in the summary;
- on a CPU the models run in ONNX Runtime (or OpenVINO) when the image has it or its wheels are
  attached as a dataset (``freesound.kaggle.wheels``), else in torch;
- with the manifest's ``windows`` (``build-kernel --windows SECONDS``) the kernel writes BirdCLEF's
  rows instead: ``sample_submission.csv`` starts with ``row_id`` (``<soundscape>_<end second>``);
  each soundscape it names is decoded once per audio config, untrimmed, predicted per window
  (``EnsemblePredictor.predict_windows``, then the manifest's smoothing and rescaling:
  ``predict_windows_within_budget``, under the same budget and cheaper plans, each window counted
  as a clip), and the rows are written in the sample's order; rows no window gave (a missing or
  undecodable soundscape, a run out of time) get the prediction of a silent window and are listed;
- ``<root>/working/submission.csv`` is written atomically, and nothing else is left there.

Only what a Kaggle Python image has is imported: numpy, pandas, scipy, torch, librosa, soundfile
and this package (never click, jinja2 or tqdm). Before importing this module, the kernel script
prints the versions of those packages and stops, naming the package, on an image older than the
minimums of ``freesound.versions`` (``kernel_report``).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import freesound
from freesound.data.dataset import read_csv
from freesound.errors import FreesoundError, one_line_warnings
from freesound.fileio import atomic_write_csv, file_sha256
from freesound.kaggle.budget import (
    CHUNK_SAFETY, FIRST_PART, KAGGLE_LIMIT_SECONDS, budget_seconds, choose_plan, expected_widths, plan_ladder,
    plan_units, project_seconds,
)
from freesound.kaggle.wheels import kernel_runtime, require_packages
from freesound.predict import EnsemblePredictor, WindowSpec, window_row_ids, window_widths
from freesound.predict.device import describe_device, device_problem
from freesound.predict.files import CHUNK_CLIPS, iter_logmel_chunks, silent_front_end
from freesound.predict.postprocess import postprocess_file
from freesound.predict.tagger import check_precision
from freesound.settings import default_device, default_workers, kaggle_root

#: The competition folder under ``<root>/input/`` and its test audio folder, unless the manifest's
#: ``competition`` names others (``build-kernel --competition --test-dir``).
COMPETITION = "freesound-audio-tagging-2019"
TEST_DIR = "test"
MANIFEST_FORMAT = 1
SUBMISSION = "submission.csv"
# Folders below each <root>/input/*/ folder that may hold the weights tree.
SEARCH_DEPTH = 2

_print = functools.partial(print, flush=True)  # kernel logs are not a terminal: flush each line


def weight_folders(input_dir) -> list:
    """Every folder a weights tree may hang from: each ``input_dir/*/`` and up to two levels below.

    Returns
    -------
    list of Path, shallowest first, sorted within a level
    """
    level = sorted(path for path in Path(input_dir).glob("*") if path.is_dir())
    folders = list(level)
    for _ in range(SEARCH_DEPTH):
        level = sorted(child for folder in level for child in folder.glob("*") if child.is_dir())
        folders += level
    return folders


def locate_weights(weights: list, folders: list) -> dict:
    """Find every manifest weight below ``folders`` and check its size and sha256.

    Each file is resolved on its own (zip dir-mode may nest each experiment differently); the
    first copy whose sha256 matches wins, so a stale dataset attached beside a fresh one is skipped.

    Parameters
    ----------
    weights : list of dict with ``path`` (relative, POSIX), ``bytes`` and ``sha256``
    folders : list of Path, searched in order

    Returns
    -------
    dict relative path -> Path

    Raises
    ------
    FreesoundError
        A file is found nowhere, or no copy of it has the expected sha256; the message names the
        file, the expected and found hashes and the folders searched.
    """
    found, problems = {}, []
    for weight in weights:
        copies = [folder / weight["path"] for folder in folders if (folder / weight["path"]).is_file()]
        match = next((copy for copy in copies if _matches(copy, weight)), None)
        if match is not None:
            found[weight["path"]] = match
        elif not copies:
            problems.append(f"{weight['path']} is missing")
        else:
            seen = ", ".join(f"{copy} has sha256 {file_sha256(copy)}" for copy in copies)
            problems.append(f"{weight['path']}: sha256 mismatch, expected {weight['sha256']}, found: {seen}")
    if problems:
        searched = ", ".join(str(folder) for folder in folders) or "none (no input folders)"
        raise FreesoundError(
            f"weights check failed: {'; '.join(problems)}. Folders searched: {searched}. Attach the weights "
            "dataset this kernel was built with, or rebuild the kernel for the dataset you attached."
        )
    return found


def _matches(path: Path, weight: dict) -> bool:
    # The size check is free and rules out most wrong files before hashing.
    return path.stat().st_size == weight["bytes"] and file_sha256(path) == weight["sha256"]


def check_manifest(manifest: dict) -> None:
    """Refuse a manifest this runtime cannot read, in one sentence."""
    if manifest.get("format") != MANIFEST_FORMAT:
        raise FreesoundError(
            f"this kernel's manifest has format {manifest.get('format')!r}, the embedded freesound "
            f"{freesound.__version__} reads format {MANIFEST_FORMAT}; rebuild the kernel"
        )


def read_sample_submission(competition_dir: Path, key: str = "fname") -> pd.DataFrame:
    """``sample_submission.csv``: ``key`` (``fname``, or ``row_id`` for windows) then one column
    per class, in submission order."""
    path = competition_dir / "sample_submission.csv"
    if not path.is_file():
        raise FreesoundError(f"{path} not found: attach the {competition_dir.name} competition data to the kernel")
    sample = read_csv(path)
    if sample.columns[0] != key:
        raise FreesoundError(f"{path}: the first column must be {key}, found {sample.columns[0]!r}")
    if sample.empty:
        raise FreesoundError(f"{path} has no rows to predict")
    return sample


def sample_classes(predictions: pd.DataFrame, sample: pd.DataFrame) -> list:
    """``sample``'s class columns (all after its first), which must be ``predictions``' columns.

    Raises
    ------
    FreesoundError
        The two hold other classes (both differences named).
    """
    classes = list(sample.columns[1:])
    if set(classes) != set(predictions.columns):
        missing = sorted(set(classes) - set(predictions.columns))
        extra = sorted(set(predictions.columns) - set(classes))
        raise FreesoundError(
            f"the models' classes do not match sample_submission.csv: missing {missing}, not in the file {extra}"
        )
    return classes


def to_submission(predictions: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """Predictions in the exact shape of ``sample``: its rows, its columns, in its order."""
    classes = sample_classes(predictions, sample)
    if list(predictions.index) != list(sample["fname"]):
        raise FreesoundError("the predictions do not follow the rows of sample_submission.csv")
    return predictions[classes].reset_index()


def predict_in_chunks(predictor: EnsemblePredictor, paths: list, chunk_size: int, log) -> tuple:
    """Every clip of ``paths`` with the full ensemble, with no time budget (``predict_within_budget``
    with an unlimited one).

    Returns
    -------
    (DataFrame indexed by fname in the order of ``paths``, list of (fname, reason))
    """
    result = predict_within_budget(predictor, paths, budget=math.inf, chunk_size=chunk_size, log=log)
    return result.predictions, result.failures


def _s(seconds: float) -> str:
    """Seconds for a log line: whole seconds from 100 s up, tenths below."""
    return f"{seconds:.0f} s" if seconds >= 100 else f"{seconds:.1f} s"


def file_bytes(path) -> int:
    """A file's size in bytes, 0 if it cannot be read (its decoding will say why)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@dataclass
class BudgetedPrediction:
    """What ``predict_within_budget`` or ``predict_windows_within_budget`` did.

    Attributes
    ----------
    predictions : DataFrame indexed by fname (every path's row in order), or by row_id (the
        windows of the soundscapes predicted)
    failures : list of (fname, reason), clips predicted from silence
    plans : list of (plan description, clips predicted with it), in the order used
    projection : dict or None: the first projection (``after_clips``, ``full_seconds``: the whole
        run's projected time with the full ensemble, ``plan``, ``projected_seconds``: with the plan
        chosen then) and the last (``final_plan``, ``final_projected_seconds``)
    filled : list of fname, files no plan had time for: clips given the mean of the predicted
        rows, or soundscapes left out (their rows are filled by ``to_window_submission``)
    truncated : list of (fname, warning message), clips that decode fewer frames than their
        header states, predicted from the audio that decodes
    """

    predictions: pd.DataFrame
    failures: list
    plans: list
    projection: dict | None
    filled: list
    truncated: list


class PlanKeeper:
    """One kernel run's time budget: measures what the chunks predicted so far cost, projects every
    plan of ``plan_ladder`` over the files to come (``choose_plan``), and hands out the predictor
    of the plan that fits for each chunk, or None when even the cheapest plan has no time for it.

    The projections count *items*: clips, or with windows each file's windows, each predicted as
    a clip of its own (``expand`` maps the widths of files to those of their items).

    Parameters
    ----------
    predictor : EnsemblePredictor, the full ensemble
    sizes : every file's size in bytes, in the order they are predicted (``file_bytes``)
    budget, start, clock : seconds, the ``clock`` reading they count from, a zero-argument callable
    chunk_size : files per chunk; the first projection comes after ``FIRST_PART`` of the files and
        at least one chunk
    ranking : experiment names, best first, for dropping experiments (``plan_ladder``)
    expand : callable list of widths -> list of widths; default the files themselves
    noun, fill : the files' name and what becomes of the files left out, for the log
    """

    def __init__(self, predictor: EnsemblePredictor, sizes: list, *, budget: float, start: float, clock,
                 chunk_size: int, ranking=None, expand=list, noun: str = "clips",
                 fill: str = "rows get the mean prediction", log=_print):
        self.predictor, self.sizes, self.budget, self.start, self.clock = predictor, sizes, budget, start, clock
        self.expand, self.noun, self.fill, self.log = expand, noun, fill, log
        self.full_folds = {name: len(tagger.models) for name, tagger in predictor.taggers.items()}
        self.inputs = {name: tagger.input_config for name, tagger in predictor.taggers.items()}
        step = next(iter(predictor.taggers.values())).tile_step
        self.ladder = plan_ladder(self.full_folds, bool(predictor.stackers), tile_step=step, ranking=ranking)
        self.first_part = max(chunk_size, math.ceil(FIRST_PART * len(sizes)))
        self.current, self.runner, self.projection = 0, predictor, None
        self.file_widths, self.items, self.usage = [], 0, []
        self.model_seconds, self.units = {}, dict.fromkeys(self.full_folds, 0.0)
        self.loop_start = clock()

    def runner_for(self, widths: list):
        """The predictor for the next chunk, files of ``widths`` log-mel frames; None when even
        the cheapest plan would not finish it in time (``CHUNK_SAFETY``)."""
        if not self.file_widths or not math.isfinite(self.budget):
            return self.runner
        clock, done = self.clock, len(self.file_widths)
        seconds_per_unit = {name: self.model_seconds[name] / units for name, units in self.units.items() if units}
        seconds_per_item = max(0.0, clock() - self.loop_start - sum(self.model_seconds.values())) / self.items
        seconds_left = self.budget - (clock() - self.start)
        project = functools.partial(project_seconds, seconds_per_unit=seconds_per_unit,
                                    seconds_per_clip=seconds_per_item, inputs=self.inputs)
        if done >= self.first_part:
            coming = self.expand(expected_widths(self.file_widths, self.sizes[:done], self.sizes[done:]))
            index, projected = choose_plan(self.ladder, self.current, seconds_left, coming, len(coming),
                                           seconds_per_unit, seconds_per_item, inputs=self.inputs)
            elapsed = clock() - self.start
            if self.projection is None:
                full_seconds = elapsed + project(self.ladder[0], coming, len(coming))
                self.projection = {"after_clips": done, "full_seconds": round(full_seconds, 1),
                                   "plan": self.describe(index), "projected_seconds": round(elapsed + projected, 1)}
                self.log(f"projection after {done} of {len(self.sizes)} {self.noun}: the full ensemble would take "
                         f"{_s(full_seconds)} in all, budget {_s(self.budget)}")
            if index != self.current:
                plan = self.ladder[index]
                self.current, self.runner = index, self.predictor.subset(dict(plan.folds), plan.tile_step,
                                                                         plan.stackers)
                self.log(f"switching to plan {index} of {len(self.ladder) - 1}: {self.describe(index)} "
                         f"(projected {_s(elapsed + projected)} in all)")
            self.projection.update(final_plan=self.describe(self.current),
                                   final_projected_seconds=round(elapsed + projected, 1))
        items = self.expand(widths)
        needed = project(self.ladder[self.current], items, len(items))
        if needed * CHUNK_SAFETY > seconds_left:
            self.log(f"warning: {_s(seconds_left)} left, the next {len(widths)} {self.noun} need about {_s(needed)} "
                     f"even with plan {self.current}: the last {len(self.sizes) - done} {self.fill}")
            return None
        return self.runner

    def record(self, widths: list) -> None:
        """Count a chunk of files of ``widths`` frames that the current plan predicted."""
        plan, items = self.ladder[self.current], self.expand(widths)
        for name, units in plan_units(plan, items, self.inputs).items():
            self.units[name] += units * len(items)
        if not self.usage or self.usage[-1][0] != self.current:
            self.usage.append([self.current, 0])
        self.usage[-1][1] += len(widths)
        self.file_widths += widths
        self.items += len(items)

    def describe(self, index: int) -> str:
        return self.ladder[index].describe(self.ladder[0])

    @property
    def plans(self) -> list:
        """(plan description, files predicted with it), in the order used."""
        return [(self.describe(index), files) for index, files in self.usage]


def report_progress(done: int, total: int, noun: str, seconds: float, next_report: float, log) -> float:
    """Log ``done/total`` at each tenth of the run; returns the next fraction to report at."""
    if done >= next_report * total or done == total:
        log(f"  {done}/{total} {noun}, {seconds:.1f} s")
        return math.floor(10 * done / total + 1) / 10
    return next_report


def predict_within_budget(predictor: EnsemblePredictor, paths: list, *, budget: float, start: float | None = None,
                          clock=time.perf_counter, chunk_size: int = CHUNK_CLIPS, ranking=None,
                          log=_print) -> BudgetedPrediction:
    """Predict every clip of ``paths`` so that the run ends within ``budget`` seconds of ``start``.

    Clips stream in chunks (``iter_logmel_chunks``: the next chunks decode while the model runs).
    After a first part (``freesound.kaggle.budget.FIRST_PART``) and after every chunk from then
    on, the measured cost projects each plan of ``plan_ladder`` over the clips left, and the
    first that fits the time left predicts the next chunk (a run only gets cheaper; ``PlanKeeper``).
    Should even the cheapest plan not have time for the next chunk, the rows left get the mean of
    the rows predicted (listed in ``filled``), so the submission is complete in time. Undecodable
    clips are predicted from silence.

    Parameters
    ----------
    predictor : EnsemblePredictor, the full ensemble
    paths : list of paths, in submission order
    budget : float, seconds (``math.inf``: predict everything with the full ensemble)
    start : float, the ``clock`` reading the budget counts from; default now
    clock : zero-argument callable returning seconds (injectable for tests)
    chunk_size : int, clips per chunk (the granularity of the plan and of the deadline)
    ranking : list of experiment names, best first, for dropping experiments (``plan_ladder``)
    log : callable taking one line
    """
    start = clock() if start is None else start
    # One silent clip through every model first: building the inference copies, oneDNN's and
    # cuDNN's set-up are paid here and not counted in the measured cost of a clip.
    predictor.predict_spectrograms([silent_front_end(predictor.front_end)])
    keeper = PlanKeeper(predictor, [file_bytes(path) for path in paths], budget=budget, start=start, clock=clock,
                        chunk_size=chunk_size, ranking=ranking, log=log)
    names, frames, failures, truncated, next_report = [], [], [], [], 0.1
    chunks = iter_logmel_chunks(paths, predictor.front_end, on_error="silence", failures=failures,
                                truncated=truncated, workers=predictor.workers, chunk_size=chunk_size)
    for chunk_names, logmels in chunks:
        widths = first_widths(predictor, logmels)
        runner = keeper.runner_for(widths)
        if runner is None:
            break
        frames.append(runner.predict_spectrograms(logmels, timings=keeper.model_seconds, clock=clock))
        keeper.record(widths)
        names += chunk_names
        next_report = report_progress(len(names), len(paths), "clips", clock() - start, next_report, log)
    chunks.close()  # stops the decoding workers when the loop ended early
    predicted = np.concatenate(frames) if frames else np.zeros((0, len(predictor.classes)), np.float32)
    filled = [Path(path).name for path in paths[len(names):]]
    mean = predicted.mean(axis=0) if len(predicted) else np.full(len(predictor.classes), 0.5, np.float32)
    probabilities = np.concatenate([predicted, np.tile(mean.astype(np.float32), (len(filled), 1))])
    frame = pd.DataFrame(probabilities, index=pd.Index(names + filled, name="fname"), columns=predictor.classes)
    return BudgetedPrediction(frame, failures, keeper.plans, keeper.projection, filled, truncated)


def first_widths(predictor: EnsemblePredictor, logmels: list) -> list:
    """The widths (frames) of a chunk's log-mels under the first experiment's audio config, which
    stand for every experiment's (configs that differ in n_mels alone give the same widths)."""
    return [logmel.shape[1] for logmel in predictor.experiment_logmels(next(iter(predictor.taggers)), logmels)]


def soundscape_files(sample: pd.DataFrame, test_dir: Path) -> tuple[list, list]:
    """The soundscapes ``sample``'s ``row_id`` column names (``<stem>_<end second>``), in order of
    first appearance, as ``(paths, names)``: each stem's file in ``test_dir`` (any extension; a
    stem without one keeps a path that does not exist, so that its decoding fails and is listed)
    and that file's name."""
    stems = list(dict.fromkeys(sample["row_id"].astype(str).str.rsplit("_", n=1).str[0]))
    files = {path.stem: path for path in sorted(test_dir.iterdir()) if path.is_file()} if test_dir.is_dir() else {}
    paths = [files.get(stem, test_dir / stem) for stem in stems]
    return paths, [path.name for path in paths]


def to_window_submission(predictions: pd.DataFrame, sample: pd.DataFrame, fill: np.ndarray) -> tuple:
    """Window predictions in the exact shape of ``sample`` (its ``row_id`` rows, its class columns,
    in its order); rows that no window gave get ``fill`` (the classes' probabilities in
    ``predictions``' column order).

    Returns
    -------
    (DataFrame, list of the filled row ids)
    """
    classes = sample_classes(predictions, sample)
    ordered = predictions.reindex(pd.Index(sample["row_id"].astype(str), name="row_id"))
    filled = ordered.index[ordered.isna().any(axis=1)]
    ordered.loc[filled] = np.asarray(fill, dtype=np.float32)[None, :]
    return ordered[classes].astype(np.float32).reset_index(), list(filled)


def predict_windows_within_budget(predictor: EnsemblePredictor, paths: list, names: list, windows: dict, *,
                                  budget: float, start: float | None = None, clock=time.perf_counter,
                                  chunk_size: int = CHUNK_CLIPS, ranking=None, log=_print) -> BudgetedPrediction:
    """Every soundscape of ``paths`` window by window, as local ``freesound predict --windows``
    does (``EnsemblePredictor.predict_windows``, then ``postprocess_file``), within the budget.

    Soundscapes stream in chunks, decoded untrimmed (``iter_logmel_chunks(trim=False)``);
    undecodable ones are predicted from silence. The budget works as in ``predict_within_budget``
    with each window counted as a clip (``PlanKeeper``): a run projected over budget goes on with
    a cheaper plan, and when even the cheapest has no time for the next chunk the soundscapes
    left are left out (listed in ``filled``; ``to_window_submission`` fills their rows).

    Parameters
    ----------
    windows : dict with ``seconds``, ``hop``, ``combine``, ``smooth`` and ``file_rescale`` (the
        manifest's ``windows``)
    names : each path's file name (row ids are ``<stem>_<end second>``)
    budget, start, clock, chunk_size, ranking, log : as for ``predict_within_budget``

    Returns
    -------
    BudgetedPrediction, its predictions indexed by row_id
    """
    start = clock() if start is None else start
    spec = WindowSpec(windows["seconds"], windows["hop"])
    combine, smooth, rescale = windows.get("combine", "gmean"), windows.get("smooth"), windows.get("file_rescale")
    config = next(iter(predictor.taggers.values())).audio_config
    # One silent window through every model first, as for clips.
    predictor.predict_windows([silent_front_end(predictor.front_end)], spec, combine)
    keeper = PlanKeeper(predictor, [file_bytes(path) for path in paths], budget=budget, start=start, clock=clock,
                        chunk_size=chunk_size, ranking=ranking, noun="soundscapes",
                        expand=functools.partial(window_widths, spec=spec, config=config),
                        fill="get the silent window's prediction", log=log)
    rows, frames, failures, truncated, done, next_report = [], [], [], [], 0, 0.1
    chunks = iter_logmel_chunks(paths, predictor.front_end, on_error="silence", failures=failures,
                                truncated=truncated, workers=predictor.workers, chunk_size=chunk_size, names=names,
                                trim=False)
    for chunk_names, logmels in chunks:
        widths = first_widths(predictor, logmels)
        runner = keeper.runner_for(widths)
        if runner is None:
            break
        probabilities, bounds = runner.predict_windows(logmels, spec, combine, timings=keeper.model_seconds,
                                                       clock=clock)
        keeper.record(widths)
        for name, file_probs, file_bounds in zip(chunk_names, probabilities, bounds):
            rows += window_row_ids(name, file_bounds)
            frames.append(postprocess_file(file_probs, smooth, rescale))
        done += len(chunk_names)
        next_report = report_progress(done, len(paths), "soundscapes", clock() - start, next_report, log)
    chunks.close()  # stops the decoding workers when the loop ended early
    probabilities = np.concatenate(frames) if frames else np.zeros((0, len(predictor.classes)), np.float32)
    frame = pd.DataFrame(probabilities, index=pd.Index(rows, name="row_id"), columns=predictor.classes)
    return BudgetedPrediction(frame, failures, keeper.plans, keeper.projection, names[done:], truncated)


def usable_device(device: torch.device, log) -> torch.device:
    """``device`` if one tiny convolution runs there (``freesound.predict.device``); else the
    CPU, after one ``warning:`` line naming the device and the architectures torch supports (a
    GPU the installed torch build cannot drive, such as a P100 under a build without sm_60)."""
    problem = device_problem(device) if device.type != "cpu" else None
    if problem is None:
        return device
    log(f"warning: {problem}; predicting on the CPU instead")
    return torch.device("cpu")


def run_kernel(manifest: dict, root=None, *, device=None, workers: int | None = None, batch_size: int = 64,
               chunk_size: int = CHUNK_CLIPS, precision: str | None = None, time_limit=None,
               runtime: str | None = None, clock=time.perf_counter, log=_print) -> dict:
    """Predict the competition's test set with the manifest's ensemble and write the submission.

    Parameters
    ----------
    manifest : dict, as embedded by ``kernel_build``
    root : path-like, the Kaggle root; default ``freesound.settings.kaggle_root()``
    device : str or torch.device; default CUDA when available; a GPU that torch cannot drive falls
        back to the CPU (``usable_device``)
    precision : "fp16" or "fp32", the arithmetic on CUDA (``freesound.predict.Tagger``); default
        the manifest's ``precision`` (what ``build-kernel --precision`` chose), else fp16
    workers : int, audio-decoding processes; default every CPU this process may use
    batch_size : int, tiles per forward pass
    chunk_size : int, clips predicted together (the granularity of the time budget)
    time_limit : float seconds, or dict device type -> seconds; default the manifest's
        ``time_limit`` (what ``build-kernel --time-limit`` chose), else
        ``freesound.kaggle.budget.DEFAULT_BUDGET_SECONDS`` for the device; the run counts from
        this call (``predict_within_budget``)
    runtime : what runs the models on a CPU (``freesound.predict.Tagger``); default an ONNX runtime
        that is installed or attached as wheels (``freesound.kaggle.wheels.kernel_runtime``), else
        torch
    clock : zero-argument callable returning seconds (injectable for tests)
    log : callable taking one line

    Returns
    -------
    dict with ``name``, ``clips``, ``failures`` (list of (fname, reason)), ``seconds``, ``device``,
    ``submission`` (path), ``weights`` (folders the weights came from), ``package`` (the
    ``freesound.__file__`` that ran), ``version``, ``time_limit`` (the budget, seconds),
    ``plans``, ``projection``, ``filled`` and ``truncated`` (``BudgetedPrediction``).
    """
    start = clock()
    check_manifest(manifest)
    # Normalised so the log and the summary name folders without '..'.
    root = Path(os.path.abspath(root if root is not None else kaggle_root()))
    precision = check_precision(precision or manifest.get("precision", "fp16"))
    spec = manifest["spec"]
    log(f"freesound {freesound.__version__} kernel {spec['name']!r} (package {Path(freesound.__file__).parent})")
    require_packages(manifest.get("packages", []), root / "input", log)
    device = usable_device(torch.device(device or default_device()), log)

    competition = {"name": COMPETITION, "test_dir": TEST_DIR, **manifest.get("competition", {})}
    competition_dir = root / "input" / competition["name"]
    windows = manifest.get("windows")
    sample = read_sample_submission(competition_dir, "row_id" if windows else "fname")
    weights = locate_weights(manifest["weights"], weight_folders(root / "input"))
    # The folders the relative paths hang from: the weights dataset as Kaggle served it.
    used = sorted({str(path.parents[len(Path(rel).parts) - 1]) for rel, path in weights.items()})
    total_mb = sum(weight["bytes"] for weight in manifest["weights"]) / 1e6
    log(f"weights: {len(weights)} files, {total_mb:.1f} MB, sha256 verified, from {', '.join(used)}")
    log(f"device: {describe_device(device)}{f', {precision}' if device.type == 'cuda' else ''}")
    budget = budget_seconds(time_limit if time_limit is not None else manifest.get("time_limit"), device.type)
    limit = manifest.get("limit_seconds", KAGGLE_LIMIT_SECONDS["cuda" if device.type == "cuda" else "cpu"])
    log(f"time budget: {_s(budget)} (Kaggle's limit on this device: {_s(limit)})")

    if runtime is None:
        runtime = kernel_runtime(root / "input", log) if device.type == "cpu" else "torch"
    predictor = EnsemblePredictor.from_spec(spec, weights.__getitem__, device=device, batch_size=batch_size,
                                            workers=default_workers() if workers is None else workers,
                                            precision=precision, runtime=runtime)
    test_dir = competition_dir / competition["test_dir"]
    submission_path = root / "working" / SUBMISSION
    if windows:
        return _run_windows(predictor, sample, test_dir, windows, submission_path, budget=budget, start=start,
                            clock=clock, chunk_size=chunk_size, ranking=manifest.get("ranking"), log=log,
                            summary={"name": spec["name"], "device": describe_device(device), "weights": used})
    paths = [test_dir / fname for fname in sample["fname"]]
    log(f"predicting {len(paths)} clips from {test_dir}")
    result = predict_within_budget(predictor, paths, budget=budget, start=start, clock=clock, chunk_size=chunk_size,
                                   ranking=manifest.get("ranking"), log=log)

    atomic_write_csv(submission_path, to_submission(result.predictions, sample), index=False)
    summary = {
        "name": spec["name"], "clips": len(paths), "failures": result.failures,
        "seconds": round(clock() - start, 1), "device": describe_device(device),
        "submission": str(submission_path), "weights": used, "package": freesound.__file__,
        "version": freesound.__version__, "time_limit": budget, "plans": result.plans,
        "projection": result.projection, "filled": result.filled, "truncated": result.truncated,
    }
    log_summary(summary, log)
    return summary


def _run_windows(predictor: EnsemblePredictor, sample: pd.DataFrame, test_dir: Path, windows: dict, submission_path,
                 *, budget: float, start: float, clock, chunk_size: int, ranking, log, summary: dict) -> dict:
    """``run_kernel``'s window mode: BirdCLEF's rows, in the sample's order; returns the summary
    (``run_kernel``'s keys; ``clips`` counts soundscapes, ``rows`` the rows, ``filled`` the row
    ids given the silent window's prediction)."""
    paths, names = soundscape_files(sample, test_dir)
    log(f"predicting {len(sample)} rows of {len(paths)} soundscapes from {test_dir}, windows of "
        f"{windows['seconds']:g} s every {windows['hop']:g} s")
    result = predict_windows_within_budget(predictor, paths, names, windows, budget=budget, start=start, clock=clock,
                                           chunk_size=chunk_size, ranking=ranking, log=log)
    spec = WindowSpec(windows["seconds"], windows["hop"])
    silent, _ = predictor.predict_windows([silent_front_end(predictor.front_end)], spec, windows.get("combine", "gmean"))
    # Post-processed as a soundscape of one window is, so a filled row equals an undecodable one's.
    fill = postprocess_file(silent[0], windows.get("smooth"), windows.get("file_rescale"))[0]
    submission, filled = to_window_submission(result.predictions, sample, fill)
    atomic_write_csv(submission_path, submission, index=False)
    summary.update({
        "clips": len(paths), "rows": len(submission), "failures": result.failures,
        "seconds": round(clock() - start, 1), "submission": str(submission_path), "package": freesound.__file__,
        "version": freesound.__version__, "time_limit": budget, "plans": result.plans,
        "projection": result.projection, "filled": filled, "truncated": result.truncated, "left_out": result.filled,
    })
    log_summary(summary, log)
    return summary


def log_summary(summary: dict, log) -> None:
    what = (f"{summary['rows']} rows of {summary['clips']} soundscapes" if "rows" in summary
            else f"{summary['clips']} clips")
    log(f"wrote {summary['submission']}: {what} in {summary['seconds']} s on {summary['device']} "
        f"(budget {_s(summary['time_limit'])})")
    projection, noun = summary["projection"], "soundscapes" if "rows" in summary else "clips"
    if projection is not None:
        log(f"projection after {projection['after_clips']} {noun}: full ensemble {_s(projection['full_seconds'])}, "
            f"chosen plan {_s(projection['projected_seconds'])}; last projection "
            f"{_s(projection['final_projected_seconds'])}")
    for description, clips in summary["plans"]:
        log(f"plan: {description}: {clips} {noun}")
    if "rows" in summary:
        if summary["left_out"]:
            log(f"out of time: {len(summary['left_out'])} soundscapes not predicted")
        if summary["filled"]:
            log(f"{len(summary['filled'])} rows no window gave, given the silent window's prediction: "
                f"{', '.join(summary['filled'][:5])}{', ...' if len(summary['filled']) > 5 else ''}")
    elif summary["filled"]:
        log(f"out of time: {len(summary['filled'])} clips given the mean prediction")
    log(f"undecodable {noun} (predicted from silence): {len(summary['failures'])}")
    for fname, reason in summary["failures"]:
        log(f"  {fname}: {reason}")
    if summary["truncated"]:
        log(f"truncated {noun} (predicted from the audio that decodes): {len(summary['truncated'])}")
    for fname, message in summary["truncated"]:
        log(f"  {fname}: {message}")


def main(manifest: dict) -> dict:
    """The kernel script's entry point: ``run_kernel`` with a one-sentence error and exit status 1.

    Undecodable clips do not fail the run: the submission is complete and they are listed. A
    ``FreesoundWarning`` (a cropped clip) is one ``warning:`` line, as in the CLI.
    """
    try:
        with one_line_warnings(lambda line: print(line, file=sys.stderr, flush=True)):
            return run_kernel(manifest)
    except FreesoundError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
