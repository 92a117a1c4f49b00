"""Tiles: how a clip's log-mel is cut into fixed-size network inputs, and how probabilities
of several models are combined.

A clip's log-mel is padded on the time axis with its minimum and cut into tiles of ``tile``
frames (the model's ``[input] tile_frames``; the method's 256) at a step of ``step`` frames; each
tile gets its deltas (``freesound.audio.network_input``). With ``[input] whole_clip`` the whole
log-mel is one input instead (``whole_clip_input``), as the AudioSet taggers predict.
"""

from __future__ import annotations

import math

import numpy as np

from freesound.audio.network_input import to_network_input_batch

#: The method's tile length in frames (``InputConfig.tile_frames``' default).
TILE = 256


def tile_layout(width: int, step: int = 64, tile: int = TILE) -> tuple[int, int, int]:
    """How a clip of ``width`` frames is tiled.

    ``n = max(1, ceil((W - (tile - step)) / step))`` tiles starting at 0, step, 2·step, ...
    after padding ``extra = step·n - (W - (tile - step))`` frames: ``extra // 2`` on the left,
    the rest on the right.

    Returns
    -------
    (n_tiles, pad_left, pad_right)
    """
    if width < 1 or step < 1 or step > tile:
        raise ValueError(f"cannot tile width={width} with step={step} and tile={tile}")
    covered = width - (tile - step)
    n_tiles = max(1, math.ceil(covered / step))
    extra = step * n_tiles - covered
    return n_tiles, extra // 2, extra - extra // 2


def make_tiles(logmel: np.ndarray, step: int = 64, tile: int = TILE, freq_channel: bool = False) -> np.ndarray:
    """Cut a log-mel into network-input tiles.

    Parameters
    ----------
    logmel : np.ndarray, float32 (n_mels, frames)
    freq_channel : bool, append the frequency-position plane (``[input] freq_channel``)

    Returns
    -------
    np.ndarray, float32 (n_tiles, 3, n_mels, tile): each tile with its deltas, /100
    (``(n_tiles, 4, n_mels, tile)`` with ``freq_channel``).
    """
    n_tiles, left, right = tile_layout(logmel.shape[1], step, tile)
    padded = np.pad(logmel, ((0, 0), (left, right)), mode="constant", constant_values=logmel.min())
    # The tiles as overlapping views (n_mels, n_tiles, tile); their deltas in one vectorised call.
    windows = np.lib.stride_tricks.sliding_window_view(padded, tile, axis=1)[:, ::step][:, :n_tiles]
    return to_network_input_batch(windows.transpose(1, 0, 2), freq_channel)


def whole_clip_input(logmel: np.ndarray, min_frames: int = TILE, freq_channel: bool = False) -> np.ndarray:
    """A clip's whole log-mel as one network input (``[input] whole_clip``): the AudioSet taggers'
    one pass over the clip.

    A clip shorter than ``min_frames`` (the experiment's tile) is padded to it with its minimum as
    its single tile would be (``tile_layout``); a longer one keeps all its frames.

    Returns
    -------
    np.ndarray, float32 (1, 3, n_mels, max(frames, min_frames)) with its deltas, /100
    (``(1, 4, ...)`` with ``freq_channel``).
    """
    width = logmel.shape[1]
    if width < min_frames:
        _, left, right = tile_layout(width, min_frames, min_frames)
        logmel = np.pad(logmel, ((0, 0), (left, right)), mode="constant", constant_values=logmel.min())
    return to_network_input_batch(logmel[None], freq_channel)


def geometric_mean(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Geometric mean of probabilities along ``axis``, computed in float64 logs.

    Returns float32 for float32 (or narrower) input, float64 for float64 input: a blend of
    float64 scores is not rounded before it is ranked.
    """
    logs = np.log(np.clip(probabilities.astype(np.float64), 1e-12, None))
    return np.exp(logs.mean(axis=axis)).astype(np.result_type(probabilities.dtype, np.float32))
