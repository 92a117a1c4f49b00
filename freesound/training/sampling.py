"""Torch datasets for training: sources of clips, the per-epoch sampler, and validation.

Randomness: every sample draws from ``numpy.random.default_rng((seed, epoch, index))``, so an
epoch's samples do not depend on the number of DataLoader workers or on what ran before; that
is what makes a seeded run reproducible and a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset


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
    (``mixer``) with another transformed clip of the same source.

    Items are ``(image (3, n_mels, crop) float32, target (C,) float32, noisy () bool)``.
    """

    def __init__(self, sources, probs, size: int, transform, mixer=None, seed: int = 0):
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
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(np.asarray(target, dtype=np.float32)),
            torch.tensor(source.noisy),
        )


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
