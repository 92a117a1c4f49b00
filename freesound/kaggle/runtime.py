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
  ``predict_windows_within_budget``), and the rows are written in the sample's order; rows no
  window gave (a missing or undecodable soundscape, a run out of time) get the prediction of a
  silent window and are listed. Only the deadline of the budget applies there, not its cheaper plans;
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
    project_seconds,
)
from freesound.kaggle.wheels import kernel_runtime, require_packages
from freesound.predict import EnsemblePredictor, WindowSpec, tile_layout, window_row_ids
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
    """What ``predict_within_budget`` did.

    Attributes
    ----------
    predictions : DataFrame indexed by fname, every path's row in order
    failures : list of (fname, reason), clips predicted from silence
    plans : list of (plan description, clips predicted with it), in the order used
    projection : dict or None: the first projection (``after_clips``, ``full_seconds``: the whole
        run's projected time with the full ensemble, ``plan``, ``projected_seconds``: with the plan
        chosen then) and the last (``final_plan``, ``final_projected_seconds``)
    filled : list of fname, rows no plan had time for, given the mean of the predicted rows
    truncated : list of (fname, warning message), clips that decode fewer frames than their
        header states, predicted from the audio that decodes
    """

    predictions: pd.DataFrame
    failures: list
    plans: list
    projection: dict | None
    filled: list
    truncated: list


def predict_within_budget(predictor: EnsemblePredictor, paths: list, *, budget: float, start: float | None = None,
                          clock=time.perf_counter, chunk_size: int = CHUNK_CLIPS, ranking=None,
                          log=_print) -> BudgetedPrediction:
    """Predict every clip of ``paths`` so that the run ends within ``budget`` seconds of ``start``.

    Clips stream in chunks (``iter_logmel_chunks``: the next chunks decode while the model runs).
    After a first part (``freesound.kaggle.budget.FIRST_PART``) and after every chunk from then
    on, the measured cost projects each plan of ``plan_ladder`` over the clips left, and the
    first that fits the time left predicts the next chunk (a run only gets cheaper). Should even
    the cheapest plan not have time for the next chunk, the rows left get the mean of the rows
    predicted (listed in ``filled``), so the submission is complete in time. Undecodable clips
    are predicted from silence.

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
    full_folds = {name: len(tagger.models) for name, tagger in predictor.taggers.items()}
    tiles = {name: tagger.input_config.tile_frames for name, tagger in predictor.taggers.items()}
    step = next(iter(predictor.taggers.values())).tile_step
    ladder = plan_ladder(full_folds, bool(predictor.stackers), tile_step=step, ranking=ranking)
    # One silent clip through every model first: building the inference copies, oneDNN's and
    # cuDNN's set-up are paid here and not counted in the measured cost of a clip.
    predictor.predict_spectrograms([silent_front_end(predictor.front_end)])
    current, runner = 0, predictor
    sizes = [file_bytes(path) for path in paths]
    first_part = max(chunk_size, math.ceil(FIRST_PART * len(paths)))
    names, frames, failures, truncated, widths, usage = [], [], [], [], [], []
    model_seconds, units = {}, dict.fromkeys(full_folds, 0.0)
    projection, next_report, loop_start = None, 0.1, clock()
    chunks = iter_logmel_chunks(paths, predictor.front_end, on_error="silence", failures=failures,
                                truncated=truncated, workers=predictor.workers, chunk_size=chunk_size)
    for chunk_names, logmels in chunks:
        # The first experiment's widths stand for every experiment's (audio configs that differ in
        # n_mels alone give the same widths).
        chunk_widths = [logmel.shape[1] for logmel in predictor.experiment_logmels(next(iter(full_folds)), logmels)]
        if widths and math.isfinite(budget):
            seconds_per_unit = {name: model_seconds[name] / units[name] for name in units if units[name]}
            seconds_per_clip = max(0.0, clock() - loop_start - sum(model_seconds.values())) / len(widths)
            seconds_left = budget - (clock() - start)
            if len(widths) >= first_part:
                coming = expected_widths(widths, sizes[:len(widths)], sizes[len(widths):])
                index, projected = choose_plan(ladder, current, seconds_left, coming, len(coming), seconds_per_unit,
                                               seconds_per_clip, tiles=tiles)
                elapsed = clock() - start
                if projection is None:
                    full_seconds = elapsed + project_seconds(ladder[0], coming, len(coming), seconds_per_unit,
                                                             seconds_per_clip, tiles)
                    projection = {"after_clips": len(widths), "full_seconds": round(full_seconds, 1),
                                  "plan": ladder[index].describe(ladder[0]),
                                  "projected_seconds": round(elapsed + projected, 1)}
                    log(f"projection after {len(widths)} of {len(paths)} clips: the full ensemble would take "
                        f"{_s(full_seconds)} in all, budget {_s(budget)}")
                if index != current:
                    current, runner = index, predictor.subset(dict(ladder[index].folds), ladder[index].tile_step,
                                                              ladder[index].stackers)
                    log(f"switching to plan {index} of {len(ladder) - 1}: {ladder[index].describe(ladder[0])} "
                        f"(projected {_s(elapsed + projected)} in all)")
                projection.update(final_plan=ladder[current].describe(ladder[0]),
                                  final_projected_seconds=round(elapsed + projected, 1))
            needed = project_seconds(ladder[current], chunk_widths, len(chunk_widths), seconds_per_unit,
                                     seconds_per_clip, tiles)
            if needed * CHUNK_SAFETY > seconds_left:
                log(f"warning: {_s(seconds_left)} left, the next {len(chunk_widths)} clips need about {_s(needed)} "
                    f"even with plan {current}: the last {len(paths) - len(widths)} rows get the mean prediction")
                break
        frames.append(runner.predict_spectrograms(logmels, timings=model_seconds, clock=clock))
        plan = ladder[current]
        for name, folds in plan.folds:
            tile = tiles[name]
            units[name] += folds * sum(tile_layout(width, min(plan.tile_step, tile), tile)[0]
                                       for width in chunk_widths)
        if not usage or usage[-1][0] != current:
            usage.append([current, 0])
        usage[-1][1] += len(chunk_names)
        names += chunk_names
        widths += chunk_widths
        if len(widths) >= next_report * len(paths) or len(widths) == len(paths):
            log(f"  {len(widths)}/{len(paths)} clips, {clock() - start:.1f} s")
            next_report = math.floor(10 * len(widths) / len(paths) + 1) / 10
    chunks.close()  # stops the decoding workers when the loop ended early
    predicted = np.concatenate(frames) if frames else np.zeros((0, len(predictor.classes)), np.float32)
    filled = [Path(path).name for path in paths[len(names):]]
    mean = predicted.mean(axis=0) if len(predicted) else np.full(len(predictor.classes), 0.5, np.float32)
    probabilities = np.concatenate([predicted, np.tile(mean.astype(np.float32), (len(filled), 1))])
    frame = pd.DataFrame(probabilities, index=pd.Index(names + filled, name="fname"), columns=predictor.classes)
    plans = [(ladder[index].describe(ladder[0]), clips) for index, clips in usage]
    return BudgetedPrediction(frame, failures, plans, projection, filled, truncated)


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
                                  chunk_size: int = CHUNK_CLIPS, log=_print) -> tuple:
    """Every soundscape of ``paths`` window by window, as local ``freesound predict --windows``
    does (``EnsemblePredictor.predict_windows``, then ``postprocess_file``), until the budget ends.

    Soundscapes stream in chunks, decoded untrimmed (``iter_logmel_chunks(trim=False)``);
    undecodable ones are predicted from silence. Before each chunk after the first, the mean time
    per soundscape so far projects the chunk; when ``CHUNK_SAFETY`` times that is more than the
    time left, the rest are left out (their rows are filled by ``to_window_submission``).

    Parameters
    ----------
    windows : dict with ``seconds``, ``hop``, ``combine``, ``smooth`` and ``file_rescale`` (the
        manifest's ``windows``)
    names : each path's file name (row ids are ``<stem>_<end second>``)

    Returns
    -------
    (DataFrame indexed by row_id, failures [(name, reason)], truncated [(name, message)],
    list of the soundscapes left out for time)
    """
    start = clock() if start is None else start
    spec = WindowSpec(windows["seconds"], windows["hop"])
    combine, smooth, rescale = windows.get("combine", "gmean"), windows.get("smooth"), windows.get("file_rescale")
    rows, frames, failures, truncated, done = [], [], [], [], 0
    loop_start, next_report = clock(), 0.1
    chunks = iter_logmel_chunks(paths, predictor.front_end, on_error="silence", failures=failures,
                                truncated=truncated, workers=predictor.workers, chunk_size=chunk_size, names=names,
                                trim=False)
    for chunk_names, logmels in chunks:
        if done and math.isfinite(budget):
            needed = (clock() - loop_start) / done * len(chunk_names)
            seconds_left = budget - (clock() - start)
            if needed * CHUNK_SAFETY > seconds_left:
                log(f"warning: {_s(seconds_left)} left, the next {len(chunk_names)} soundscapes need about "
                    f"{_s(needed)}: the last {len(paths) - done} get the silent window's prediction")
                break
        probabilities, bounds = predictor.predict_windows(logmels, spec, combine)
        for name, file_probs, file_bounds in zip(chunk_names, probabilities, bounds):
            rows += window_row_ids(name, file_bounds)
            frames.append(postprocess_file(file_probs, smooth, rescale))
        done += len(chunk_names)
        if done >= next_report * len(paths) or done == len(paths):
            log(f"  {done}/{len(paths)} soundscapes, {clock() - start:.1f} s")
            next_report = math.floor(10 * done / len(paths) + 1) / 10
    chunks.close()  # stops the decoding workers when the loop ended early
    probabilities = np.concatenate(frames) if frames else np.zeros((0, len(predictor.classes)), np.float32)
    frame = pd.DataFrame(probabilities, index=pd.Index(rows, name="row_id"), columns=predictor.classes)
    return frame, failures, truncated, names[done:]


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
    log(f"time budget: {_s(budget)} (Kaggle's limit on this device: "
        f"{_s(KAGGLE_LIMIT_SECONDS['cuda' if device.type == 'cuda' else 'cpu'])})")

    if runtime is None:
        runtime = kernel_runtime(root / "input", log) if device.type == "cpu" else "torch"
    predictor = EnsemblePredictor.from_spec(spec, weights.__getitem__, device=device, batch_size=batch_size,
                                            workers=default_workers() if workers is None else workers,
                                            precision=precision, runtime=runtime)
    test_dir = competition_dir / competition["test_dir"]
    submission_path = root / "working" / SUBMISSION
    if windows:
        return _run_windows(predictor, sample, test_dir, windows, submission_path, budget=budget, start=start,
                            clock=clock, chunk_size=chunk_size, log=log,
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
                 *, budget: float, start: float, clock, chunk_size: int, log, summary: dict) -> dict:
    """``run_kernel``'s window mode: BirdCLEF's rows, in the sample's order; returns the summary
    (``run_kernel``'s keys; ``clips`` counts soundscapes, ``rows`` the rows, ``filled`` the row
    ids given the silent window's prediction)."""
    paths, names = soundscape_files(sample, test_dir)
    log(f"predicting {len(sample)} rows of {len(paths)} soundscapes from {test_dir}, windows of "
        f"{windows['seconds']:g} s every {windows['hop']:g} s")
    frame, failures, truncated, left_out = predict_windows_within_budget(
        predictor, paths, names, windows, budget=budget, start=start, clock=clock, chunk_size=chunk_size, log=log)
    spec = WindowSpec(windows["seconds"], windows["hop"])
    silent, _ = predictor.predict_windows([silent_front_end(predictor.front_end)], spec, windows.get("combine", "gmean"))
    # Post-processed as a soundscape of one window is, so a filled row equals an undecodable one's.
    fill = postprocess_file(silent[0], windows.get("smooth"), windows.get("file_rescale"))[0]
    submission, filled = to_window_submission(frame, sample, fill)
    atomic_write_csv(submission_path, submission, index=False)
    summary.update({
        "clips": len(paths), "rows": len(submission), "failures": failures, "seconds": round(clock() - start, 1),
        "submission": str(submission_path), "package": freesound.__file__, "version": freesound.__version__,
        "time_limit": budget, "plans": [], "projection": None, "filled": filled, "truncated": truncated,
        "left_out": left_out,
    })
    log_summary(summary, log)
    return summary


def log_summary(summary: dict, log) -> None:
    what = (f"{summary['rows']} rows of {summary['clips']} soundscapes" if "rows" in summary
            else f"{summary['clips']} clips")
    log(f"wrote {summary['submission']}: {what} in {summary['seconds']} s on {summary['device']} "
        f"(budget {_s(summary['time_limit'])})")
    projection = summary["projection"]
    if projection is not None:
        log(f"projection after {projection['after_clips']} clips: full ensemble {_s(projection['full_seconds'])}, "
            f"chosen plan {_s(projection['projected_seconds'])}; last projection "
            f"{_s(projection['final_projected_seconds'])}")
    for description, clips in summary["plans"]:
        log(f"plan: {description}: {clips} clips")
    if "rows" in summary:
        if summary["left_out"]:
            log(f"out of time: {len(summary['left_out'])} soundscapes not predicted")
        if summary["filled"]:
            log(f"{len(summary['filled'])} rows no window gave, given the silent window's prediction: "
                f"{', '.join(summary['filled'][:5])}{', ...' if len(summary['filled']) > 5 else ''}")
    elif summary["filled"]:
        log(f"out of time: {len(summary['filled'])} clips given the mean prediction")
    log(f"undecodable clips (predicted from silence): {len(summary['failures'])}")
    for fname, reason in summary["failures"]:
        log(f"  {fname}: {reason}")
    if summary["truncated"]:
        log(f"truncated clips (predicted from the audio that decodes): {len(summary['truncated'])}")
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
