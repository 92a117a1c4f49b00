"""Decoding files for prediction, with a policy for files that cannot be used.

``on_error`` is ``"raise"`` (stop at the first bad file), ``"skip"`` (leave its row out) or
``"silence"`` (predict it from a silent clip, so every file keeps its row: the kernel's policy).

Decoding streams: ``iter_logmel_chunks`` hands out consecutive chunks of clips while DataLoader
workers go on decoding the next ones, so the front end runs while the model predicts the chunk
before (``benchmarks/bench_inference.py --overlap`` measures it). With ``workers=0`` everything
runs in the calling process, one chunk after the other.

``predict_file_windows`` gives one row per window of each file instead (``freesound.predict.windows``),
from the untrimmed recording (``read_untrimmed_logmel``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from freesound.audio import (
    AudioDecodeError, AudioTruncatedWarning, check_log_mel, decode, read_as_melspectrogram, resample, silent_logmel,
    to_log_mel, to_mono,
)
from freesound.config import AudioConfig
from freesound.errors import call_recording_warnings
from freesound.predict.postprocess import postprocess_file
from freesound.predict.windows import window_row_ids

ON_ERROR = ("raise", "skip", "silence")
#: Clips predicted together: large enough that tiles of many clips fill the model's batches, small
#: enough that the first chunk is decoded soon and the workers stay about two chunks ahead.
CHUNK_CLIPS = 32


def _as_is(item):
    """Keep worker results as NumPy arrays (DataLoader would turn them into tensors)."""
    return item


def silent_front_end(config):
    """``silent_logmel`` of a front end: of an ``AudioConfig``, or a tuple of one per config of a
    tuple (``EnsemblePredictor.front_end``)."""
    if isinstance(config, tuple):
        return tuple(silent_logmel(item) for item in config)
    return silent_logmel(config)


def read_untrimmed_logmel(path, config: AudioConfig | None = None) -> np.ndarray:
    """The log-mel of a whole recording, silence kept: decode (at most ``config.max_seconds``), mix
    to mono, resample, zero-pad symmetrically to ``config.min_seconds`` if shorter, ``to_log_mel``.

    Raises
    ------
    AudioDecodeError
        The file cannot be decoded, or its log-mel is not finite.
    """
    config = config or AudioConfig()
    samples, sr = decode(path, config.max_seconds)
    y = resample(to_mono(samples), sr, config.sample_rate)
    if len(y) < config.min_samples:
        padding = config.min_samples - len(y)
        y = np.pad(y, (padding // 2, padding - padding // 2))
    return check_log_mel(to_log_mel(y, config), path, y)


def read_front_end(path, config, trim: bool = True) -> tuple:
    """``(logmel, warnings raised)`` of ``path`` under a front end: an ``AudioConfig`` gives one
    log-mel, a tuple of them a tuple of log-mels, one per config. The warnings are those of the
    first config's decoding (every config decodes the same file). ``trim=False`` keeps the
    recording's silence (``read_untrimmed_logmel``), as windows in time need.

    Raises
    ------
    AudioDecodeError
        The file cannot be used.
    """
    read = read_as_melspectrogram if trim else read_untrimmed_logmel
    if not isinstance(config, tuple):
        return call_recording_warnings(read, path, config)
    decoded = [call_recording_warnings(read, path, item) for item in config]
    return tuple(logmel for logmel, _ in decoded), decoded[0][1]


class _FileFeatures(TorchDataset):
    """Decodes one file per item, in DataLoader workers; an item is ``(index, logmel or None,
    failure reason or None, warnings raised)``, the warnings for the parent to show and list
    (a tuple of log-mels for a tuple of configs: ``read_front_end``)."""

    def __init__(self, paths, config, trim: bool = True):
        self.paths = list(paths)
        self.config = config
        self.trim = trim

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            logmel, caught = read_front_end(self.paths[index], self.config, self.trim)
            return index, logmel, None, caught
        except AudioDecodeError as error:
            return index, None, error.reason, []


def iter_logmel_chunks(paths, config, *, on_error: str = "raise", failures: list | None = None,
                       truncated: list | None = None, workers: int = 0, chunk_size: int = CHUNK_CLIPS, track=None,
                       desc: str = "decoding", names=None, trim: bool = True):
    """Decode files to log-mels, chunk by chunk, applying the ``on_error`` policy of
    ``Tagger.predict_files``.

    With ``workers`` > 0, that many DataLoader processes decode one file each at a time and may
    run up to two chunks ahead of the consumer (``prefetch_factor``), so decoding overlaps
    whatever the caller does with a chunk. Stopping the iteration early stops the workers.

    Parameters
    ----------
    paths : sequence of paths
    config : AudioConfig, or a tuple of them (an ensemble's ``front_end``): each clip is then a
        tuple of log-mels, one per config
    on_error : one of ``ON_ERROR``
    failures : list, optional; each file that cannot be used is appended as ``(fname, reason)``
        when it is reached
    truncated : list, optional; each file that decodes fewer frames than its header states
        (``AudioTruncatedWarning``) is appended as ``(fname, warning message)``: it is predicted
        from the audio that decodes. Warnings raised in the workers are shown here, in this process.
    workers : int, decoding processes (0: in this process)
    chunk_size : int, clips per chunk (the last one may be shorter)
    track : optional ``track(iterable, total=..., desc=...)`` wrapping the files as they are
        decoded (a caller's progress bar, as for ``Tagger.tile_probabilities``), labelled ``desc``
    names : sequence of str, optional; each file's row name, in ``failures`` too (default: its
        file name, the competition's ``fname``)
    trim : trim each file's leading and trailing silence (the clip front end); ``False`` keeps
        the whole recording (``read_untrimmed_logmel``), for windows in time

    Yields
    ------
    (fnames, logmels): lists for the files of a chunk that get a row, in the input order; every
    chunk but the last covers ``chunk_size`` input files

    Raises
    ------
    AudioDecodeError
        With ``on_error="raise"``, at the first file that cannot be used.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    paths = [Path(p) for p in paths]
    names = [path.name for path in paths] if names is None else list(names)
    prefetch = {"prefetch_factor": max(2, math.ceil(2 * chunk_size / workers))} if workers > 0 else {}
    loader = DataLoader(_FileFeatures(paths, config, trim), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        **prefetch)
    chunk_names, logmels, silent, seen = [], [], None, 0
    for index, logmel, reason, caught in track(loader, total=len(paths), desc=desc) if track else loader:
        seen += 1
        for warning in caught:
            warnings.warn(warning, stacklevel=2)
            if truncated is not None and isinstance(warning, AudioTruncatedWarning):
                truncated.append((names[index], str(warning)))
        if reason is not None:
            if on_error == "raise":
                raise AudioDecodeError(paths[index], reason)
            if failures is not None:
                failures.append((names[index], reason))
            if on_error == "skip":
                logmel = None
            else:
                silent = silent_front_end(config) if silent is None else silent
                logmel = silent
        if logmel is not None:
            chunk_names.append(names[index])
            logmels.append(logmel)
        if seen % chunk_size == 0 or seen == len(paths):
            yield chunk_names, logmels
            chunk_names, logmels = [], []


def predict_files(predictor, paths, *, on_error: str = "raise", failures: list | None = None,
                  truncated: list | None = None, chunk_size: int = CHUNK_CLIPS, track=None,
                  names=None) -> pd.DataFrame:
    """``predictor.predict_spectrograms`` on decoded files, as a DataFrame indexed by ``fname``.

    ``predictor`` is a ``Tagger`` or an ``EnsemblePredictor``: anything with ``front_end`` (an
    ``AudioConfig`` or a tuple of them), ``workers``, ``classes`` and ``predict_spectrograms``.
    Each file is decoded once per audio config; chunks of
    ``chunk_size`` clips are predicted while the workers decode the next (``iter_logmel_chunks``).
    Clips are predicted independently, so the chunking changes the results only by float rounding
    in how tiles share the model's batches. ``track`` (as for ``iter_logmel_chunks``) counts the
    files as they are decoded, at most two chunks ahead of the model. ``failures`` and
    ``truncated`` collect as for ``iter_logmel_chunks``; ``names`` (as for ``iter_logmel_chunks``)
    index the rows.
    """
    rows, frames = [], []
    for chunk_names, logmels in iter_logmel_chunks(paths, predictor.front_end, on_error=on_error,
                                                    failures=failures, truncated=truncated,
                                                    workers=predictor.workers,
                                                    chunk_size=chunk_size, track=track, desc="predicting",
                                                    names=names):
        if logmels:
            rows += chunk_names
            frames.append(predictor.predict_spectrograms(logmels))
    probabilities = np.concatenate(frames) if frames else np.zeros((0, len(predictor.classes)), np.float32)
    return pd.DataFrame(probabilities, index=pd.Index(rows, name="fname"), columns=predictor.classes)


def predict_file_windows(predictor, paths, windows, *, combine: str = "gmean", smooth=None,
                         file_rescale: float | None = None, on_error: str = "raise", failures: list | None = None,
                         truncated: list | None = None, chunk_size: int = CHUNK_CLIPS, track=None,
                         names=None) -> pd.DataFrame:
    """One row per window of each file (``freesound.predict.windows``), as a DataFrame indexed by
    ``row_id`` (``<file stem>_<end second>``), one column per class.

    Each file is decoded whole, silence kept (``read_untrimmed_logmel``), once per audio config;
    ``predictor.predict_windows`` gives each window's probabilities, models combined by
    ``combine``; then each file's windows are smoothed (``smooth`` weights) and rescaled by the
    file's maximum (``file_rescale`` power), when given (``freesound.predict.postprocess``).
    ``on_error``, ``failures``, ``truncated``, ``chunk_size``, ``track`` and ``names`` as for
    ``predict_files``; a file predicted from silence (``on_error="silence"``) gets the one window
    of the silent clip.
    """
    rows, frames = [], []
    for chunk_names, logmels in iter_logmel_chunks(paths, predictor.front_end, on_error=on_error,
                                                    failures=failures, truncated=truncated,
                                                    workers=predictor.workers, chunk_size=chunk_size, track=track,
                                                    desc="predicting", names=names, trim=False):
        if not logmels:
            continue
        probabilities, bounds = predictor.predict_windows(logmels, windows, combine)
        for name, file_probs, file_bounds in zip(chunk_names, probabilities, bounds):
            rows += window_row_ids(name, file_bounds)
            frames.append(postprocess_file(file_probs, smooth, file_rescale))
    probabilities = np.concatenate(frames) if frames else np.zeros((0, len(predictor.classes)), np.float32)
    return pd.DataFrame(probabilities, index=pd.Index(rows, name="row_id"), columns=predictor.classes)


def predict_logmels_from_files(paths, config: AudioConfig, *, on_error: str = "raise",
                               failures: list | None = None, workers: int = 0) -> tuple[list, list]:
    """Decode every file to a log-mel (``iter_logmel_chunks``, all chunks together).

    Returns
    -------
    (fnames, logmels) for the files that get a row, in the input order.
    """
    names, logmels = [], []
    for chunk_names, chunk_logmels in iter_logmel_chunks(paths, config, on_error=on_error, failures=failures,
                                                          workers=workers):
        names += chunk_names
        logmels += chunk_logmels
    return names, logmels
