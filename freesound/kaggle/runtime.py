"""The Kaggle kernel runtime: what a built kernel script calls once it has unpacked the package.

A kernel (see ``kernel_build``) embeds this package and a *manifest*: a JSON-able dict holding the
ensemble spec (``freesound.predict.ensemble``), every weight file's path relative to the weights dataset
with its size and sha256, each experiment's resolved config and the package version. At run
time, under a root that is ``/kaggle`` unless ``FREESOUND_KAGGLE_ROOT`` names another:

- the competition data is read from ``<root>/input/freesound-audio-tagging-2019/``;
- each weight is looked up below every ``<root>/input/*/`` folder and up to two levels deeper
  (``kaggle datasets create --dir-mode zip`` may serve a tree one level deeper than uploaded)
  and its sha256 is checked;
- before anything else, one tiny convolution checks that torch can drive the GPU; if it cannot,
  one warning names the GPU and the architectures torch supports and the kernel uses the CPU;
- every row of ``sample_submission.csv`` is predicted in its order by ``EnsemblePredictor``, the
  same code path as local ``freesound predict``; undecodable clips are predicted from silence
  and listed, so the submission is always complete;
- ``<root>/working/submission.csv`` is written atomically, and nothing else is left there.

Only what a Kaggle Python image has is imported: numpy, pandas, scipy, torch, librosa, soundfile
and this package (never click, jinja2 or tqdm). Before importing this module, the kernel script
prints the versions of those packages and stops, naming the package, on an image older than the
minimums of ``freesound.versions`` (``kernel_report``).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import freesound
from freesound.data.dataset import read_csv
from freesound.errors import FreesoundError, one_line_warnings
from freesound.fileio import atomic_write_csv, file_sha256
from freesound.predict import EnsemblePredictor
from freesound.predict.device import describe_device, device_problem
from freesound.predict.tagger import check_precision
from freesound.settings import default_device, default_workers, kaggle_root

COMPETITION = "freesound-audio-tagging-2019"
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


def read_sample_submission(competition_dir: Path) -> pd.DataFrame:
    """``sample_submission.csv``: ``fname`` then one column per class, in submission order."""
    path = competition_dir / "sample_submission.csv"
    if not path.is_file():
        raise FreesoundError(f"{path} not found: attach the {COMPETITION} competition data to the kernel")
    sample = read_csv(path)
    if sample.columns[0] != "fname":
        raise FreesoundError(f"{path}: the first column must be fname, found {sample.columns[0]!r}")
    if sample.empty:
        raise FreesoundError(f"{path} has no rows to predict")
    return sample


def to_submission(predictions: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """Predictions in the exact shape of ``sample``: its rows, its columns, in its order."""
    classes = list(sample.columns[1:])
    if set(classes) != set(predictions.columns):
        missing = sorted(set(classes) - set(predictions.columns))
        extra = sorted(set(predictions.columns) - set(classes))
        raise FreesoundError(
            f"the models' classes do not match sample_submission.csv: missing {missing}, not in the file {extra}"
        )
    if list(predictions.index) != list(sample["fname"]):
        raise FreesoundError("the predictions do not follow the rows of sample_submission.csv")
    return predictions[classes].reset_index()


def predict_in_chunks(predictor: EnsemblePredictor, paths: list, chunk_size: int, log) -> tuple:
    """``predict_files`` over consecutive chunks, logging progress after each one.

    Clips are predicted independently, so chunking changes nothing but the progress lines.

    Returns
    -------
    (DataFrame indexed by fname in the order of ``paths``, list of (fname, reason))
    """
    frames, failures, start = [], [], time.perf_counter()
    for begin in range(0, len(paths), chunk_size):
        chunk = paths[begin:begin + chunk_size]
        frames.append(predictor.predict_files(chunk, on_error="silence", failures=failures))
        log(f"  {begin + len(chunk)}/{len(paths)} clips, {time.perf_counter() - start:.1f} s")
    return pd.concat(frames), failures


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
               chunk_size: int = 1024, precision: str | None = None, log=_print) -> dict:
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
    chunk_size : int, clips between progress lines
    log : callable taking one line

    Returns
    -------
    dict with ``name``, ``clips``, ``failures`` (list of (fname, reason)), ``seconds``, ``device``,
    ``submission`` (path), ``weights`` (folders the weights came from), ``package`` (the
    ``freesound.__file__`` that ran) and ``version``.
    """
    start = time.perf_counter()
    check_manifest(manifest)
    # Normalised so the log and the summary name folders without '..'.
    root = Path(os.path.abspath(root if root is not None else kaggle_root()))
    precision = check_precision(precision or manifest.get("precision", "fp16"))
    spec = manifest["spec"]
    log(f"freesound {freesound.__version__} kernel {spec['name']!r} (package {Path(freesound.__file__).parent})")
    device = usable_device(torch.device(device or default_device()), log)

    competition_dir = root / "input" / COMPETITION
    sample = read_sample_submission(competition_dir)
    weights = locate_weights(manifest["weights"], weight_folders(root / "input"))
    # The folders the relative paths hang from: the weights dataset as Kaggle served it.
    used = sorted({str(path.parents[len(Path(rel).parts) - 1]) for rel, path in weights.items()})
    total_mb = sum(weight["bytes"] for weight in manifest["weights"]) / 1e6
    log(f"weights: {len(weights)} files, {total_mb:.1f} MB, sha256 verified, from {', '.join(used)}")
    log(f"device: {describe_device(device)}{f', {precision}' if device.type == 'cuda' else ''}")

    predictor = EnsemblePredictor.from_spec(spec, weights.__getitem__, device=device, batch_size=batch_size,
                                            workers=default_workers() if workers is None else workers,
                                            precision=precision)
    paths = [competition_dir / "test" / fname for fname in sample["fname"]]
    log(f"predicting {len(paths)} clips from {competition_dir / 'test'}")
    predictions, failures = predict_in_chunks(predictor, paths, chunk_size, log)

    submission_path = root / "working" / SUBMISSION
    atomic_write_csv(submission_path, to_submission(predictions, sample), index=False)
    summary = {
        "name": spec["name"], "clips": len(paths), "failures": failures,
        "seconds": round(time.perf_counter() - start, 1), "device": describe_device(device),
        "submission": str(submission_path), "weights": used, "package": freesound.__file__,
        "version": freesound.__version__,
    }
    log_summary(summary, log)
    return summary


def log_summary(summary: dict, log) -> None:
    log(f"wrote {summary['submission']}: {summary['clips']} clips in {summary['seconds']} s on {summary['device']}")
    log(f"undecodable clips (predicted from silence): {len(summary['failures'])}")
    for fname, reason in summary["failures"]:
        log(f"  {fname}: {reason}")


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
