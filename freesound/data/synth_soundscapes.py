"""A synthetic dataset in the BirdCLEF layout (``freesound synth DIR --soundscapes``).

The classes are ``synth``'s procedural signatures (``twin_signatures``) under species-like codes.
Training recordings are long and weakly labelled, as BirdCLEF's are: each holds its primary class
in bursts from its first second to its end, and some hold secondary classes once, quieter, over
background noise; the test soundscapes are a minute of background with a few events of random
classes at known times. Everything is 32 kHz mono OGG Vorbis (BirdCLEF's format)::

    DIR/train.csv                 primary_label, secondary_labels ("['sp01']" or "[]"), type,
                                  latitude, longitude, scientific_name, common_name, author,
                                  license, rating, url, filename ("<class>/XC<id>.ogg")
    DIR/train_audio/<class>/      the recordings, 3-60 s (log-uniform)
    DIR/taxonomy.csv              primary_label, common_name, scientific_name, class_name
    DIR/test_soundscapes/         <stem>.ogg, 60 s each
    DIR/sample_submission.csv     row_id (<stem>_5, <stem>_10, ... <stem>_60), one 0 column per class
    DIR/solution.csv              row_id, one 0/1 column per class: the truth of each window
    DIR/test_soundscape_events.csv  soundscape, primary_label, start, end (seconds): the events
    DIR/.synth.json               the arguments (marks DIR as synth's)

A class is present in a window ``(end - 5, end]`` when one of its events overlaps the window by
at least ``MIN_OVERLAP_S``. Randomness is keyed per class, recording and soundscape as in
``synth``, and the OGG stream's serial number (which libsndfile draws at random) is fixed per
file, so the same arguments write byte-identical files.

``synthesize_birdclef_like`` replicates a real BirdCLEF metadata folder instead (``synth --like``):
its ``train.csv`` rows, class names and counts, with synthetic recordings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from freesound.audio import write_audio
from freesound.data.birdclef import (
    ROW_ID, SOUNDSCAPES, SUBMISSION_CSV, TAXONOMY_CSV, TRAIN_AUDIO, TRAIN_CSV, WINDOW_SECONDS, read_train_csv,
    window_row_ids,
)
from freesound.data.synth import (
    MANIFEST, SAMPLE_RATE, SynthError, _check_replaceable, _generator, _log_uniform, check_like_arguments,
    recording_chain, render_source, twin_signatures,
)
from freesound.progress import progress_bar

#: BirdCLEF's audio: 32 kHz (synth renders at 44.1 kHz, then resamples by 320/441).
BIRDCLEF_SAMPLE_RATE = 32000
RECORDING_SECONDS = (3.0, 60.0)
SOUNDSCAPE_SECONDS = 60
#: P(a recording has 1 or 2 secondary classes), each.
SECONDARY_P = (0.2, 0.1)
#: Events per soundscape, inclusive range; seconds per event.
EVENTS_PER_SOUNDSCAPE = (3, 6)
EVENT_SECONDS = (1.0, 4.0)
#: An event marks a window when it overlaps it by at least this many seconds.
MIN_OVERLAP_S = 0.25
SOLUTION_CSV = "solution.csv"
EVENTS_CSV = "test_soundscape_events.csv"
GENERATOR_VERSION = 1
# Stream keys of their own (synth uses 0-2, synth_like 3).
_RECORDING, _SOUNDSCAPE = 4, 5


@dataclass(frozen=True)
class Recording:
    """One training recording before it is rendered: class indices, seconds, names."""

    index: int
    primary: int
    secondary: tuple
    duration_s: float
    #: The path below ``train_audio/``: ``<class>/XC<id>.ogg``.
    filename: str
    author: str


@dataclass(frozen=True)
class Soundscape:
    """One test soundscape: its stem and events ``(class index, start s, end s)``, by start."""

    index: int
    stem: str
    events: tuple


@dataclass(frozen=True)
class SoundscapeSummary:
    """What ``synthesize_soundscapes`` wrote."""

    root: Path
    classes: tuple
    num_recordings: int
    num_soundscapes: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.num_recordings} training recordings and {self.num_soundscapes} one-minute soundscapes of "
                f"{len(self.classes)} classes ({self.seconds / 60:.1f} min of audio, BirdCLEF layout) to {self.root}")


def species_codes(num_classes: int) -> tuple:
    """Species-like class codes ``sp01``, ``sp02``, ... (BirdCLEF's are eBird codes)."""
    if not 2 <= num_classes <= 99:
        raise SynthError(f"synth --soundscapes needs between 2 and 99 classes, got {num_classes}")
    return tuple(f"sp{i + 1:02d}" for i in range(num_classes))


def plan_recordings(classes, num_recordings: int, seed: int, seconds=RECORDING_SECONDS) -> tuple:
    """Every training recording's classes, length (log-uniform over ``seconds``), file name and
    author (no audio).

    Recording ``j``'s primary class is ``j % num_classes``; about 30% have secondary classes
    (``SECONDARY_P``); authors come from a pool of about one per five recordings, so that
    ``make-folds --group-by group`` has groups to keep apart.
    """
    num_classes = len(classes)
    authors = max(2, num_recordings // 5)
    plans, ids = [], set()
    for j in range(num_recordings):
        rng = _generator(seed, _RECORDING, j)
        xc = int(rng.integers(100000, 1000000))
        while xc in ids:
            xc = int(rng.integers(100000, 1000000))
        ids.add(xc)
        primary = j % num_classes
        count = int(rng.choice(3, p=(1 - sum(SECONDARY_P), *SECONDARY_P)))
        others = np.delete(np.arange(num_classes), primary)
        secondary = tuple(sorted(int(c) for c in rng.choice(others, min(count, others.size), replace=False)))
        duration = _log_uniform(rng, *seconds)
        plans.append(Recording(j, primary, secondary, duration, f"{classes[primary]}/XC{xc}.ogg",
                               f"Author {int(rng.integers(authors)) + 1}"))
    return tuple(plans)


def plan_soundscapes(num_classes: int, num_soundscapes: int, seed: int) -> tuple:
    """Every soundscape's stem and events (no audio)."""
    plans = []
    for k in range(num_soundscapes):
        rng = _generator(seed, _SOUNDSCAPE, k)
        events = []
        for _ in range(int(rng.integers(EVENTS_PER_SOUNDSCAPE[0], EVENTS_PER_SOUNDSCAPE[1] + 1))):
            length = float(rng.uniform(*EVENT_SECONDS))
            start = float(rng.uniform(0.0, SOUNDSCAPE_SECONDS - length))
            events.append((int(rng.integers(num_classes)), round(start, 3), round(start + length, 3)))
        plans.append(Soundscape(k, f"S{k + 1:02d}_20260101_{6 + k // 60:02d}{k % 60:02d}00", tuple(sorted(
            events, key=lambda event: event[1]))))
    return tuple(plans)


def window_truth(soundscape: Soundscape, num_classes: int) -> np.ndarray:
    """(windows, num_classes) 0/1: the classes present in each 5 s window (``MIN_OVERLAP_S``)."""
    ends = np.arange(WINDOW_SECONDS, SOUNDSCAPE_SECONDS + 1, WINDOW_SECONDS, dtype=float)
    truth = np.zeros((ends.size, num_classes), dtype=np.int64)
    for cls, start, end in soundscape.events:
        overlap = np.minimum(ends, end) - np.maximum(ends - WINDOW_SECONDS, start)
        truth[overlap >= MIN_OVERLAP_S, cls] = 1
    return truth


def _place(clip: np.ndarray, source: np.ndarray, start: int, level: float) -> None:
    clip[start:start + source.size] += np.float32(level) * source


def render_recording(plan: Recording, signatures, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 at 44.1 kHz: the primary class in bursts of 1-4 s with 0.3-3 s gaps from
    within the first half second to the end, each secondary class once for 1-4 s 6-16 dB lower,
    over background noise (``recording_chain``); peak at -6..-1 dBFS."""
    n = max(int(round(plan.duration_s * SAMPLE_RATE)), 1)
    clip = np.zeros(n, dtype=np.float32)
    position = int(rng.uniform(0.0, 0.5) * SAMPLE_RATE)
    while position < n:
        length = min(int(rng.uniform(*EVENT_SECONDS) * SAMPLE_RATE), n - position)
        _place(clip, render_source(signatures[plan.primary], length, rng), position, 1.0)
        position += length + int(rng.uniform(0.3, 3.0) * SAMPLE_RATE)
    for cls in plan.secondary:
        length = min(int(rng.uniform(*EVENT_SECONDS) * SAMPLE_RATE), n)
        start = int(rng.integers(0, n - length + 1))
        _place(clip, render_source(signatures[cls], length, rng), start, 10 ** (-rng.uniform(6.0, 16.0) / 20))
    return _normalised(recording_chain(clip, slice(0, n), rng, shifted=False), rng)


def render_soundscape(plan: Soundscape, signatures, rng: np.random.Generator) -> np.ndarray:
    """(60 s,) float32 at 44.1 kHz: the events at their times, 0-12 dB apart, over background."""
    n = SOUNDSCAPE_SECONDS * SAMPLE_RATE
    clip = np.zeros(n, dtype=np.float32)
    for cls, start, end in plan.events:
        first, last = int(start * SAMPLE_RATE), min(int(end * SAMPLE_RATE), n)
        _place(clip, render_source(signatures[cls], last - first, rng), first, 10 ** (-rng.uniform(0.0, 12.0) / 20))
    return _normalised(recording_chain(clip, slice(0, n), rng, shifted=False), rng)


def _normalised(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak_db = rng.uniform(-6.0, -1.0)
    return clip * np.float32(10 ** (peak_db / 20) / max(float(np.abs(clip).max()), 1e-12))


def to_birdclef_rate(x: np.ndarray) -> np.ndarray:
    """44.1 kHz float32 to 32 kHz float32 (polyphase, 320/441)."""
    return resample_poly(x, 320, 441).astype(np.float32)


#: Each byte with its bits in reverse order (a ``bytes.translate`` table).
_BIT_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum: CRC-32 with polynomial 0x04C11DB7, not reflected, initial value 0
    and no final xor; computed by zlib's reflected CRC-32 (the same polynomial) on bit-reversed
    bytes, started at 0 and not inverted, then bit-reversed back."""
    raw = zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def with_serial(data: bytes, serial: int) -> bytes:
    """An Ogg file with every page's stream serial number set to ``serial`` (checksums redone).

    libsndfile draws the serial at random, the only byte that differs between two encodings of
    the same audio; fixing it makes synth's OGG files deterministic.
    """
    out = bytearray(data)
    position = 0
    while position < len(out):
        if out[position:position + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {position}")
        segments = out[position + 26]
        length = 27 + segments + sum(out[position + 27:position + 27 + segments])
        out[position + 14:position + 18] = serial.to_bytes(4, "little")
        out[position + 22:position + 26] = bytes(4)
        out[position + 22:position + 26] = ogg_crc(bytes(out[position:position + length])).to_bytes(4, "little")
        position += length
    return bytes(out)


def ogg_bytes(x: np.ndarray, serial: int) -> bytes:
    """A 32 kHz mono OGG Vorbis file of float32 ``x`` with a fixed stream serial, in memory."""
    buffer = io.BytesIO()
    write_audio(buffer, np.clip(x, -1.0, 1.0).astype(np.float32), BIRDCLEF_SAMPLE_RATE, "OGG", "VORBIS")
    return with_serial(buffer.getvalue(), serial)


def _serial(name: str) -> int:
    return zlib.crc32(name.encode())


def _write_recording(plan: Recording, signatures, seed: int, staging: Path) -> float:
    rng = _generator(seed, _RECORDING, plan.index, 1)
    audio = to_birdclef_rate(render_recording(plan, signatures, rng))
    path = staging / TRAIN_AUDIO / plan.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ogg_bytes(audio, _serial(plan.filename)))
    return audio.size / BIRDCLEF_SAMPLE_RATE


def _write_soundscape(plan: Soundscape, signatures, seed: int, staging: Path) -> float:
    rng = _generator(seed, _SOUNDSCAPE, plan.index, 1)
    audio = to_birdclef_rate(render_soundscape(plan, signatures, rng))
    (staging / SOUNDSCAPES / f"{plan.stem}.ogg").write_bytes(ogg_bytes(audio, _serial(plan.stem)))
    return audio.size / BIRDCLEF_SAMPLE_RATE


def _label_list(names) -> str:
    """BirdCLEF's Python-list string: ``['a', 'b']``, ``[]``."""
    return "[" + ", ".join(f"'{name}'" for name in names) + "]"


def _write_tables(root: Path, classes, recordings, soundscapes) -> None:
    taxonomy = pd.DataFrame({
        "primary_label": list(classes),
        "common_name": [f"Synthetic species {i + 1}" for i in range(len(classes))],
        "scientific_name": [f"Synthetica species{i + 1}" for i in range(len(classes))],
        "class_name": "Aves",
    })
    taxonomy.to_csv(root / TAXONOMY_CSV, index=False)
    rows = []
    for plan in recordings:
        rng = _generator(0, _RECORDING, plan.index, 2)  # place names only: independent of the audio's seed
        code = classes[plan.primary]
        rows.append({
            "primary_label": code, "secondary_labels": _label_list(classes[c] for c in plan.secondary),
            "type": "['song']", "latitude": round(float(rng.uniform(-40, 60)), 4),
            "longitude": round(float(rng.uniform(-120, 150)), 4),
            "scientific_name": taxonomy.scientific_name[plan.primary],
            "common_name": taxonomy.common_name[plan.primary],
            "author": plan.author, "license": "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
            "rating": float(rng.integers(1, 11)) / 2,
            "url": f"https://xeno-canto.org/{Path(plan.filename).stem.removeprefix('XC')}",
            "filename": plan.filename,
        })
    pd.DataFrame(rows).sort_values("filename", kind="stable").to_csv(root / TRAIN_CSV, index=False)
    row_ids = [row_id for plan in soundscapes for row_id in window_row_ids(plan.stem, SOUNDSCAPE_SECONDS)]
    truth = np.concatenate([window_truth(plan, len(classes)) for plan in soundscapes]) if soundscapes else \
        np.zeros((0, len(classes)), dtype=np.int64)
    submission = pd.DataFrame(0, index=range(len(row_ids)), columns=list(classes))
    submission.insert(0, ROW_ID, row_ids)
    submission.to_csv(root / SUBMISSION_CSV, index=False)
    solution = pd.DataFrame(truth, columns=list(classes))
    solution.insert(0, ROW_ID, row_ids)
    solution.to_csv(root / SOLUTION_CSV, index=False)
    events = pd.DataFrame([(plan.stem, classes[cls], start, end)
                           for plan in soundscapes for cls, start, end in plan.events],
                          columns=["soundscape", "primary_label", "start", "end"])
    events.to_csv(root / EVENTS_CSV, index=False)


def soundscape_manifest(*, num_classes: int, num_recordings: int, num_soundscapes: int, seed: int,
                        recording_seconds=RECORDING_SECONDS) -> dict:
    """What ``synthesize_soundscapes`` records in ``DIR/.synth.json``."""
    return {"generator": "freesound.data.synth_soundscapes", "version": GENERATOR_VERSION,
            "num_classes": num_classes, "num_recordings": num_recordings, "num_soundscapes": num_soundscapes,
            "seed": seed, "recording_seconds": list(recording_seconds)}


def synthesize_soundscapes(out_dir, *, num_classes: int = 10, num_recordings: int = 100, num_soundscapes: int = 10,
                           seed: int = 0, recording_seconds=RECORDING_SECONDS, workers: int = 1,
                           progress: bool = True) -> SoundscapeSummary:
    """Write a synthetic BirdCLEF-layout dataset to ``out_dir`` (see the module docstring).

    Built in a temporary sibling folder and renamed into place; an existing ``out_dir`` is replaced
    only if it is empty or an earlier synth output. Same arguments, byte-identical files.

    Parameters
    ----------
    num_classes : 2-99 species (``species_codes``)
    num_recordings : training recordings (at least one per class is advisable)
    num_soundscapes : one-minute test soundscapes
    recording_seconds : (shortest, longest) training recording, seconds (tests use shorter ones)
    workers : processes rendering audio (1: in this process)

    Raises
    ------
    SynthError
        A count out of range, or an ``out_dir`` synth must not replace.
    """
    classes = species_codes(num_classes)
    for name, value in (("num_recordings", num_recordings), ("num_soundscapes", num_soundscapes), ("seed", seed)):
        if value < 0:
            raise SynthError(f"synth --soundscapes needs {name} >= 0, got {value}")
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    signatures = twin_signatures(num_classes, seed)
    recordings = plan_recordings(classes, num_recordings, seed, recording_seconds)
    soundscapes = plan_soundscapes(num_classes, num_soundscapes, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "dataset"
        for code in classes:
            (staging / TRAIN_AUDIO / code).mkdir(parents=True)
        (staging / SOUNDSCAPES).mkdir()
        jobs = [partial(_write_recording, plan, signatures, seed, staging) for plan in recordings]
        jobs += [partial(_write_soundscape, plan, signatures, seed, staging) for plan in soundscapes]
        with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
            done = pool.map(_call, jobs) if pool else map(_call, jobs)
            seconds = sum(progress_bar(done, total=len(jobs), desc="synth", unit="file", enabled=progress))
        _write_tables(staging, classes, recordings, soundscapes)
        manifest = soundscape_manifest(num_classes=num_classes, num_recordings=num_recordings,
                                       num_soundscapes=num_soundscapes, seed=seed,
                                       recording_seconds=recording_seconds)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            os.replace(out_dir, Path(tmp) / "previous")
        os.replace(staging, out_dir)
    return SoundscapeSummary(out_dir, classes, num_recordings, num_soundscapes, seconds)


def _call(job):
    return job()


# --------------------------------------------------------------------------------------------------
# A replica of a real BirdCLEF metadata folder (``synth --like META`` with a BirdCLEF train.csv)

#: BirdCLEF's ``train.csv`` states no recording lengths: a replica draws each log-uniformly over
#: this range (an assumption, not a measurement), times ``duration_scale``.
LIKE_RECORDING_SECONDS = (2.0, 120.0)
LIKE_VERSION = 1
_LIKE = 6


def plan_birdclef_like(meta_dir, duration_scale: float, seed: int) -> tuple:
    """The real recordings of ``meta_dir``'s ``train.csv``: their file names, primary and
    secondary labels (in the vocabulary of ``read_vocabulary``) and authors, with drawn lengths.

    Returns
    -------
    (classes, tuple of Recording)
    """
    table, classes, _ = read_train_csv(meta_dir)
    index = {name: i for i, name in enumerate(classes)}
    plans = []
    for j, row in enumerate(table.itertuples()):
        rng = _generator(seed, _LIKE, j)
        duration = _log_uniform(rng, *LIKE_RECORDING_SECONDS) * duration_scale
        plans.append(Recording(j, index[row.primary], tuple(sorted(index[label] for label in row.secondary)),
                               duration, row.filename, row.group))
    return classes, tuple(plans)


def _files_hash(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def synthesize_birdclef_like(out_dir, meta_dir, *, duration_scale: float = 1.0, seed: int = 0, workers: int = 1,
                             progress: bool = True) -> SoundscapeSummary:
    """Write a replica of a BirdCLEF metadata folder (``train.csv``, ``taxonomy.csv``, and
    ``sample_submission.csv`` when there is one): those files as they are, and a synthetic
    recording at every ``train_audio/<filename>`` of ``train.csv``, of its primary class with its
    secondary classes quieter (``render_recording``), ``LIKE_RECORDING_SECONDS`` long times
    ``duration_scale``. No soundscapes (the real ones are hidden): ``--soundscapes`` makes some.

    Raises
    ------
    SynthError
        A bad argument, or an ``out_dir`` synth must not replace.
    DatasetError
        A malformed ``train.csv`` or ``taxonomy.csv`` (``read_train_csv``).
    """
    check_like_arguments(duration_scale, seed)
    out_dir, meta_dir = Path(out_dir), Path(meta_dir)
    _check_replaceable(out_dir)
    classes, recordings = plan_birdclef_like(meta_dir, duration_scale, seed)
    copied = [meta_dir / name for name in (TRAIN_CSV, TAXONOMY_CSV, SUBMISSION_CSV) if (meta_dir / name).is_file()]
    signatures = twin_signatures(len(classes), seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "dataset"
        (staging / TRAIN_AUDIO).mkdir(parents=True)
        jobs = [partial(_write_recording, plan, signatures, seed, staging) for plan in recordings]
        with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
            done = pool.map(_call, jobs) if pool else map(_call, jobs)
            seconds = sum(progress_bar(done, total=len(jobs), desc="synth --like", unit="file", enabled=progress))
        for path in copied:
            shutil.copyfile(path, staging / path.name)
        manifest = {"generator": "freesound.data.synth_soundscapes.like", "version": LIKE_VERSION,
                    "metadata_sha256": _files_hash(copied), "duration_scale": duration_scale, "seed": seed}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            os.replace(out_dir, Path(tmp) / "previous")
        os.replace(staging, out_dir)
    return SoundscapeSummary(out_dir, classes, len(recordings), 0, seconds)
