"""Decoding: any audio file to float32 samples, mixed to mono and resampled.

Raises ``AudioDecodeError`` (naming the file and the reason) for anything that is not usable
audio; a file longer than ``AudioConfig.max_seconds`` is cropped with an ``AudioCroppedWarning``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import librosa
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


def describe_error(error: Exception) -> str:
    """A decoder's own message for ``error``, or a sentence saying what failed when it has none.

    libsndfile's message drops its ``Error opening '<path>': `` prefix (the path is named once,
    by ``AudioDecodeError``); audioread's ``NoBackendError`` has no message, so the sentence names
    the backends it tried.
    """
    text = (getattr(error, "error_string", None) or str(error)).strip().rstrip(".")
    if text:
        return text
    if type(error).__name__ == "NoBackendError":
        import audioread

        tried = ", ".join(backend.__name__ for backend in audioread.available_backends()) or "none"
        return (f"none of its backends reads this file, tried: {tried}; formats such as MP4/AAC, WebM and WMA "
                "need ffmpeg or GStreamer installed")
    return f"{type(error).__name__}, with no message"


def _decode_fallback(path: Path, sf_error: Exception) -> tuple[np.ndarray, int]:
    # libsndfile covers the competition's formats; audioread (through librosa) may cover others
    # when a system decoder is present. A failure names each decoder's reason.
    first = f"libsndfile cannot read it ({describe_error(sf_error)})"
    try:
        import audioread  # noqa: F401  (librosa's optional decoder)
    except ImportError:
        raise AudioDecodeError(path, f"{first}, and no fallback decoder is installed (audioread, with ffmpeg "
                                     "for formats such as MP4/AAC)") from sf_error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(str(path), sr=None, mono=False)
    except Exception as fallback_error:
        raise AudioDecodeError(path, f"{first}, nor can librosa's fallback decoder, audioread "
                                     f"({describe_error(fallback_error)})") from fallback_error
    return np.atleast_2d(y).astype(np.float32), int(sr)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (channels, n) -> (n,)."""
    return samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio with librosa's default (soxr high quality) resampler."""
    if orig_sr == target_sr:
        return y
    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32, copy=False)

