"""Audio front end: decode a clip and turn it into a log-mel spectrogram.

The numbers follow the winning FSDKaggle2019 solution exactly (see ``AudioConfig``). The pipeline is
three public steps, each usable on its own::

    y = read_audio(path, config)          # float32 mono at 44.1 kHz, trimmed, >= 0.5 s
    logmel = to_log_mel(y, config)        # float32 (n_mels, frames), dB
    logmel = read_as_melspectrogram(path) # both at once
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from freesound.errors import FreesoundError


class AudioDecodeError(FreesoundError):
    """A file could not be turned into audio samples; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "AudioConfig":
        """Build from a plain dict (a checkpoint's or a TOML file's); unknown keys are an error."""
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


def decode(path) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 samples.

    Parameters
    ----------
    path : str or Path
        Any format libsndfile reads (wav incl. 8-bit and ADPCM, flac, ogg, mp3, aiff); other
        formats go through librosa's fallback decoder when one is installed.

    Returns
    -------
    samples : np.ndarray, float32, shape (channels, n)
    sample_rate : int, Hz

    Raises
    ------
    AudioDecodeError
        Missing, empty, truncated or non-audio files, and files holding NaN or infinite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "the file is empty (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        samples = data.T
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_error:
        samples, sr = _decode_fallback(path, sf_error)
    if samples.shape[-1] == 0:
        raise AudioDecodeError(path, "the file holds no audio samples")
    if not np.isfinite(samples).all():
        raise AudioDecodeError(path, "the file holds NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sr)


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
        raise AudioDecodeError(path, f"{sf_error}; fallback decoder: {fallback_error}") from fallback_error
    return np.atleast_2d(y).astype(np.float32), int(sr)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (channels, n) -> (n,)."""
    return samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio with librosa's default (soxr high quality) resampler."""
    if orig_sr == target_sr:
        return y
    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


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
    """Decode, mix to mono, resample and trim a clip.

    Returns
    -------
    np.ndarray, float32, shape (n,), at ``config.sample_rate`` Hz, n >= ``config.min_samples``.

    Raises
    ------
    AudioDecodeError
    """
    config = config or DEFAULT_CONFIG
    samples, sr = decode(path)
    y = resample(to_mono(samples), sr, config.sample_rate)
    return trim_to_min_length(y, config)


def mel_filterbank(config: AudioConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters: float32 (n_mels, n_fft // 2 + 1)."""
    return librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
        fmin=config.fmin, fmax=config.fmax, htk=False, norm="slaney",
    ).astype(np.float32)


def power_to_db(power: np.ndarray, config: AudioConfig = DEFAULT_CONFIG) -> np.ndarray:
    """``librosa.power_to_db`` with the config's ref, amin and top_db, in float32."""
    return librosa.power_to_db(power, ref=config.ref, amin=config.amin, top_db=config.top_db).astype(np.float32)


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
    stft = librosa.stft(
        y, n_fft=config.n_fft, hop_length=config.hop_length, window="hann",
        center=True, pad_mode=config.pad_mode,
    )
    power = np.abs(stft) ** 2
    return power_to_db(mel_filterbank(config) @ power, config)


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
