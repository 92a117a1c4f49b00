"""The batch-level half of the train-time pipeline on the training device (``train.augment_on_device``).

Most of a training sample's CPU time is the deltas (``librosa.feature.delta``, two Savitzky-Golay
filters over a 128x256 window), computed for every sample and again for its mixing partner, so
a worker delivers several times more samples of the window part alone (``benchmarks/RESULTS.md``,
"Scaling"). With this setting a DataLoader worker stops at the window
(``freesound.training.sampling.WindowSamplingDataset``: pad, crop, resized crop, and the random
draws of SpecAugment and the mixer) and ``BatchAugment`` does the rest on a whole batch on the
device, from the same draws:

    SpecAugment masks (filled with each window's minimum) -> window, delta, delta2 (/100)
    -> mix with the partner: w_self * image + w_other * partner (per frame), then the bands
       SpecMix marked taken from the partner whole -> [the frequency-position plane appended]

The deltas are one matrix product each along time: ``delta_matrix`` is librosa's own filter
applied to the identity, edges (``mode="interp"``) included, so ``X @ D`` is
``librosa.feature.delta(X)`` up to float32 rounding. The images equal the CPU pipeline's for the
same seed, epoch and index (``tests/test_device_augment.py``), so training draws from the same
distribution either way.
"""

from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import torch

from freesound.audio.network_input import DELTA_WIDTH, INPUT_SCALE, freq_positions


@lru_cache(maxsize=8)
def delta_matrix(frames: int, order: int) -> np.ndarray:
    """The ``(frames, frames)`` float64 matrix ``D`` with ``x @ D == librosa.feature.delta(x,
    width=9, order=order)`` for every ``x`` of ``frames`` frames along its last axis.

    The delta is linear in ``x`` (a least-squares polynomial fit's derivative), so row ``i`` of
    ``D`` is the delta of the unit impulse at frame ``i``.
    """
    return librosa.feature.delta(np.eye(frames), width=DELTA_WIDTH, order=order, axis=-1)


def mask_spans(starts: torch.Tensor, lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean ``(..., size)``: position ``j`` lies in some span ``[start, start + length)``.

    ``starts`` and ``lengths`` are integer ``(..., M)`` (M spans each); a zero length covers nothing.
    """
    positions = torch.arange(size, device=starts.device)
    inside = (positions >= starts[..., None]) & (positions < (starts + lengths)[..., None])
    return inside.any(dim=-2)


class BatchAugment:
    """SpecAugment, deltas and mixing for a batch of ``WindowSamplingDataset`` items on ``device``.

    ``augment(windows, masks, weights, partner_bands)`` with ``windows`` float32 ``(B, 2, n_mels, W)`` (each
    sample and its partner), ``masks`` int64 ``(B, 2, M, 4)`` (rows ``(f0, bands, t0, frames)``),
    ``weights`` float32 ``(B, 2, W)`` and ``partner_bands`` bool ``(B, n_mels)`` (taken whole from
    the partner) returns the network inputs, float32 ``(B, 3, n_mels, W)`` in channels-last layout on
    ``device``; ``(B, 4, n_mels, W)`` with ``freq_channel`` (the plane appended after mixing).

    The matrix products run in float32 even where TF32 is allowed for matrix products, so the
    deltas keep float32's precision.
    """

    def __init__(self, frames: int, device, freq_channel: bool = False):
        self.device = torch.device(device)
        self.deltas = torch.from_numpy(np.stack([delta_matrix(frames, 1), delta_matrix(frames, 2)])).to(
            self.device, torch.float32)
        self.freq_channel = freq_channel

    def __call__(self, windows: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor,
                 partner_bands: torch.Tensor) -> torch.Tensor:
        windows, masks, weights, partner_bands = (t.to(self.device, non_blocking=True)
                                                  for t in (windows, masks, weights, partner_bands))
        n_mels, frames = windows.shape[-2:]
        fill = windows.amin(dim=(-2, -1), keepdim=True)
        bands = mask_spans(masks[..., 0], masks[..., 1], n_mels)
        spans = mask_spans(masks[..., 2], masks[..., 3], frames)
        masked = torch.where(bands[..., :, None] | spans[..., None, :], fill, windows)
        with _full_float32_matmul():
            first, second = masked @ self.deltas[0], masked @ self.deltas[1]
        images = torch.stack([masked, first, second], dim=2) / INPUT_SCALE
        mixed = weights[:, 0, None, None, :] * images[:, 0] + weights[:, 1, None, None, :] * images[:, 1]
        mixed = torch.where(partner_bands[:, None, :, None], images[:, 1], mixed)
        if self.freq_channel:
            plane = torch.from_numpy(freq_positions(n_mels)).to(self.device)[:, None].expand(n_mels, frames)
            mixed = torch.cat([mixed, plane.expand(len(mixed), 1, n_mels, frames)], dim=1)
        return mixed.contiguous(memory_format=torch.channels_last)


class _full_float32_matmul:
    """Within the context, CUDA matrix products in full float32 (not TF32), restored on exit."""

    def __enter__(self):
        self.previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc_info):
        torch.backends.cuda.matmul.allow_tf32 = self.previous


class AugmentedBatches:
    """A DataLoader over ``WindowSamplingDataset`` seen as ``(images, targets, noisy)`` batches on
    the device: each batch goes through ``augment`` (a ``BatchAugment``). Has the loader's length."""

    def __init__(self, loader, augment: BatchAugment):
        self.loader = loader
        self.augment = augment

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for windows, masks, weights, bands, targets, noisy in self.loader:
            yield self.augment(windows, masks, weights, bands), targets, noisy
