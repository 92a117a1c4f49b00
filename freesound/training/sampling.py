"""Torch datasets for training: sources of clips, the per-epoch sampler, and validation.

Randomness: every sample draws from ``numpy.random.default_rng((seed, epoch, index))``, so an
epoch's samples do not depend on the number of DataLoader workers or on what ran before; that
is what makes a seeded run reproducible and a resumed run identical to an uninterrupted one.

Distributed training splits every batch, not the epoch: ``EpochShard`` gives process ``rank`` of
``world_size`` its slice of each batch of the one-process run, so the processes' batches together
are exactly the samples that one process would train on in that step, whatever their number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from freesound.audio.network_input import with_freq_channel


@dataclass
class ClipSource:
    """A set of clips drawn from together.

    Attributes
    ----------
    name : str, e.g. "curated"
    specs : sequence of np.ndarray, float32 log-mels (n_mels, frames): a list, or a ``LazyLogmels``
        that reads each from the feature cache when indexed
    targets : np.ndarray, float32 (N, C)
    noisy : bool, whether the loss treats its labels as noisy
    """

    name: str
    specs: list
    targets: np.ndarray
    noisy: bool

    def __len__(self) -> int:
        return len(self.specs)


class SamplingDataset(TorchDataset):
    """``size`` samples an epoch, each from a source chosen with the given probabilities.

    A sample is a transformed window of a random clip of that source, then possibly mixed
    (``mixer``) with another transformed clip of the same source; with ``freq_channel`` the
    frequency-position plane is appended last, after every augmentation, so nothing alters it.

    Items are ``(image (3, n_mels, crop) float32, target (C,) float32, noisy () bool)``, the
    image ``(4, n_mels, crop)`` with ``freq_channel``.
    """

    def __init__(self, sources, probs, size: int, transform, mixer=None, seed: int = 0, freq_channel: bool = False):
        kept = [(source, p) for source, p in zip(sources, probs) if len(source) > 0 and p > 0]
        if not kept:
            raise ValueError("no training clips: every sampling source is empty or has probability 0")
        self.sources = [source for source, _ in kept]
        weights = np.array([p for _, p in kept], dtype=np.float64)
        self.probs = weights / weights.sum()
        self.size = size
        self.transform = transform
        self.mixer = mixer
        self.seed = seed
        self.freq_channel = freq_channel
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def _transformed(self, source: ClipSource, rng):
        index = int(rng.integers(len(source)))
        return self.transform(source.specs[index], rng), source.targets[index]

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        source = self.sources[rng.choice(len(self.sources), p=self.probs)]
        image, target = self._transformed(source, rng)
        if self.mixer is not None:
            image, target = self.mixer(image, target, lambda: self._transformed(source, rng), rng)
        if self.freq_channel:
            image = with_freq_channel(image)
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(np.asarray(target, dtype=np.float32)),
            torch.tensor(source.noisy),
        )


class WindowSamplingDataset(SamplingDataset):
    """``SamplingDataset``'s samples with their batch-level work left for the training device.

    ``transform`` is a ``freesound.training.augment.WindowTransform`` (``(spec, rng) -> (window,
    masks)``) and ``mixer`` one whose ``choose``/``weights``/``mix_targets`` are used
    (``freesound.training.mixers``). The same random numbers are drawn in the same order as
    ``SamplingDataset`` draws them with the matching full transform, so
    ``freesound.training.device_augment.BatchAugment`` turns a batch of these items into that
    dataset's images for the same indices (to float rounding of the deltas). ``freq_channel`` is
    ``BatchAugment``'s to apply, not this dataset's.

    Items are ``(windows (2, n_mels, W) float32, masks (2, M, 4) int64, weights (2, W) float32,
    bands (n_mels,) bool, target (C,) float32, noisy () bool)``: the sample's window and its
    mixing partner's (zeros when it is not mixed), their SpecAugment masks, the per-frame weights
    of the two in the mix (``(1, 0)`` when not mixed) and the mel bands taken whole from the
    partner (SpecMix's; none otherwise); the target is already mixed.
    """

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        source = self.sources[rng.choice(len(self.sources), p=self.probs)]
        (window, masks), target = self._transformed(source, rng)
        mixer = self.mixer.choose(rng) if self.mixer is not None else None
        if mixer is None:
            other, other_masks = np.zeros_like(window), np.zeros_like(masks)
            weights = (np.ones(window.shape[-1], np.float32), np.zeros(window.shape[-1], np.float32),
                       np.zeros(window.shape[0], dtype=bool))
        else:
            (other, other_masks), other_target = self._transformed(source, rng)
            weights = mixer.mix_weights(window.shape, rng)
            target = mixer.mix_targets(target, other_target, weights)
        return (
            torch.from_numpy(np.stack([window, other])),
            torch.from_numpy(np.stack([masks, other_masks])),
            torch.from_numpy(np.stack(weights[:2]).astype(np.float32, copy=False)),
            torch.from_numpy(weights[2]),
            torch.from_numpy(np.asarray(target, dtype=np.float32)),
            torch.tensor(source.noisy),
        )


class EpochShard(Sampler):
    """The sample indices one of ``world_size`` processes trains on in an epoch of ``size`` samples.

    The one-process run trains ``size // batch_size`` batches of ``batch_size`` consecutive
    indices (the last, partial batch dropped). Each of those batches is cut into ``world_size``
    consecutive slices of ``batch_size // world_size`` indices, and process ``rank`` takes slice
    ``rank`` of every batch, in batch order. So the slices are disjoint, their union in step ``k``
    is the one-process run's batch ``k``, and since a sample is drawn from ``(seed, epoch, index)``
    each process's samples do not depend on the others. With ``world_size=1`` it yields
    ``0 .. size // batch_size * batch_size - 1``.

    Use it with ``DataLoader(batch_size=batch_size // world_size, drop_last=True)``.

    Raises
    ------
    ValueError
        ``batch_size`` is not a multiple of ``world_size`` (the message says so), or ``rank`` is
        not in ``[0, world_size)``.
    """

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if batch_size % world_size:
            raise ValueError(f"a batch of {batch_size} samples cannot be split evenly over {world_size} processes: "
                             f"set train.batch_size to a multiple of {world_size}")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.local_batch = batch_size // world_size

    def __len__(self) -> int:
        return self.size // self.batch_size * self.local_batch

    def __iter__(self):
        start = self.rank * self.local_batch
        for batch in range(self.size // self.batch_size):
            first = batch * self.batch_size + start
            yield from range(first, first + self.local_batch)


class ValidationDataset(TorchDataset):
    """Each clip once, through a deterministic transform (centre crop)."""

    def __init__(self, specs, targets: np.ndarray, transform):
        self.specs = specs
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int):
        image = self.transform(self.specs[index], np.random.default_rng(0))
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(self.targets[index])
