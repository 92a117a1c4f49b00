"""Log-mel spectrograms: the method's front end, file to ``(n_mels, frames)`` dB.

``read_audio`` decodes, mixes, resamples and trims; ``to_log_mel`` is the mel power spectrogram
in dB with the original solution's numbers (``AudioConfig``); ``read_as_melspectrogram`` is both.
``to_log_mel`` computes librosa's result with a banded mel product and cache-sized FFT batches.
A log-mel that is not finite (e.g. finite samples so loud that their power overflows float32) is
a clip that cannot be used: ``read_as_melspectrogram`` raises ``AudioDecodeError`` naming the file
(``check_log_mel``), so every caller applies its policy for unusable clips.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import librosa
import librosa.feature  # noqa: F401  (eager: librosa loads submodules lazily, in every worker)
import numpy as np

from freesound.audio.decode import AudioDecodeError, decode, resample, to_mono
from freesound.audio.efficientat_frontend import (
    frame_window,
    kaldi_mel_filterbank,
    normalize,
    offset_log,
    preemphasize,
    uses_added_steps,
)
from freesound.audio.trim import trim_to_min_length
from freesound.config import DEFAULT_AUDIO_CONFIG, AudioConfig


def read_audio(path, config: AudioConfig | None = None) -> np.ndarray:
    """Decode (at most ``config.max_seconds``), mix to mono, resample and trim a clip.

    Returns
    -------
    np.ndarray, float32, shape (n,), at ``config.sample_rate`` Hz, n >= ``config.min_samples``.

    Raises
    ------
    AudioDecodeError
    """
    config = config or DEFAULT_AUDIO_CONFIG
    samples, sr = decode(path, config.max_seconds)
    y = resample(to_mono(samples), sr, config.sample_rate)
    return trim_to_min_length(y, config)


def mel_filterbank(config: AudioConfig = DEFAULT_AUDIO_CONFIG) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters (Kaldi's with ``mel_scale = "kaldi"``):
    float32 (n_mels, n_fft // 2 + 1)."""
    if config.mel_scale == "kaldi":
        return kaldi_mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    return _mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax).copy()


@functools.lru_cache(maxsize=16)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    filters = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney",
    ).astype(np.float32)
    filters.flags.writeable = False
    return filters


def power_to_db(power: np.ndarray, config: AudioConfig = DEFAULT_AUDIO_CONFIG) -> np.ndarray:
    """``librosa.power_to_db`` with the config's ref, amin and top_db, in float32."""
    power = np.asarray(power)
    if (power.dtype not in (np.float32, np.float64) or power.size == 0 or not config.amin > 0
            or (config.top_db is not None and config.top_db < 0)):
        # Odd input (complex, integer, empty) or settings librosa refuses: let librosa decide.
        return np.asarray(
            librosa.power_to_db(power, ref=config.ref, amin=config.amin, top_db=config.top_db), dtype=np.float32
        )
    # librosa's own steps, in place; for float32 input they round exactly as librosa's do.
    log_spec = np.maximum(power, config.amin)
    np.log10(log_spec, out=log_spec)
    log_spec *= 10.0
    offset = 10.0 * np.log10(np.maximum(config.amin, np.abs(config.ref)))
    if offset != 0.0:  # ref = 1 (the method's) subtracts an exact 0: skip the pass
        log_spec -= offset
    if config.top_db is not None:
        np.maximum(log_spec, log_spec.max() - config.top_db, out=log_spec)
    return log_spec.astype(np.float32, copy=False)


@dataclass(frozen=True)
class _MelPlan:
    """What ``to_log_mel`` precomputes once per config.

    ``bands`` splits the mel filterbank into groups of consecutive filters with the bin range
    ``lo:hi`` that holds all their non-zero weights: a slaney filter covers only the bins between
    its neighbours' centres, so most of each row is zero and the groups do about an eighth of a
    dense product's work.
    """

    window: np.ndarray  # float64 (n_fft,), periodic Hann
    bands: tuple  # ((row_start, row_end, lo, hi, float32 (rows, hi - lo)), ...)
    n_mels: int


_MEL_GROUP = 8
#: Frames per FFT batch: small enough that a batch's spectrum stays in the CPU cache.
_STFT_CHUNK = 32
#: ``np.fft.rfft(..., out=)`` arrived in NumPy 2.0; older NumPy allocates each batch's spectrum.
_RFFT_TAKES_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


@functools.lru_cache(maxsize=16)
def _mel_plan(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> _MelPlan:
    filters = _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    bands = []
    for start in range(0, n_mels, _MEL_GROUP):
        group = filters[start:start + _MEL_GROUP]
        used = np.flatnonzero(group.any(axis=0))
        if used.size == 0:
            continue  # all-zero filters: their rows stay 0, as in a dense product
        lo, hi = int(used[0]), int(used[-1]) + 1
        bands.append((start, start + len(group), lo, hi, np.ascontiguousarray(group[:, lo:hi])))
    window = librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float64)
    return _MelPlan(window=window, bands=tuple(bands), n_mels=n_mels)


def _centered_frames(y: np.ndarray, n_fft: int, hop_length: int, pad_mode: str) -> np.ndarray:
    """librosa.stft's centred frames as a strided view (frames, n_fft) over one padded copy."""
    half = n_fft // 2
    n = y.shape[0]
    padded = np.empty(n + 2 * half, dtype=y.dtype)
    padded[half:half + n] = y
    if pad_mode == "reflect":
        padded[:half] = y[1:half + 1][::-1]
        padded[half + n:] = y[n - half - 1:n - 1][::-1]
    else:  # "constant": zeros
        padded[:half] = 0
        padded[half + n:] = 0
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]


def _power_spectrogram(frames: np.ndarray, window: np.ndarray) -> np.ndarray:
    """|rfft(window * frame)|^2 of every frame: float32 (frames, n_fft // 2 + 1).

    The FFT runs in float64, as librosa's does (a float32 FFT drifts by up to 0.2 dB on clips with
    steep spectra), in cache-sized batches of frames.
    """
    n_frames, n_fft = frames.shape
    power = np.empty((n_frames, n_fft // 2 + 1), dtype=np.float32)
    chunk = min(_STFT_CHUNK, n_frames)
    windowed = np.empty((chunk, n_fft), dtype=np.float64)
    spectrum = np.empty((chunk, n_fft // 2 + 1), dtype=np.complex128)
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        rows = stop - start
        np.multiply(frames[start:stop], window, out=windowed[:rows])
        parts = _rfft(windowed[:rows], spectrum[:rows]).view(np.float64)  # re, im interleaved
        np.square(parts, out=parts)
        real = parts[:, 0::2]
        np.add(real, parts[:, 1::2], out=real)
        power[start:stop] = real
    return power


def _rfft(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.fft.rfft(x, axis=-1)``, written into ``out`` where NumPy can (2.0 and newer)."""
    if _RFFT_TAKES_OUT:
        return np.fft.rfft(x, axis=-1, out=out)
    return np.fft.rfft(x, axis=-1)


def _apply_mel(power: np.ndarray, plan: _MelPlan) -> np.ndarray:
    """``filters @ power.T`` via the banded groups: float32 (n_mels, frames)."""
    mel = np.zeros((plan.n_mels, power.shape[0]), dtype=np.float32)
    for start, stop, lo, hi, weights in plan.bands:
        np.matmul(weights, power[:, lo:hi].T, out=mel[start:stop])
    return mel


def _to_log_mel_librosa(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The straightforward librosa computation (used for inputs the fast path does not take)."""
    stft = librosa.stft(
        y, n_fft=config.n_fft, hop_length=config.hop_length, window="hann",
        center=True, pad_mode=config.pad_mode,
    )
    # Overflow gives inf, then NaN: reported by ``check_log_mel``, not as NumPy warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        power = np.abs(stft) ** 2
        return power_to_db(mel_filterbank(config) @ power, config)


def _to_log_mel_added_steps(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The log-mel of a config that sets added steps (``uses_added_steps``): pre-emphasis,
    centred frames padded by ``pad_mode``, the (shorter, symmetric) window, power, the Slaney or
    Kaldi mel filters, dB or the offset log, the normalisation."""
    y = preemphasize(np.asarray(y, dtype=np.float32), config.preemphasis)
    half = config.n_fft // 2
    padded = np.pad(y, half, mode=config.pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)[::config.hop_length]
    window = frame_window(config.n_fft, config.win_length, config.periodic_window)
    with np.errstate(over="ignore", invalid="ignore"):
        mel = mel_filterbank(config) @ _power_spectrogram(frames, window).T
        logmel = offset_log(mel, config.log_offset) if config.log == "offset" else power_to_db(mel, config)
        return normalize(logmel, config.norm_shift, config.norm_scale)


def to_log_mel(y: np.ndarray, config: AudioConfig | None = None) -> np.ndarray:
    """Log-mel power spectrogram of mono audio.

    Centred frames with reflect padding (librosa 0.6's default, which the original used), a
    Hann window, power 2. A config with added steps (pre-emphasis, a shorter or symmetric window,
    Kaldi mels, the offset log, a normalisation: ``freesound.audio.efficientat_frontend``) has
    them applied in NumPy, e.g. EfficientAT's front end (``freesound.config.EFFICIENTAT_AUDIO``).

    Parameters
    ----------
    y : np.ndarray, float32, shape (n,), at ``config.sample_rate`` Hz

    Returns
    -------
    np.ndarray, float32, shape (n_mels, 1 + n // hop_length) (``1 + (n - 1) // hop_length``
    with pre-emphasis), in dB (or the offset log, normalised); not finite where the
    samples are (or where their power overflows float32, above about 1e16): see ``check_log_mel``
    """
    config = config or DEFAULT_AUDIO_CONFIG
    y = np.asarray(y)
    if uses_added_steps(config) and y.ndim == 1:
        return _to_log_mel_added_steps(y, config)
    if (y.ndim != 1 or y.dtype not in (np.float32, np.float64) or y.shape[0] < config.n_fft
            or config.pad_mode not in ("reflect", "constant")):
        # Clips shorter than a frame (librosa warns), other pad modes and multichannel input
        # keep librosa's behaviour exactly.
        return _to_log_mel_librosa(y, config)
    plan = _mel_plan(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    frames = _centered_frames(y, config.n_fft, config.hop_length, config.pad_mode)
    with np.errstate(over="ignore", invalid="ignore"):
        mel = _apply_mel(_power_spectrogram(frames, plan.window), plan)
    if not np.isfinite(mel).all():
        # NaN or infinite samples (or float32 overflow): librosa raises or returns what it does.
        return _to_log_mel_librosa(y, config)
    return power_to_db(mel, config)


def check_log_mel(logmel: np.ndarray, source, samples: np.ndarray | None = None) -> np.ndarray:
    """Return ``logmel`` if every value is finite; otherwise the clip cannot be used.

    Parameters
    ----------
    logmel : np.ndarray (n_mels, frames)
    source : path (or a name such as "microphone input") that the error names
    samples : np.ndarray, optional, the audio it came from; its peak goes into the reason

    Raises
    ------
    AudioDecodeError
        With a reason like "the log-mel is not finite (8192 of 8192 values are NaN or infinite;
        the samples peak at 1e+17, ...)".
    """
    finite = np.isfinite(logmel)
    if finite.all():
        return logmel
    reason = f"the log-mel is not finite ({finite.size - int(finite.sum())} of {finite.size} values are NaN or infinite"
    if samples is not None and samples.size:
        peak = float(np.max(np.abs(samples)))
        reason += (f"; the samples peak at {peak:.3g}, far beyond audio's usual -1..1, and their power "
                   "overflows float32" if peak > 1e6 else f"; the samples peak at {peak:.3g}")
    raise AudioDecodeError(source, reason + ")")


def read_as_melspectrogram(path, config: AudioConfig | None = None) -> np.ndarray:
    """``to_log_mel(read_audio(path))``: float32 (n_mels, frames) in dB, every value finite.

    Raises
    ------
    AudioDecodeError
        The file cannot be decoded, or its log-mel is not finite (``check_log_mel``).
    """
    config = config or DEFAULT_AUDIO_CONFIG
    y = read_audio(path, config)
    return check_log_mel(to_log_mel(y, config), path, y)


def silent_logmel(config: AudioConfig | None = None) -> np.ndarray:
    """The log-mel of the front end's shortest clip of digital silence: float32 (n_mels, frames).

    What a clip that cannot be used is predicted from, where a row must not be missing.
    """
    config = config or DEFAULT_AUDIO_CONFIG
    return to_log_mel(np.zeros(config.min_samples, dtype=np.float32), config)
