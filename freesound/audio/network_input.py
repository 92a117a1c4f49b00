"""The network's input: a log-mel window stacked with its deltas, scaled as the original did.

Shared by training (``freesound.training.augment``) and inference (``freesound.predict.tiles``),
so train and test inputs are built the same way. With ``[input] freq_channel`` a fourth plane
holds each row's frequency position (``freq_positions``), appended after all augmentation.
"""

from __future__ import annotations

import librosa
import librosa.feature  # noqa: F401  (eager: librosa loads submodules lazily, in every worker)
import numpy as np

#: Width (frames) of the delta filters and the scale the three channels are divided by.
DELTA_WIDTH = 9
INPUT_SCALE = 100.0


def freq_positions(n_mels: int) -> np.ndarray:
    """The frequency-position plane's values, one per mel band: float32 ``(n_mels,)`` rising
    linearly from -1 (band 0, the lowest frequency) to 1 (the highest band).

    The CoordConv coordinate range (Liu et al. 2018, "An intriguing failing of convolutional
    neural networks and the CoordConv solution"), as the FAT2019 3rd place gave its CNN the
    frequency it looks at. A single band gets -1.
    """
    return np.linspace(-1.0, 1.0, n_mels, dtype=np.float32) if n_mels > 1 else np.full(n_mels, -1.0, np.float32)


def with_freq_channel(images: np.ndarray) -> np.ndarray:
    """``images`` (``(..., 3, n_mels, frames)`` float32) with the frequency-position plane appended:
    ``(..., 4, n_mels, frames)``, plane ``[..., 3, f, t] = freq_positions(n_mels)[f]``."""
    plane = np.broadcast_to(freq_positions(images.shape[-2])[:, None], images.shape[-2:])
    plane = np.broadcast_to(plane, images.shape[:-3] + (1,) + images.shape[-2:])
    return np.concatenate([images, plane.astype(images.dtype, copy=False)], axis=-3)


def to_network_input(window: np.ndarray, freq_channel: bool = False) -> np.ndarray:
    """Stack a log-mel window with its first and second deltas, scaled for the network.

    Parameters
    ----------
    window : np.ndarray
        Log-mel window ``(n_mels, frames)`` in dB, ``frames >= 9`` (the delta filter's width).

    freq_channel : bool
        Append the frequency-position plane (``with_freq_channel``), not scaled.

    Returns
    -------
    np.ndarray
        float32 ``(3, n_mels, frames)``: the window, ``librosa.feature.delta(width=9)`` and the
        order-2 delta (both along time, computed on this window alone), all divided by 100;
        ``(4, n_mels, frames)`` with ``freq_channel``.
    """
    if window.ndim != 2 or 0 in window.shape:
        raise ValueError(f"expected a non-empty (n_mels, frames) spectrogram, got shape {window.shape}")
    if window.shape[1] < DELTA_WIDTH:
        raise ValueError(f"deltas need at least {DELTA_WIDTH} frames, got {window.shape[1]}")
    delta = librosa.feature.delta(window, width=DELTA_WIDTH)
    delta2 = librosa.feature.delta(window, order=2, width=DELTA_WIDTH)
    # Cast before scaling, as the original did, so imported weights see the same inputs.
    image = np.stack([window, delta, delta2]).astype(np.float32) / np.float32(INPUT_SCALE)
    return with_freq_channel(image) if freq_channel else image


def to_network_input_batch(windows: np.ndarray, freq_channel: bool = False) -> np.ndarray:
    """``to_network_input`` of a stack of windows in one go.

    Parameters
    ----------
    windows : np.ndarray
        ``(N, n_mels, frames)`` log-mel windows in dB (any strides: a stack of overlapping views
        works), ``frames >= 9``.

    Returns
    -------
    np.ndarray
        float32 ``(N, 3, n_mels, frames)`` (``(N, 4, ...)`` with ``freq_channel``); item ``i``
        equals ``to_network_input(windows[i], freq_channel)``.
        The deltas are the same Savitzky-Golay filters along time, applied to every window at
        once; each window's deltas still see that window alone.
    """
    windows = np.asarray(windows)
    if windows.ndim != 3 or 0 in windows.shape:
        raise ValueError(f"expected a non-empty (N, n_mels, frames) stack of windows, got shape {windows.shape}")
    if windows.shape[2] < DELTA_WIDTH:
        raise ValueError(f"deltas need at least {DELTA_WIDTH} frames, got {windows.shape[2]}")
    out = np.empty((windows.shape[0], 4 if freq_channel else 3) + windows.shape[1:], dtype=np.float32)
    out[:, 0] = windows
    out[:, 1] = librosa.feature.delta(windows, width=DELTA_WIDTH, axis=-1)
    out[:, 2] = librosa.feature.delta(windows, order=2, width=DELTA_WIDTH, axis=-1)
    # Same cast-then-scale order as ``to_network_input``.
    out[:, :3] /= np.float32(INPUT_SCALE)
    if freq_channel:
        out[:, 3] = freq_positions(windows.shape[1])[:, None]
    return out

