"""A synthetic replica of a real FSDKaggle2019 metadata folder (``freesound synth DIR --like META``).

The replica has the real file names, label sets (so the class frequencies), clip counts and row
order of each part; only the audio is synthetic (``synth``'s class signatures and recording
conditions), with clip lengths drawn from each part's real range and multiplied by
``duration_scale``. ``META`` is the folder of the dataset's public metadata::

    META/train_curated.csv  META/train_noisy.csv   fname,labels
    META/test_post_competition.csv                 fname,labels,usage,... (the test part, in this order)
    META/vocabulary.csv                            index,class (no header): the class order

The replica is written to a staging folder ``.DIR.partial`` beside ``DIR`` and renamed into place
when complete. Every clip is written atomically, and the staging folder survives an
interruption: a rerun with the same arguments keeps the clips already there (the output is
deterministic, so they are exactly what it would write) and makes only the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data.dataset import DatasetError, parse_labels, read_csv
from freesound.data.synth import (
    MANIFEST, SAMPLE_RATE, SPLITS, ClipPlan, SynthError, _check_replaceable, _generator, check_like_arguments,
    render_clip, twin_signatures, wav_bytes,
)
from freesound.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_text
from freesound.progress import progress_bar

#: Bumped whenever the same arguments render a different replica.
LIKE_VERSION = 1
#: The metadata files a ``--like`` folder holds, by part.
META_FILES = {"train_curated": "train_curated.csv", "train_noisy": "train_noisy.csv",
              "test": "test_post_competition.csv"}
VOCABULARY = "vocabulary.csv"
#: Clip lengths of each part, seconds: (shortest, longest, mean). From the FSDKaggle2019 release
#: (Fonseca et al., "Audio tagging with noisy labels and minimal supervision", DCASE 2019):
#: curated 4,970 clips of 0.3-30 s, 10.5 h in all; noisy 19,815 clips of 1-15 s, about 80 h,
#: most of them 15 s; test 4,481 clips of 0.3-30 s, 12.9 h.
DURATIONS_S = {
    "train_curated": (0.3, 30.0, 10.5 * 3600 / 4970),
    "train_noisy": (1.0, 15.0, 80.0 * 3600 / 19815),
    "test": (0.3, 30.0, 12.9 * 3600 / 4481),
}
# A stream key of its own (synth uses 0-2), so a replica's plans never share draws with synth's.
_LIKE_PLAN = 3


@dataclass(frozen=True)
class Reference:
    """A real metadata folder, read: ``classes`` in vocabulary order, and per part a frame of
    ``fname`` (str) and ``labels`` (tuple of str) in the file's row order."""

    root: Path
    classes: tuple
    parts: dict

    def counts(self) -> dict:
        return {split: len(frame) for split, frame in self.parts.items()}


def read_vocabulary(path) -> tuple:
    """The class names of a ``vocabulary.csv`` (``index,name`` rows, no header), in index order."""
    path = Path(path)
    frame = read_csv(path, header=None, names=["index", "name"], dtype={"index": int, "name": str})
    if frame.empty or list(frame["index"]) != list(range(len(frame))):
        raise DatasetError(f"{path}: expected rows 'index,class' numbered 0, 1, 2, ... in order")
    return tuple(frame["name"])


def read_reference(meta_dir) -> Reference:
    """Read a metadata folder (see the module docstring); every label is checked against the vocabulary.

    Raises
    ------
    DatasetError
        Naming the file and row of a missing file, column, unknown label or repeated name.
    """
    root = Path(meta_dir)
    if not root.is_dir():
        raise DatasetError(f"metadata folder {root} does not exist")
    classes = read_vocabulary(root / VOCABULARY)
    parts, seen = {}, {}
    for split, name in META_FILES.items():
        path = root / name
        frame = read_csv(path, dtype=str, keep_default_na=False)
        if not {"fname", "labels"} <= set(frame.columns):
            raise DatasetError(f"{path}: expected columns 'fname,labels', got {list(frame.columns)[:4]}")
        labels = [parse_labels(text, classes, where=f"{path}, row {row + 2} ({fname})")
                  for row, (fname, text) in enumerate(zip(frame.fname, frame.labels))]
        for row, fname in enumerate(frame.fname):
            # The name becomes a file under OUT/<part>/: a path would write elsewhere.
            if not isinstance(fname, str) or fname in ("", ".", "..") or Path(fname).name != fname \
                    or "\\" in fname:
                raise DatasetError(f"{path}, row {row + 2}: fname {fname!r} is not a plain file name")
            if fname in seen:
                raise DatasetError(f"{path}: fname {fname!r} appears more than once (also in {seen[fname]})")
            seen[fname] = name
        parts[split] = pd.DataFrame({"fname": frame.fname.tolist(), "labels": labels})
    return Reference(root, classes, parts)


def sample_duration(split: str, rng: np.random.Generator) -> float:
    """One clip length of ``split``, seconds, in its real range with its real mean (``DURATIONS_S``).

    Noisy: 15 s with the probability that brings the mean to the real one, else uniform over
    1-15 s. Curated and test: the range's low end plus its width times a Beta(1, b) draw, with b
    set so that the mean is the real one (short clips commoner than long ones).
    """
    low, high, mean = DURATIONS_S[split]
    if split == "train_noisy":
        p_full = (mean - (low + high) / 2) / (high - (low + high) / 2)
        return high if rng.random() < p_full else float(rng.uniform(low, high))
    fraction = (mean - low) / (high - low)
    return float(low + (high - low) * rng.beta(1.0, 1.0 / fraction - 1.0))


def plan_like(reference: Reference, duration_scale: float, seed: int) -> tuple:
    """Every clip of the replica: real name and labels, a drawn duration times ``duration_scale``.

    Clip ``j`` of a part draws from its own stream ``(seed, 3, part, j)``. Returns a tuple of
    ``synth.ClipPlan`` (``labels`` and ``given`` both the real label set) in part then row order.
    """
    index = {name: i for i, name in enumerate(reference.classes)}
    plans = []
    for split_id, split in enumerate(SPLITS):
        frame = reference.parts[split]
        for row, (fname, labels) in enumerate(zip(frame.fname, frame.labels)):
            rng = _generator(seed, _LIKE_PLAN, split_id, row)
            duration = sample_duration(split, rng) * duration_scale
            classes = tuple(sorted(index[label] for label in labels))
            plans.append(ClipPlan(split, row, fname, duration, classes, classes))
    return tuple(plans)


def _metadata_hash(meta_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in (VOCABULARY, *META_FILES.values()):
        digest.update((meta_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def like_manifest(meta_dir, *, duration_scale: float, seed: int) -> dict:
    """What a replica records in ``DIR/.synth.json``: equal manifests, byte-identical replicas."""
    return {"generator": "freesound.data.synth_like", "version": LIKE_VERSION,
            "metadata_sha256": _metadata_hash(Path(meta_dir)), "duration_scale": duration_scale, "seed": seed}


def _write_tables(root: Path, reference: Reference) -> None:
    """The layout's CSVs, rows in the real files' order; the vocabulary order is the column order."""
    def labels_frame(split):
        frame = reference.parts[split]
        return pd.DataFrame({"fname": frame.fname, "labels": [",".join(labels) for labels in frame.labels]})

    atomic_write_csv(root / "train_curated.csv", labels_frame("train_curated"))
    atomic_write_csv(root / "train_noisy.csv", labels_frame("train_noisy"))
    test = labels_frame("test")
    atomic_write_csv(root / "test_labels.csv", test)
    submission = pd.DataFrame(0, index=range(len(test)), columns=list(reference.classes))
    submission.insert(0, "fname", test.fname)
    atomic_write_csv(root / "sample_submission.csv", submission)


def _write_like_clip(plan: ClipPlan, signatures: tuple, seed: int, staging: Path) -> None:
    """Render one clip and write its wav atomically (top level, so worker processes can run it)."""
    rng = _generator(seed, _LIKE_PLAN + 1, SPLITS.index(plan.split), plan.index)
    order = rng.permutation(plan.labels)  # which class is loudest is not always the lowest index
    audio = render_clip([signatures[c] for c in order], plan.duration_s, rng, shifted=plan.split == "train_noisy")
    atomic_write_bytes(staging / plan.split / plan.fname, wav_bytes(audio))


@dataclass(frozen=True)
class LikeSummary:
    """What ``synthesize_like`` wrote: clips per part, how many this run rendered, audio seconds."""

    root: Path
    counts: dict
    rendered: int
    seconds: float

    def __str__(self) -> str:
        parts = ", ".join(f"{count} {split}" for split, count in self.counts.items())
        return f"{parts} clips ({self.seconds / 3600:.2f} h of audio; {self.rendered} rendered now) to {self.root}"


def synthesize_like(out_dir, meta_dir, *, duration_scale: float = 1.0, seed: int = 0, workers: int = 1,
                    progress: bool = True) -> LikeSummary:
    """Write a replica of the metadata folder ``meta_dir`` to ``out_dir`` (see the module docstring).

    Parameters
    ----------
    out_dir : path; replaced only if empty or an earlier synth output
    meta_dir : path of the real metadata (``train_curated.csv``, ``train_noisy.csv``,
        ``test_post_competition.csv``, ``vocabulary.csv``)
    duration_scale : > 0, multiplies every clip length (0.1: about 10 h of audio for the real metadata)
    seed : int >= 0
    workers : processes rendering clips
    progress : show a progress bar on stderr

    Raises
    ------
    SynthError
        A bad argument, or an ``out_dir`` synth must not replace.
    DatasetError
        A metadata file that is missing or malformed, named with its row.
    """
    check_like_arguments(duration_scale, seed)
    out_dir, meta_dir = Path(out_dir), Path(meta_dir)
    _check_replaceable(out_dir)
    reference = read_reference(meta_dir)
    manifest = like_manifest(meta_dir, duration_scale=duration_scale, seed=seed)
    plans = plan_like(reference, duration_scale, seed)
    seconds = sum(max(round(p.duration_s * SAMPLE_RATE), 1) / SAMPLE_RATE for p in plans)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if (out_dir / MANIFEST).is_file() and (out_dir / MANIFEST).read_text() == text:
        return LikeSummary(out_dir, reference.counts(), 0, seconds)

    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.is_dir() and not ((staging / "partial.json").is_file()
                                 and (staging / "partial.json").read_text() == text):
        shutil.rmtree(staging)  # an interrupted run with other arguments: nothing to keep
    for split in SPLITS:
        (staging / split).mkdir(parents=True, exist_ok=True)
    atomic_write_text(staging / "partial.json", text)
    todo = [plan for plan in plans if not (staging / plan.split / plan.fname).is_file()]
    write = partial(_write_like_clip, signatures=twin_signatures(len(reference.classes), seed), seed=seed,
                    staging=staging)
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        written = pool.map(write, todo, chunksize=8) if pool else map(write, todo)
        for _ in progress_bar(written, total=len(plans), initial=len(plans) - len(todo), desc="synth --like",
                              unit="clip", enabled=progress):
            pass
    _write_tables(staging, reference)
    os.replace(staging / "partial.json", staging / MANIFEST)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return LikeSummary(out_dir, reference.counts(), len(todo), seconds)


def sample_reference(meta_dir, out_dir, counts: dict, seed: int = 0, include=()) -> Path:
    """Write a smaller metadata folder: ``counts[part]`` rows of each part drawn at random (kept in
    the real order, with the real names and labels) and the whole vocabulary.

    For a quick replica of the real metadata (tests, benchmarks). A count above a part's size
    keeps the whole part; rows whose fname is in ``include`` are kept on top of the drawn ones
    (e.g. clips a corrections file names).
    """
    meta_dir, out_dir = Path(meta_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, name in META_FILES.items():
        frame = read_csv(meta_dir / name, dtype=str, keep_default_na=False)
        drawn = np.zeros(len(frame), dtype=bool)
        drawn[rng.choice(len(frame), min(counts[split], len(frame)), replace=False)] = True
        atomic_write_csv(out_dir / name, frame[drawn | frame.fname.isin(set(include)).to_numpy()])
    shutil.copyfile(meta_dir / VOCABULARY, out_dir / VOCABULARY)
    return out_dir
