"""The on-disk log-mel cache.

Layout under the work directory::

    features/<dataset>-<path hash>/<AudioConfig.key()>/<split>/<fname>.<file identity>.npy

The audio config's hash and each audio file's identity (``file_identity``: its size, modification
time, and a hash of its first and last 64 KiB) are part of the path, so a changed config or a
rewritten file never reuses a stale spectrogram, even one replaced by a file of the same size and
time. Every file is written atomically, so an interrupted run simply resumes; a cache file damaged
some other way (truncated, zero bytes: ``npy_is_whole``) is computed again.

``cache_features`` computes what is missing (``freesound features`` does it up front);
``ensure_features`` does the same for a command that needs the features now (``train``,
``predict`` on a dataset) and refuses, naming every clip, when some cannot be used;
``load_features`` reads them and refuses a cached log-mel that is not finite; with ``lazy`` it
holds none of them (``LazyLogmels`` reads each on access), which training does above
``HOLD_IN_MEMORY_BYTES``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freesound.audio import AudioDecodeError, AudioTruncatedWarning, read_as_melspectrogram
from freesound.config import AudioConfig
from freesound.data.dataset import SPLITS, Dataset
from freesound.errors import FreesoundError, call_recording_warnings
from freesound.fileio import atomic_save_npy
from freesound.paths import features_root
from freesound.processes import die_with_parent
from freesound.progress import progress_bar


@dataclass
class CacheReport:
    """What one caching run did.

    ``failures`` holds ``(split, fname, reason)``; ``truncated`` holds ``(split, fname, warning
    message)`` for clips computed from a file that decodes fewer frames than its header states
    (cached from the audio that decodes); ``repaired`` holds ``(split, fname)`` for damaged cache
    files computed again.
    """

    computed: int = 0
    cached: int = 0
    failures: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    repaired: list = field(default_factory=list)


def cache_root(work, data_root, config: AudioConfig) -> Path:
    """The cache folder of one dataset directory under one audio config."""
    data_root = Path(data_root).resolve()
    path_hash = hashlib.sha256(str(data_root).encode()).hexdigest()[:8]
    return features_root(work) / f"{data_root.name}-{path_hash}" / config.key()


#: Bytes hashed at each end of an audio file for its cache identity: the header and the first and
#: last few tenths of a second, so a file replaced by another of the same size and modification
#: time gets another identity at the cost of two small reads.
IDENTITY_BLOCK_BYTES = 64 * 1024


def file_identity(audio_path) -> str:
    """A short hash of the file's size, modification time (ns), and its first and last
    ``IDENTITY_BLOCK_BYTES`` (the whole file when it is shorter than two blocks).

    The time catches an edit in the middle that keeps the size; the bytes catch a replacement
    that keeps size and time (a copy with ``cp -p``, an archive's timestamps).
    """
    digest = hashlib.sha256()
    with open(audio_path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
        digest.update(handle.read(IDENTITY_BLOCK_BYTES))
        if stat.st_size > 2 * IDENTITY_BLOCK_BYTES:
            handle.seek(-IDENTITY_BLOCK_BYTES, os.SEEK_END)
        digest.update(handle.read(IDENTITY_BLOCK_BYTES))
    return digest.hexdigest()[:10]


def npy_is_whole(path) -> bool:
    """Whether ``path`` is a readable ``.npy`` file holding every byte its header promises.

    Reads the header only: a zero-byte or truncated cache file (a copy cut short, a disk that
    filled up outside freesound) is caught without loading the array.
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
            expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            return os.fstat(handle.fileno()).st_size == expected
    except (OSError, ValueError, EOFError):
        return False


def cached_path(split_dir: Path, audio_path) -> Path:
    return split_dir / f"{Path(audio_path).name}.{file_identity(audio_path)}.npy"


def _cached_path_or_none(split_dir: Path, audio_path: Path) -> Path | None:
    """``cached_path``, or None for an audio file that is missing or cannot be read."""
    try:
        return cached_path(split_dir, audio_path)
    except OSError:
        return None


def cached_entries(split_dir: Path) -> dict:
    """The cache files in ``split_dir`` by audio file name: ``{fname: [path, ...]}``, from one
    directory listing (a listing per clip would make caching a split quadratic in its size)."""
    entries = {}
    with os.scandir(split_dir) as listing:
        for entry in listing:
            if entry.name.endswith(".npy") and not entry.name.startswith("."):
                entries.setdefault(entry.name.rsplit(".", 2)[0], []).append(Path(entry.path))
    return entries


def _compute_one(audio_path: Path, target: Path, config: AudioConfig, stale=()):
    """Compute one clip's log-mel into ``target``, then remove ``stale`` (its older cache files).

    Runs in a worker process, so it writes the array itself instead of shipping it back, and
    hands back the warnings decoding raised for the parent to show and list.

    Returns
    -------
    (failure reason or None, list of warnings)
    """
    try:
        logmel, caught = call_recording_warnings(read_as_melspectrogram, audio_path, config)
    except AudioDecodeError as error:
        return error.reason, []
    for path in stale:
        path.unlink(missing_ok=True)
    atomic_save_npy(target, logmel)
    return None, caught


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
    CacheReport; clips that cannot be used (undecodable, or a log-mel that is not finite) are
    listed in ``failures`` and not cached; truncated files are listed in ``truncated`` and cached
    from the audio that decodes (each with an ``AudioTruncatedWarning``, shown in this process);
    damaged cache files (``npy_is_whole``) are computed again and listed in ``repaired``.
    """
    config = config or AudioConfig()
    root = cache_root(work, dataset.root, config)
    report = CacheReport()
    todo = []
    for split in splits:
        if not dataset.fnames(split):  # no clips (a dataset without unlabelled ones): no folder to list
            continue
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        existing = cached_entries(split_dir)
        for audio_path in dataset.paths(split):
            if not audio_path.is_file():
                report.failures.append((split, audio_path.name, "no such file"))
                continue
            try:
                target = cached_path(split_dir, audio_path)
            except OSError as error:  # its identity reads the file
                report.failures.append((split, audio_path.name, f"cannot be read ({error.strerror})"))
                continue
            stale = [path for path in existing.get(audio_path.name, ()) if path != target]
            if len(stale) == len(existing.get(audio_path.name, ())):
                todo.append((split, audio_path, target, stale))
            elif npy_is_whole(target):
                report.cached += 1
            else:
                report.repaired.append((split, audio_path.name))
                todo.append((split, audio_path, target, stale))
    bar = progress_bar(total=len(todo), desc="log-mel features", unit="clip", enabled=progress and bool(todo))
    with bar:
        if workers <= 1:
            results = (_compute_one(path, target, config, stale) for _, path, target, stale in todo)
            _collect(todo, results, report, bar)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_compute_one, path, target, config, stale) for _, path, target, stale in todo]
                try:
                    _collect(todo, (future.result() for future in futures), report, bar)
                except BaseException:
                    # A full disk fails every clip after it: stop at the first.
                    pool.shutdown(cancel_futures=True)
                    raise
    return report


def _collect(todo, results, report: CacheReport, bar) -> None:
    for (split, audio_path, _, _), (reason, caught) in zip(todo, results):
        for warning in caught:
            warnings.warn(warning, stacklevel=2)
            if isinstance(warning, AudioTruncatedWarning):
                report.truncated.append((split, audio_path.name, str(warning)))
        if reason is None:
            report.computed += 1
        else:
            report.failures.append((split, audio_path.name, reason))
        bar.update()


class MissingFeaturesError(FreesoundError):
    """Features were asked for but not cached (run ``freesound features``)."""


class UnusableClipsError(FreesoundError):
    """Clips a command needs cannot be used (undecodable, or a log-mel that is not finite).

    ``failures`` holds ``(split, fname, reason)``; the message names each clip and its reason.
    """

    def __init__(self, failures, dataset: Dataset):
        self.failures = list(failures)
        shown = "; ".join(f"{split}/{fname}: {reason}" for split, fname, reason in self.failures[:5])
        more = f"; and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        splits = sorted({split for split, _, _ in self.failures})
        super().__init__(
            f"{len(self.failures)} clip(s) cannot be used ({shown}{more}); replace the files or remove their rows "
            f"from {', '.join(f'{split}.csv' for split in splits)} in {dataset.root}"
        )


def ensure_features(dataset: Dataset, work, config: AudioConfig | None = None, *, splits=SPLITS, workers: int = 1,
                    progress: bool = True) -> CacheReport:
    """Compute and cache whatever clips of ``splits`` are missing (``cache_features``, with its
    progress bar when there is work), for a command that needs every one of them.

    Raises
    ------
    UnusableClipsError
        Naming every clip of ``splits`` that cannot be used; the others stay cached.
    """
    report = cache_features(dataset, work, config, splits=splits, workers=workers, progress=progress)
    if report.failures:
        raise UnusableClipsError(report.failures, dataset)
    return report


class NonFiniteFeaturesError(FreesoundError):
    """A cached log-mel holds NaN or infinite values (cached by an older freesound, or damaged)."""


class DamagedFeaturesError(FreesoundError):
    """A cached log-mel file cannot be read (zero bytes, truncated, not an array)."""


def read_cached_logmel(path: Path, dataset: Dataset) -> np.ndarray:
    """One cached log-mel, float32 ``(n_mels, frames)``.

    Raises
    ------
    DamagedFeaturesError
        Naming the file and NumPy's reason, and the command that computes it again.
    """
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise DamagedFeaturesError(
            f"the cached log-mel {path} is damaged ({str(error) or type(error).__name__}); run "
            f"`freesound features --data {dataset.root}`, which computes it again"
        ) from error


#: A training run whose log-mels would take more than this many bytes reads them from the cache on
#: each access (``LazyLogmels``) instead of holding them. The real FSDKaggle2019 training clips
#: (10.5 h curated, 80 h noisy) are about 10.7 GB of float32 log-mels: too much beside torch and
#: the DataLoader on a 16 GB machine such as a Kaggle GPU notebook. The page cache still keeps
#: whatever fits, and everything smaller (every test and demo) is held as before.
HOLD_IN_MEMORY_BYTES = 6 * 2 ** 30


class LazyLogmels(Sequence):
    """Cached log-mels read from disk each time one is asked for: holds only the file paths.

    ``logmels[i]`` is the float32 ``(n_mels, frames)`` array of clip ``i``, as ``load_features``
    would return it; with ``mmap``, a read-only ``np.memmap`` of its cache file, so that cropping
    a chunk of a long recording reads only the pages of that chunk (``[train] chunk_seconds``).
    """

    def __init__(self, paths, mmap: bool = False):
        self.paths = tuple(paths)
        self.mmap_mode = "r" if mmap else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [np.load(path, mmap_mode=self.mmap_mode) for path in self.paths[index]]
        return np.load(self.paths[index], mmap_mode=self.mmap_mode)


def cache_paths(dataset: Dataset, work, split: str, fnames=None, config: AudioConfig | None = None) -> list:
    """The cache file of each of ``fnames`` (default: the whole split), in that order.

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
        path = _cached_path_or_none(split_dir, audio_path)
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
    return paths


def load_features(dataset: Dataset, work, split: str, fnames=None, config: AudioConfig | None = None, *,
                  lazy: bool = False, mmap: bool = False):
    """Read cached log-mels for ``fnames`` (default: the whole split), in that order.

    With ``lazy`` every clip is still read once, to refuse a log-mel that is not finite, but none
    is kept: the result is a ``LazyLogmels`` that reads each from disk when asked. ``mmap`` (which
    implies ``lazy``) makes that a memory map of each cache file (``LazyLogmels``).

    Returns
    -------
    list of np.ndarray, float32 (n_mels, frames); a ``LazyLogmels`` with ``lazy``

    Raises
    ------
    MissingFeaturesError
        Naming the clips with no valid cache entry (never computed, failed, or stale).
    DamagedFeaturesError
        Naming the first cache file that cannot be read (``read_cached_logmel``).
    NonFiniteFeaturesError
        Naming the clips whose cached log-mel is not finite, and their cache files.
    """
    fnames = dataset.fnames(split) if fnames is None else list(fnames)
    paths = cache_paths(dataset, work, split, fnames, config)
    lazy = lazy or mmap
    logmels, bad = [], []
    for fname, path in zip(fnames, paths):
        logmel = read_cached_logmel(path, dataset)
        if not np.isfinite(logmel).all():
            bad.append((fname, path))
        if not lazy:
            logmels.append(logmel)
    if bad:
        shown = ", ".join(f"{fname} ({path})" for fname, path in bad[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteFeaturesError(
            f"the cached log-mel of {len(bad)} {split} clip(s) is not finite (NaN or infinite values), so the clip "
            f"cannot be used: {shown}; delete these cache files and run `freesound features --data {dataset.root}`, "
            "which names the cause"
        )
    return LazyLogmels(paths, mmap) if lazy else logmels


def cached_bytes(dataset: Dataset, work, split: str, fnames=None, config: AudioConfig | None = None) -> int:
    """Bytes on disk of the cached log-mels of ``fnames``: about what holding them takes."""
    return sum(os.path.getsize(path) for path in cache_paths(dataset, work, split, fnames, config))


def iter_features(dataset: Dataset, work, split: str, fnames=None, config: AudioConfig | None = None, *,
                  chunk: int = 256):
    """Yield the cached log-mels of ``fnames`` (default: the whole split) in order, reading
    ``chunk`` clips at a time: a pass over a split holds one chunk, not the split (the real noisy
    split's log-mels are about 9 GB).

    Raises what ``load_features`` raises, for the chunk where it happens.
    """
    fnames = dataset.fnames(split) if fnames is None else list(fnames)
    for start in range(0, len(fnames), chunk):
        yield from load_features(dataset, work, split, fnames[start:start + chunk], config)
