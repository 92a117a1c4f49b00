"""Decoding: any audio file to float32 samples, mixed to mono and resampled (and ``write_audio``,
the one way the package writes long audio).

Raises ``AudioDecodeError`` (naming the file and the reason) for anything that is not usable
audio; a file longer than ``AudioConfig.max_seconds`` is cropped with an ``AudioCroppedWarning``;
a file that decodes fewer frames than its header states is used as far as it decodes, with an
``AudioTruncatedWarning``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

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


class AudioTruncatedWarning(FreesoundWarning):
    """Fewer frames decode than the file's header states (a truncated or damaged file); the audio
    that decodes is used. The message names the file and both frame counts."""


#: Frames an MP3 may decode short of what libsndfile reports without being called truncated: its
#: count comes from the Xing/Info header when there is one, else it is estimated from the file
#: size, and the estimate may miss by a frame of 1152 samples.
MPEG_FRAME_SLACK = 2 * 1152
#: Frames read at a time once a whole-file read has failed (``_read_frames``).
SALVAGE_BLOCK_FRAMES = 1024


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

    Warns
    -----
    AudioTruncatedWarning
        Fewer frames decode than the header states (``stated_frames``; an MP3 may fall short by
        ``MPEG_FRAME_SLACK``): a truncated or damaged file, used as far as it decodes.

    Returns
    -------
    samples : np.ndarray, float32, shape (channels, n)
    sample_rate : int, Hz

    Raises
    ------
    AudioDecodeError
        Missing, empty or non-audio files (headerless ones included, and those cut within the header
        or before their first block of audio), sample rates
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
            sr = handle.samplerate
            _check_sample_rate(path, sr)
            total = stated_frames(path, handle)
            keep = _frames_to_keep(total, sr, max_seconds)
            samples = _read_frames(handle, keep)
            shortfall_allowed = MPEG_FRAME_SLACK if handle.format == "MP3" else 0
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_error:
        samples, sr = _decode_fallback(path, sf_error)
        _check_sample_rate(path, sr)
        total = samples.shape[-1]
        keep = _frames_to_keep(total, sr, max_seconds)
        samples = samples[:, :keep]
        shortfall_allowed = 0
    decoded = samples.shape[-1]
    if 0 < decoded < keep - shortfall_allowed:
        warnings.warn(AudioTruncatedWarning(
            f"{path} is truncated or damaged: its header states {total} frames ({total / sr:.2f} s) but only "
            f"{decoded} ({decoded / sr:.2f} s) decode; the audio that decodes is used"
        ), stacklevel=2)
    elif keep < total:
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


def stated_frames(path: Path, handle: sf.SoundFile) -> int:
    """The number of frames ``path``'s header states.

    libsndfile reports a truncated WAV's frames as those its bytes hold; the ``data`` chunk's size
    in the header states how many were written. For other formats libsndfile's count is the
    header's (FLAC's STREAMINFO, an MP3's Xing/Info header).
    """
    if handle.format not in ("WAV", "WAVEX"):
        return handle.frames
    chunk = riff_data_chunk(path)
    if chunk is None:
        return handle.frames
    held = path.stat().st_size - chunk.offset
    if chunk.size <= held or held <= 0 or handle.frames == 0:
        return handle.frames
    if chunk.format_tag in _FIXED_FRAME_FORMATS and chunk.block_align > 0:
        return chunk.size // chunk.block_align
    # A block codec (ADPCM): frames in proportion to the bytes, as the file holds them (within a
    # block; the ``fact`` chunk that should state them is wrong in files libsndfile writes).
    return handle.frames + round((chunk.size - held) * handle.frames / held)


#: WAVE format tags whose frames all take ``block_align`` bytes: PCM, IEEE float, A-law, mu-law
#: and WAVE_FORMAT_EXTENSIBLE (which libsndfile reads only with those inside).
_FIXED_FRAME_FORMATS = (0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE)
#: Sizes that streaming WAV writers put in a ``data`` chunk header whose length they do not know.
_UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)


class RiffData(NamedTuple):
    """A RIFF/WAVE file's ``data`` chunk as its header declares it (``riff_data_chunk``)."""

    offset: int  #: of the first sample byte
    size: int  #: bytes, as declared
    format_tag: int  #: the ``fmt`` chunk's, 0 when it comes after ``data``
    block_align: int  #: bytes per frame (per block for ADPCM), 0 when unknown


def riff_data_chunk(path) -> RiffData | None:
    """The ``data`` chunk of a RIFF/WAVE file, as its header declares it.

    Returns
    -------
    RiffData, or None for a file that is not little-endian RIFF/WAVE, has no ``data`` chunk
    header, or declares a placeholder size (``_UNKNOWN_RIFF_SIZES``).
    """
    format_tag = block_align = 0
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while len(chunk := handle.read(8)) == 8:
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                return None if size in _UNKNOWN_RIFF_SIZES else RiffData(handle.tell(), size, format_tag, block_align)
            skip = size + (size & 1)  # chunks are padded to an even size
            if chunk[:4] == b"fmt " and size >= 14:
                fmt = handle.read(14)
                format_tag, block_align = int.from_bytes(fmt[:2], "little"), int.from_bytes(fmt[12:14], "little")
                skip -= len(fmt)
            handle.seek(skip, 1)
    return None


def _read_frames(handle: sf.SoundFile, frames: int) -> np.ndarray:
    """Up to ``frames`` frames from the start, (channels, n) float32.

    libsndfile fails a whole read when the stream breaks off (a truncated FLAC "lost sync"); the
    read is then repeated in small blocks, keeping those before the break. A stream where not one
    block decodes raises the first error. The blocks come from the file opened afresh: after a
    failed read, libsndfile 1.2.0 also fails every seek on the same handle.
    """
    try:
        return handle.read(frames, dtype="float32", always_2d=True).T
    except sf.LibsndfileError as error:
        blocks, read = [], 0
        try:
            with sf.SoundFile(handle.name) as fresh:
                while read < frames:
                    block = fresh.read(min(SALVAGE_BLOCK_FRAMES, frames - read), dtype="float32", always_2d=True)
                    if not len(block):
                        break
                    blocks.append(block)
                    read += len(block)
        except sf.LibsndfileError:
            pass
        if not blocks:
            raise error
        return np.concatenate(blocks).T


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


#: Frames per write call of ``write_audio``: libsndfile 1.2.2 crashes (a segmentation fault)
#: encoding about two million frames or more of Ogg Vorbis in one call (90 s at 32 kHz).
WRITE_BLOCK = 1 << 15


def write_audio(target, x: np.ndarray, sample_rate: int, file_format: str, subtype: str) -> None:
    """Write mono float32 samples ``x`` to ``target`` (a path or a binary file object) in
    soundfile's ``file_format`` and ``subtype`` (``"OGG", "VORBIS"``; ``"WAV", "PCM_16"``), in
    blocks of ``WRITE_BLOCK`` frames."""
    with sf.SoundFile(target, "w", sample_rate, 1, format=file_format, subtype=subtype) as out:
        for start in range(0, len(x), WRITE_BLOCK):
            out.write(x[start:start + WRITE_BLOCK])
