"""The on-disk log-mel cache.

Layout under the work directory::

    features/<dataset>-<path hash>/<AudioConfig.key()>/<split>/<fname>.<file identity>.npy

The audio config's hash and each audio file's identity (size and modification time) are part of
the path, so a changed config or a rewritten file never reuses a stale spectrogram. Every file is
written atomically, so an interrupted run simply resumes: whatever is already there is valid.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from freesound.audio import AudioDecodeError, read_as_melspectrogram
from freesound.config import AudioConfig
from freesound.data.dataset import SPLITS, Dataset
from freesound.errors import FreesoundError
from freesound.fileio import atomic_save_npy
from freesound.paths import features_root


@dataclass
class CacheReport:
    """What one caching run did. ``failures`` holds ``(split, fname, reason)``."""

    computed: int = 0
    cached: int = 0
    failures: list = field(default_factory=list)


def cache_root(work, data_root, config: AudioConfig) -> Path:
    """The cache folder of one dataset directory under one audio config."""
    data_root = Path(data_root).resolve()
    path_hash = hashlib.sha256(str(data_root).encode()).hexdigest()[:8]
    return features_root(work) / f"{data_root.name}-{path_hash}" / config.key()


def file_identity(audio_path) -> str:
    """A short hash of the file's size and modification time (ns)."""
    stat = os.stat(audio_path)
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]


def cached_path(split_dir: Path, audio_path) -> Path:
    return split_dir / f"{Path(audio_path).name}.{file_identity(audio_path)}.npy"


def _compute_one(audio_path: Path, target: Path, config: AudioConfig):
    """Compute one clip's log-mel into ``target``; return the failure reason or None.

    Runs in a worker process, so it writes the array itself instead of shipping it back.
    """
    try:
        logmel = read_as_melspectrogram(audio_path, config)
    except AudioDecodeError as error:
        return error.reason
    for stale in target.parent.glob(f"{audio_path.name}.*.npy"):
        stale.unlink(missing_ok=True)
    atomic_save_npy(target, logmel)
    return None


def cache_features(
    dataset: Dataset,
    work,
    config: AudioConfig | None = None,
    *,
    splits=SPLITS,
    workers: int = 1,
    progress: bool = True,
) -> CacheReport:
    """Compute and cache the log-mel of every clip in ``splits``; skip what is cached.

    Parameters
    ----------
    dataset : Dataset
    work : path, the work directory holding ``features/``
    workers : int, worker processes (1 computes in this process)

    Returns
    -------
    CacheReport; undecodable clips are listed in ``failures`` and not cached.
    """
    config = config or AudioConfig()
    root = cache_root(work, dataset.root, config)
    report = CacheReport()
    todo = []
    for split in splits:
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for audio_path in dataset.paths(split):
            if not audio_path.is_file():
                report.failures.append((split, audio_path.name, "no such file"))
                continue
            target = cached_path(split_dir, audio_path)
            if target.is_file():
                report.cached += 1
            else:
                todo.append((split, audio_path, target))
    bar = tqdm(total=len(todo), desc="log-mel features", unit="clip", disable=not progress)
    with bar:
        if workers <= 1:
            results = (_compute_one(path, target, config) for _, path, target in todo)
            _collect(todo, results, report, bar)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_compute_one, path, target, config) for _, path, target in todo]
                _collect(todo, (future.result() for future in futures), report, bar)
    return report


def _collect(todo, results, report: CacheReport, bar) -> None:
    for (split, audio_path, _), reason in zip(todo, results):
        if reason is None:
            report.computed += 1
        else:
            report.failures.append((split, audio_path.name, reason))
        bar.update()


class MissingFeaturesError(FreesoundError):
    """Features were asked for but not cached (run ``freesound features``)."""


def load_features(dataset: Dataset, work, split: str, fnames=None, config: AudioConfig | None = None) -> list:
    """Read cached log-mels for ``fnames`` (default: the whole split), in that order.

    Returns
    -------
    list of np.ndarray, float32 (n_mels, frames)

    Raises
    ------
    MissingFeaturesError
        Naming the clips with no valid cache entry (never computed, failed, or stale).
    """
    config = config or AudioConfig()
    split_dir = cache_root(work, dataset.root, config) / split
    fnames = dataset.fnames(split) if fnames is None else list(fnames)
    paths, missing = [], []
    for fname in fnames:
        audio_path = dataset.audio_dir(split) / fname
        path = cached_path(split_dir, audio_path) if audio_path.is_file() else None
        if path is None or not path.is_file():
            missing.append(fname)
        paths.append(path)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingFeaturesError(
            f"{len(missing)} {split} clip(s) have no cached features ({shown}); "
            f"run `freesound features --data {dataset.root}` first"
            + ("" if config == AudioConfig() else
               " with --experiment naming the experiment (its [audio] settings differ from the default)")
        )
    return [np.load(path) for path in paths]
