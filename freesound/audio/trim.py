"""Silence trimming with the front end's minimum clip length.

``trim_to_min_length`` makes librosa.effects.trim's decision (to the bit) several times faster.
"""

from __future__ import annotations

import librosa
import librosa.effects  # noqa: F401  (eager: librosa loads submodules lazily, in every worker)
import numpy as np

from freesound.config import DEFAULT_AUDIO_CONFIG, AudioConfig

# --------------------------------------------------------------------------------------------
# Silence trimming: librosa.effects.trim's decision, computed cheaply.
#
# librosa.effects.trim(y, top_db) frames the signal (2048-sample frames, hop 512, zero-padded by
# 1024 on both sides), takes each frame's RMS in float32, converts it to dB relative to the
# loudest frame and keeps the span from the first to the last frame above -top_db. Squaring
# every sample four times over (the frames overlap 4x) is most of its cost. Here the frame
# energies come from sums of 512-sample blocks in float64 (each frame is four blocks), and only
# the frames whose level lies within a hair of the threshold, and the candidates for the
# loudest frame, are recomputed with librosa's own float32 arithmetic, so the decision, and the
# trim indices, are librosa's to the bit.

_TRIM_FRAME = 2048
_TRIM_HOP = 512
#: Frames whose float64 level is this close (dB) to the threshold are decided in exact float32.
_TRIM_MARGIN_DB = 0.01
#: Frames whose float64 energy is within this fraction of the loudest are loudest candidates
#: (float32 and float64 frame energies differ by at most ~2e-6 relative).
_TRIM_REF_MARGIN = 1e-4
#: librosa.amplitude_to_db's default amin (1e-5), squared as librosa squares it.
_TRIM_AMIN = 1e-5 ** 2


def _trim_frame_rms_exact(y32: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """librosa.feature.rms(y, 2048, 512, center=True) of the given frames, bit for bit (float32)."""
    n = y32.shape[0]
    starts = np.asarray(frames, dtype=np.int64) * _TRIM_HOP - _TRIM_FRAME // 2  # in y; may overhang
    # A C-contiguous (k, 2048) block: the same pairwise summation along contiguous memory as
    # librosa's mean over its (2048, frames) F-ordered squares.
    block = np.zeros((len(starts), _TRIM_FRAME), dtype=np.float32)
    inside = (starts >= 0) & (starts + _TRIM_FRAME <= n)
    if inside.sum() > 32:  # many frames (a steady signal): gather them at once
        block[inside] = np.lib.stride_tricks.sliding_window_view(y32, _TRIM_FRAME)[starts[inside]]
        rows = np.flatnonzero(~inside)
    else:
        rows = range(len(starts))
    for row in rows:  # frames one by one; those reaching into librosa's zero padding are cut
        lo = int(starts[row])
        a, b = max(lo, 0), min(lo + _TRIM_FRAME, n)
        if b > a:
            block[row, a - lo:b - lo] = y32[a:b]
    return np.sqrt(np.mean(np.square(block), axis=-1))


def _trim_db_exact(rms: np.ndarray, ref_rms: np.float32) -> np.ndarray:
    """librosa.amplitude_to_db(rms, ref=<the max>, top_db=None) in librosa's float32 steps."""
    log_spec = 10.0 * np.log10(np.maximum(_TRIM_AMIN, np.square(rms)))
    log_spec -= 10.0 * np.log10(np.maximum(_TRIM_AMIN, ref_rms ** 2))
    return log_spec


def _trim_bounds(y: np.ndarray, top_db: float) -> tuple[int, int]:
    """``librosa.effects.trim(y, top_db=top_db)[1]`` for mono audio, as ``(start, end)``."""
    n = y.shape[0]
    y32 = np.asarray(y, dtype=np.float32)
    n_frames = 1 + n // _TRIM_HOP
    n_blocks = -(-n // _TRIM_HOP)
    squares = np.zeros(n_blocks * _TRIM_HOP, dtype=np.float32)
    np.square(y32, out=squares[:n])
    # Frame i covers y[512 i - 1024 : 512 i + 1024], i.e. blocks i - 2 .. i + 1.
    blocks = np.zeros(n_blocks + 4, dtype=np.float64)
    blocks[2:2 + n_blocks] = squares.reshape(n_blocks, _TRIM_HOP).sum(axis=1)
    energy = blocks[0:n_frames] + blocks[1:n_frames + 1] + blocks[2:n_frames + 2] + blocks[3:n_frames + 3]
    mse = energy / _TRIM_FRAME
    loudest = mse.max()
    if not np.isfinite(loudest):
        _, (start, end) = librosa.effects.trim(y, top_db=top_db)
        return int(start), int(end)

    # The loudest frame, exactly as librosa finds it.
    candidates = np.flatnonzero(mse >= loudest * (1.0 - _TRIM_REF_MARGIN))
    ref_rms = _trim_frame_rms_exact(y32, candidates).max()

    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(np.maximum(_TRIM_AMIN, mse)) - 10.0 * np.log10(max(_TRIM_AMIN, float(ref_rms) ** 2))
    threshold = -float(top_db)
    loud = db > threshold
    close = np.flatnonzero(np.abs(db - threshold) <= _TRIM_MARGIN_DB)
    if close.size:
        loud[close] = _trim_db_exact(_trim_frame_rms_exact(y32, close), ref_rms) > threshold
    nonzero = np.flatnonzero(loud)
    if nonzero.size == 0:
        return 0, 0
    return int(nonzero[0]) * _TRIM_HOP, min(n, (int(nonzero[-1]) + 1) * _TRIM_HOP)


def trim_to_min_length(y: np.ndarray, config: AudioConfig = DEFAULT_AUDIO_CONFIG) -> np.ndarray:
    """Trim leading/trailing silence, keeping at least ``config.min_seconds``.

    Silence is what lies ``config.trim_top_db`` below the clip's peak (``librosa.effects.trim``).
    When the trimmed clip is shorter than the minimum, the minimum's worth of the *untrimmed*
    signal is taken, centred on the middle of the trimmed region and shifted to stay inside the
    file; only a file shorter than the minimum is zero-padded, symmetrically.

    Parameters
    ----------
    y : np.ndarray, float32, shape (n,)

    Returns
    -------
    np.ndarray, float32, shape (m,) with m >= config.min_samples
    """
    min_samples = config.min_samples
    if y.ndim == 1 and y.shape[0] > 0:
        start, end = _trim_bounds(y, config.trim_top_db)
    else:
        _, (start, end) = librosa.effects.trim(y, top_db=config.trim_top_db)
    if end - start >= min_samples:
        return y[start:end]
    if len(y) >= min_samples:
        middle = (start + end) // 2
        left = min(max(0, middle - min_samples // 2), len(y) - min_samples)
        return y[left:left + min_samples]
    padding = min_samples - len(y)
    return np.pad(y, (padding // 2, padding - padding // 2))

