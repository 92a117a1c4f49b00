"""Windows: a long recording's log-mel cut into fixed windows of seconds, each predicted on its own.

BirdCLEF scores one row per 5-second window of a soundscape, named ``<soundscape>_<end second>``.
Here a window of ``window`` seconds starts every ``hop`` seconds (default ``hop = window``); window
``k`` covers the time ``[k·hop, k·hop + window)``. A log-mel frame ``i`` (centred frames) is centred
on sample ``i·hop_length``, at ``i·hop_length / sample_rate`` seconds, and belongs to the windows
whose span holds that time: window ``k`` holds the frames ``ceil(k·hop·sr / hop_length)`` up to,
not including, ``ceil((k·hop + window)·sr / hop_length)`` (times rounded to whole samples first), so
with ``hop = window`` every frame belongs to exactly one window.

Windows follow each other until one reaches the recording's end (the last is the first window
whose end is at or past it). The recording's length is read from the log-mel as the time of its
last frame's centre, ``(frames - 1)·hop_length / sample_rate``, which is at most one hop length
(16 ms at the method's 690 samples) short of the file's true length: a file of an exact multiple
of ``hop`` seconds (BirdCLEF's one-minute soundscapes: 12 windows of 5 s) gets no extra window.
A longer remainder gets a last, *partial* window holding the frames up to the end; it is
predicted like any short clip, its tiles padded with its minimum (as ``freesound.predict.tiles``
pads every clip), and its row named by its nominal end (a 22-second file's windows end at 5, 10,
15, 20 and 25).

Windows are predicted from the untrimmed recording (``freesound.predict.files.read_untrimmed_logmel``):
trimming leading silence, as the clip front end does, would shift every window in time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freesound.config import AudioConfig
from freesound.errors import FreesoundError


@dataclass(frozen=True)
class WindowSpec:
    """Windows of ``seconds`` every ``hop`` seconds (``hop`` defaults to ``seconds``).

    Raises
    ------
    FreesoundError
        A window or hop that is not positive, or a hop longer than the window (frames between
        windows would go unseen).
    """

    seconds: float
    hop: float | None = None

    def __post_init__(self):
        if not (isinstance(self.seconds, (int, float)) and 0 < self.seconds < math.inf):
            raise FreesoundError(f"the window must be a positive number of seconds, got {self.seconds!r}")
        hop = self.seconds if self.hop is None else self.hop
        if not (isinstance(hop, (int, float)) and 0 < hop <= self.seconds):
            raise FreesoundError(f"the hop between windows must be positive and at most the window of "
                                 f"{self.seconds:g} s, got {hop!r}")
        object.__setattr__(self, "hop", float(hop))
        object.__setattr__(self, "seconds", float(self.seconds))


def _first_frame(seconds: float, config: AudioConfig) -> int:
    """The first frame whose centre is at or after ``seconds``."""
    sample = int(round(seconds * config.sample_rate))
    return -(-sample // config.hop_length)


def window_bounds(n_frames: int, spec: WindowSpec, config: AudioConfig) -> list:
    """The frames of each window of a log-mel of ``n_frames`` frames (see the module docstring).

    Returns
    -------
    list of (start_frame, end_frame, end_second): frames ``start_frame:end_frame`` (the last
    window's end clipped to ``n_frames``), and the window's nominal end in seconds

    Raises
    ------
    ValueError
        ``n_frames`` below 1.
    FreesoundError
        A hop shorter than one log-mel frame: windows closer than the frames would repeat one
        another, and a minute of audio would make tens of thousands of them.
    """
    if n_frames < 1:
        raise ValueError(f"a log-mel needs at least one frame, got {n_frames}")
    frame_seconds = config.hop_length / config.sample_rate
    if spec.hop < frame_seconds:
        raise FreesoundError(f"windows every {spec.hop:g} s are closer than the log-mel's frames "
                             f"({frame_seconds:.4g} s apart); choose a window and hop of at least one frame")
    length = (n_frames - 1) * config.hop_length / config.sample_rate
    # Windows until one reaches the end; a tolerance keeps float rounding of k·hop from
    # adding a window at an exact multiple.
    count = 1 + max(0, math.ceil((length - spec.seconds) / spec.hop - 1e-9))
    bounds = []
    for k in range(count):
        start = k * spec.hop
        end = start + spec.seconds
        first, last = _first_frame(start, config), min(_first_frame(end, config), n_frames)
        bounds.append((first, max(last, first + 1), end))
    return bounds


def window_widths(widths, spec: WindowSpec, config: AudioConfig) -> np.ndarray:
    """The log-mel widths (frames) of every window of recordings of ``widths`` frames, in order
    (``window_bounds``), int64: what the kernel's time budget and ``build-kernel --estimate``
    count, each window being predicted as a clip of its own."""
    return np.asarray([end - start for width in widths for start, end, _ in window_bounds(int(width), spec, config)],
                      dtype=np.int64)


def format_second(seconds: float) -> str:
    """``5`` for 5.0, ``2.5`` for 2.5: an integer when the time is one (BirdCLEF's row ids)."""
    rounded = round(seconds, 6)
    return str(int(rounded)) if rounded == int(rounded) else f"{rounded:g}"


def window_row_ids(name: str, bounds: list) -> list:
    """``<file stem>_<end second>`` for each window of ``window_bounds``: ``name`` (a file name, or
    a path relative to a folder) without its extension, so ``soundscape_1.ogg`` gives
    ``soundscape_1_5``, ``soundscape_1_10``, ... and ``a/x.wav`` gives ``a/x_5``, ..."""
    stem = Path(name).with_suffix("").as_posix()
    return [f"{stem}_{format_second(end)}" for _, _, end in bounds]


def split_windows(logmel: np.ndarray, spec: WindowSpec, config: AudioConfig) -> tuple[list, list]:
    """A log-mel's windows: ``(list of (n_mels, frames) views, window_bounds)``."""
    bounds = window_bounds(logmel.shape[1], spec, config)
    return [logmel[:, start:end] for start, end, _ in bounds], bounds
