"""Audio front end: decode a clip and turn it into a log-mel spectrogram.

The numbers follow the winning FSDKaggle2019 solution exactly (see ``AudioConfig``). The pipeline is
three public steps, each usable on its own::

    y = read_audio(path, config)          # float32 mono at 44.1 kHz, <= 600 s, trimmed, >= 0.5 s
    logmel = to_log_mel(y, config)        # float32 (n_mels, frames), dB
    logmel = read_as_melspectrogram(path) # both at once
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import librosa
import librosa.effects  # noqa: F401  (eager: librosa loads submodules lazily, in every worker)
import librosa.feature  # noqa: F401
import numpy as np
import soundfile as sf

from freesound.errors import FreesoundError, FreesoundWarning

#: Sample rates a file may declare, in Hz: telephone-grade to the fastest audio converters. A
#: header outside this range is corrupt (or not audio), and resampling it would make nonsense.
SAMPLE_RATE_RANGE = (1000, 768_000)


class AudioDecodeError(FreesoundError):
    """A file could not be turned into audio samples; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")


class AudioCroppedWarning(FreesoundWarning):
    """A file longer than ``AudioConfig.max_seconds`` was cropped; the message names it and its length."""


@dataclass(frozen=True)
class AudioConfig:
    """The front end's numbers. Frozen so that ``key()`` can safely name a feature cache.

    Times are in seconds, frequencies in Hz, levels in dB.
    """

    sample_rate: int = 44100
    n_fft: int = 2560
    hop_length: int = 690
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 22050.0
    trim_top_db: float = 60.0
    min_seconds: float = 0.5
    ref: float = 1.0
    amin: float = 1e-10
    top_db: float = 80.0
    pad_mode: str = "reflect"
    #: Longer files are cropped to their first ``max_seconds`` (with a warning), bounding the
    #: memory and time one file can take. FSDKaggle2019 clips are at most 30 s long.
    max_seconds: float = 600.0

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "min_seconds", "max_seconds", "amin"):
            if not getattr(self, name) > 0:
                raise ValueError(f"audio {name} must be positive, got {getattr(self, name)!r}")
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"audio max_seconds ({self.max_seconds:g}) is below min_seconds ({self.min_seconds:g})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "AudioConfig":
        """Build from a plain dict (a checkpoint's or a TOML file's); unknown keys are an error.

        Missing keys take their defaults, so checkpoints saved before a field existed still load.
        """
        values = dict(values or {})
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown audio config keys {unknown}; valid keys are {sorted(valid)}")
        return cls(**values)

    def key(self) -> str:
        """A short hash of every field, stable across Python runs and machines."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def min_samples(self) -> int:
        return int(round(self.min_seconds * self.sample_rate))


DEFAULT_CONFIG = AudioConfig()


def decode(path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 samples.

    Parameters
    ----------
    path : str or Path
        Any format libsndfile reads (wav incl. 8-bit and ADPCM, flac, ogg, mp3, aiff); other
        formats go through librosa's fallback decoder when one is installed.
    max_seconds : float, optional
        Keep only the first ``max_seconds`` of a longer file and warn (``AudioCroppedWarning``,
        naming the file and its length). libsndfile then reads only those frames, so an
        absurdly long file costs no more memory than the limit.

    Returns
    -------
    samples : np.ndarray, float32, shape (channels, n)
    sample_rate : int, Hz

    Raises
    ------
    AudioDecodeError
        Missing, empty, truncated or non-audio files (headerless ones included), sample rates
        outside ``SAMPLE_RATE_RANGE``, and files holding NaN or infinite samples.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioDecodeError(path, "it is a folder, not a file")
    if not path.is_file():
        raise AudioDecodeError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "the file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as handle:
            if handle.format == "RAW":
                # libsndfile guessed headerless audio from the name (.au, .snd, .vox, .gsm): any
                # bytes at all would "decode" as noise.
                raise AudioDecodeError(path, f"no audio header (only its name suggests {handle.subtype} audio)")
            sr, total = handle.samplerate, handle.frames
            _check_sample_rate(path, sr)
            keep = _frames_to_keep(total, sr, max_seconds)
            samples = handle.read(keep, dtype="float32", always_2d=True).T
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_error:
        samples, sr = _decode_fallback(path, sf_error)
        _check_sample_rate(path, sr)
        total = samples.shape[-1]
        keep = _frames_to_keep(total, sr, max_seconds)
        samples = samples[:, :keep]
    # A truncated file's header may promise more frames than it holds: warn only when the limit cut.
    if keep < total and samples.shape[-1] == keep:
        warnings.warn(AudioCroppedWarning(
            f"{path} is {total / sr:.1f} s long; only its first {max_seconds:g} s are used (max_seconds)"
        ), stacklevel=2)
    if samples.shape[-1] == 0:
        raise AudioDecodeError(path, "the file holds no audio samples")
    if not np.isfinite(samples).all():
        raise AudioDecodeError(path, "the file holds NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sr)


def _check_sample_rate(path: Path, sr: int) -> None:
    low, high = SAMPLE_RATE_RANGE
    if not low <= sr <= high:
        raise AudioDecodeError(path, f"the sample rate {sr} Hz is outside {low}-{high} Hz")


def _frames_to_keep(total: int, sr: int, max_seconds: float | None) -> int:
    return total if max_seconds is None else min(total, int(round(max_seconds * sr)))


def _decode_fallback(path: Path, sf_error: Exception) -> tuple[np.ndarray, int]:
    # libsndfile covers the competition's formats; audioread (through librosa) may cover others
    # when a system decoder is present. Either way a failure names the original reason.
    try:
        import audioread  # noqa: F401  (librosa's optional decoder)
    except ImportError:
        raise AudioDecodeError(path, str(sf_error)) from sf_error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(str(path), sr=None, mono=False)
    except Exception as fallback_error:
        raise AudioDecodeError(path, f"{sf_error}; fallback decoder: {type(fallback_error).__name__} {fallback_error}".rstrip()) from fallback_error
    return np.atleast_2d(y).astype(np.float32), int(sr)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (channels, n) -> (n,)."""
    return samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio with librosa's default (soxr high quality) resampler."""
    if orig_sr == target_sr:
        return y
    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32, copy=False)


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


def trim_to_min_length(y: np.ndarray, config: AudioConfig = DEFAULT_CONFIG) -> np.ndarray:
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


def read_audio(path, config: AudioConfig | None = None) -> np.ndarray:
    """Decode (at most ``config.max_seconds``), mix to mono, resample and trim a clip.

    Returns
    -------
    np.ndarray, float32, shape (n,), at ``config.sample_rate`` Hz, n >= ``config.min_samples``.

    Raises
    ------
    AudioDecodeError
    """
    config = config or DEFAULT_CONFIG
    samples, sr = decode(path, config.max_seconds)
    y = resample(to_mono(samples), sr, config.sample_rate)
    return trim_to_min_length(y, config)


def mel_filterbank(config: AudioConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters: float32 (n_mels, n_fft // 2 + 1)."""
    return _mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax).copy()


@functools.lru_cache(maxsize=16)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    filters = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney",
    ).astype(np.float32)
    filters.flags.writeable = False
    return filters


def power_to_db(power: np.ndarray, config: AudioConfig = DEFAULT_CONFIG) -> np.ndarray:
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
        np.fft.rfft(windowed[:rows], axis=-1, out=spectrum[:rows])
        parts = spectrum[:rows].view(np.float64)  # re, im interleaved
        np.square(parts, out=parts)
        real = parts[:, 0::2]
        np.add(real, parts[:, 1::2], out=real)
        power[start:stop] = real
    return power


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
    power = np.abs(stft) ** 2
    return power_to_db(mel_filterbank(config) @ power, config)


def to_log_mel(y: np.ndarray, config: AudioConfig | None = None) -> np.ndarray:
    """Log-mel power spectrogram of mono audio.

    Centred frames with reflect padding (librosa 0.6's default, which the original used), a
    Hann window, power 2.

    Parameters
    ----------
    y : np.ndarray, float32, shape (n,), at ``config.sample_rate`` Hz

    Returns
    -------
    np.ndarray, float32, shape (n_mels, 1 + n // hop_length), in dB
    """
    config = config or DEFAULT_CONFIG
    y = np.asarray(y)
    if (y.ndim != 1 or y.dtype not in (np.float32, np.float64) or y.shape[0] < config.n_fft
            or config.pad_mode not in ("reflect", "constant")):
        # Clips shorter than a frame (librosa warns), other pad modes and multichannel input
        # keep librosa's behaviour exactly.
        return _to_log_mel_librosa(y, config)
    plan = _mel_plan(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    frames = _centered_frames(y, config.n_fft, config.hop_length, config.pad_mode)
    mel = _apply_mel(_power_spectrogram(frames, plan.window), plan)
    if not np.isfinite(mel).all():
        # NaN or infinite samples (or float32 overflow): librosa raises or returns what it does.
        return _to_log_mel_librosa(y, config)
    return power_to_db(mel, config)


def read_as_melspectrogram(path, config: AudioConfig | None = None) -> np.ndarray:
    """``to_log_mel(read_audio(path))``: float32 (n_mels, frames) in dB.

    Raises
    ------
    AudioDecodeError
    """
    config = config or DEFAULT_CONFIG
    return to_log_mel(read_audio(path, config), config)


#: File endings ``find_audio_files`` collects (any libsndfile format works when named directly).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".opus")


def find_audio_files(directory) -> list:
    """Every audio file below ``directory`` (recursively, by extension), sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FreesoundError(f"audio folder {directory} does not exist")
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
