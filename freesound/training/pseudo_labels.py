"""Pseudo-labels for clips without labels: a teacher's predictions as a student's soft targets.

The pool is the dataset's unlabelled clips (``Dataset.unlabeled``: ``train_unlabeled/``, or the
folder ``[self_training] unlabeled`` names), less any whose audio is also a clip that is scored
(``unlabeled_pool``). The teacher (``[self_training] teacher``, a trained experiment) predicts
every pool clip once per fold model; the probabilities are cached in
``predictions/<teacher>/teacher_unlabeled.npz``, keyed by the teacher's weight files and the pool.

A student fold ``k`` trains on ``sharpen(p, power)`` for the clips ``confident(p, floor)`` keeps,
where ``p`` is the fold models' geometric mean (``teacher_folds = "all"``) or the teacher's
fold-``k`` model's prediction (``"same"``). ``PseudoLabels`` is the fold run's part
(``freesound.training.fold_options.FoldOption``) that adds the pool as a sampling source and,
with ``mix_prob``, mixes training samples with pool clips (``PseudoMix``).

Sharpening: multi-label sigmoid outputs are not a distribution over classes, so ``p ** power`` is
not renormalised (renormalising would turn a clip's two confident labels into two halves).
``power > 1`` pushes the uncertain probabilities down much more than the confident ones
(0.9 -> 0.81 but 0.3 -> 0.09 at power 2): the "power transformation" of pseudo-labels that the
BirdCLEF 2025 winner credited with stopping noise from piling up over self-training rounds
(Kaggle Winners' Walkthroughs, BirdCLEF 2025, team Nikita Babych).
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from freesound.config import ConfigError, Experiment
from freesound.data import features
from freesound.data.dataset import UNLABELED, Dataset, with_unlabeled
from freesound.data.features import cached_bytes, ensure_features, load_features
from freesound.data.folds import recorded_folds
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.fileio import atomic_path
from freesound.paths import experiment_checkpoints, experiment_dir, predictions_dir, weights_root
from freesound.predict import Tagger, geometric_mean
from freesound.training.context import RunContext
from freesound.training.fold_options import FoldOption
from freesound.training.sampling import ClipSource
from freesound.training.teacher import predict_noisy

POOL_CACHE = "teacher_unlabeled.npz"


# --------------------------------------------------------------------------------------------
# Pure functions: sharpening, the confidence floor, how pseudo-labels changed


def sharpen(probs: np.ndarray, power: float) -> np.ndarray:
    """``probs ** power``, elementwise, not renormalised (the module docstring), float32 ``(N, C)``.

    ``power = 1`` keeps the probabilities; ``power > 1`` sharpens (lowers the uncertain ones most).
    """
    return np.power(np.asarray(probs, np.float64), power).astype(np.float32)


def confident(probs: np.ndarray, floor: float) -> np.ndarray:
    """Bool ``(N,)``: the clips whose highest probability (before sharpening) is at least ``floor``."""
    probs = np.asarray(probs)
    if probs.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return probs.max(axis=1) >= floor


def pseudo_targets(probs: np.ndarray, power: float, floor: float) -> tuple:
    """The soft targets of a pool: ``(kept (N,) bool, targets (kept.sum(), C) float32)``, the clips
    ``confident(probs, floor)`` keeps, sharpened (``sharpen(probs, power)``)."""
    kept = confident(probs, floor)
    return kept, sharpen(np.asarray(probs)[kept], power)


def top_label_flips(before: np.ndarray, after: np.ndarray) -> float:
    """The share of clips whose most probable class differs between two ``(N, C)`` predictions of
    the same clips (0.0 for no clips)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"predictions of different shapes {before.shape} and {after.shape}")
    if before.shape[0] == 0:
        return 0.0
    return float(np.mean(before.argmax(axis=1) != after.argmax(axis=1)))


# --------------------------------------------------------------------------------------------
# The guard: a clip that is scored never joins the pool


def content_hash(path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scored_duplicates(dataset: Dataset) -> list:
    """The unlabelled clips whose audio is byte for byte a curated clip's (each one a validation
    clip of some fold) or a test clip's, in pool order.

    Compared by content, not by name: a copy under another name is the same clip, and another
    recording under a clip's name is not. Only files whose size matches a scored file's are hashed.
    """
    scored = [path for split in ("train_curated", "test") for path in dataset.paths(split) if path.is_file()]
    pool = dataset.paths(UNLABELED)
    sizes = {path.stat().st_size for path in scored}
    candidates = [(fname, path) for fname, path in zip(dataset.unlabeled, pool) if path.stat().st_size in sizes]
    if not candidates:
        return []
    sizes = {path.stat().st_size for _, path in candidates}
    hashes = {content_hash(path) for path in scored if path.stat().st_size in sizes}
    return [fname for fname, path in candidates if content_hash(path) in hashes]


#: The pools ``unlabeled_pool`` has warned of in this process: its folds and rounds warn once.
_WARNED: set = set()


def unlabeled_pool(dataset: Dataset) -> list:
    """The pool's clips (``dataset.unlabeled`` order) without ``scored_duplicates``, which are left
    out with a ``FreesoundWarning`` naming how many and the first three (once per process).

    Raises
    ------
    FreesoundError
        The dataset has no unlabelled clips.
    """
    if not dataset.unlabeled:
        raise FreesoundError(f"{dataset.root} has no unlabelled clips (train_unlabeled.csv and train_unlabeled/); "
                             "add them with `freesound prepare ... --unlabeled DIR` or give --unlabeled DIR")
    dropped = set(scored_duplicates(dataset))
    key = (str(dataset.audio_dir(UNLABELED).resolve()), tuple(sorted(dropped)))
    if dropped and key not in _WARNED:
        _WARNED.add(key)
        shown = ", ".join(sorted(dropped)[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
        warnings.warn(f"{len(dropped)} unlabelled clip(s) are also validation or test clips (the same audio): "
                      f"{shown}; left out of the pseudo-labelled pool, so no model trains on a clip it is scored on",
                      FreesoundWarning, stacklevel=2)
    return [fname for fname in dataset.unlabeled if fname not in dropped]


# --------------------------------------------------------------------------------------------
# The teacher's predictions of the pool


def _teacher_checkpoints(work, teacher: str) -> dict:
    """fold -> the teacher's checkpoint (every fold of ``folds.csv``)."""
    try:
        paths = experiment_checkpoints(experiment_dir(work, teacher), required=recorded_folds(work))
    except FreesoundError as error:
        raise FreesoundError(f"teacher {teacher!r}: {error}; train it first (freesound train {teacher} "
                             f"--data ...)") from None
    return {int(path.parent.name.removeprefix("fold_")): path for path in paths}


def _pool_key(checkpoints: dict, dataset: Dataset, work, fnames) -> str:
    root = weights_root(work)
    files = [[fold, path.relative_to(root).as_posix(), path.stat().st_size, path.stat().st_mtime_ns]
             for fold, path in sorted(checkpoints.items())]
    return json.dumps({"weights": files, "pool": str(dataset.audio_dir(UNLABELED).resolve()), "fnames": list(fnames)})


def pool_predictions(teacher: str, dataset: Dataset, work, fnames, *, device="cpu", batch_size: int = 64,
                     progress: bool = True, feature_workers: int = 1, log=print) -> dict:
    """Each of the teacher's fold models' probabilities for the pool clips ``fnames``.

    From the cache when it is current, else predicted (``teacher.predict_noisy`` on the pool's
    split) and cached atomically.

    Returns
    -------
    dict fold -> (N, C) float32, in ``fnames`` order
    """
    fnames = list(fnames)
    checkpoints = _teacher_checkpoints(work, teacher)
    path = predictions_dir(work, teacher) / POOL_CACHE
    key = _pool_key(checkpoints, dataset, work, fnames)
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return dict(zip(cached["folds"].tolist(), cached["probs"]))
    log(f"teacher {teacher}: predicting {len(fnames)} unlabelled clips with {len(checkpoints)} fold models")
    probs = {}
    for fold, checkpoint in sorted(checkpoints.items()):
        tagger = Tagger.from_checkpoints([checkpoint], device=device, batch_size=batch_size)
        if list(tagger.classes) != list(dataset.classes):
            raise FreesoundError(f"teacher {teacher!r} predicts other classes than {dataset.root}")
        probs[fold] = predict_noisy(tagger, dataset, work, progress=progress, split=UNLABELED, fnames=fnames,
                                    desc=f"teacher {teacher} fold {fold}: unlabelled clips",
                                    feature_workers=feature_workers)
    folds = sorted(probs)
    stacked = np.stack([probs[fold] for fold in folds]) if fnames else np.zeros((len(folds), 0, len(dataset.classes)))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, folds=np.array(folds), probs=stacked.astype(np.float32), key=np.array(key))
    return probs


def fold_teacher_probs(per_fold: dict, teacher_folds: str, fold: int) -> np.ndarray:
    """A student fold's teacher probabilities (``SelfTrainingConfig.teacher_folds``): the geometric
    mean of every fold model's (``"all"``) or fold ``fold``'s own (``"same"``)."""
    if teacher_folds == "same":
        if fold not in per_fold:
            raise FreesoundError(f"the teacher has no fold {fold} (teacher_folds = \"same\" takes each fold's "
                                 f"pseudo-labels from the teacher's model of that fold)")
        return per_fold[fold]
    return geometric_mean(np.stack([per_fold[k] for k in sorted(per_fold)]))


# --------------------------------------------------------------------------------------------
# The fold run's part


class PseudoMix(TorchDataset):
    """``base``'s samples, each mixed with probability ``prob`` with a clip of ``pool``:
    ``(1 - weight) * image + weight * pool image`` on the log-mel and delta planes (a frequency
    plane, when the input has one, stays ``base``'s), the target the elementwise maximum of the
    two (both sounds are in the mix). The pool clip goes through ``base``'s transform; the draws
    come from ``(seed, epoch, index)``, as ``base``'s do, on a stream of their own.
    """

    def __init__(self, base, pool: ClipSource, prob: float, weight: float, seed: int):
        self.base, self.pool, self.prob, self.weight, self.seed = base, pool, prob, weight, seed

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target, noisy = self.base[index]
        rng = np.random.default_rng((self.seed, self.base.epoch, index, 1))
        if len(self.pool) == 0 or rng.random() >= self.prob:
            return image, target, noisy
        clip = int(rng.integers(len(self.pool)))
        other = torch.from_numpy(np.ascontiguousarray(self.base.transform(self.pool.specs[clip], rng), np.float32))
        planes = other.shape[0]
        image = image.clone()
        image[:planes] = (1.0 - self.weight) * image[:planes] + self.weight * other
        return image, torch.maximum(target, torch.from_numpy(self.pool.targets[clip])), noisy


class PseudoLabels(FoldOption):
    """``[self_training]``: the pseudo-labelled pool as a training source of fold ``fold``, and
    its samples mixed into the others (``PseudoMix``). Process 0 of each machine predicts (and
    caches) the teacher's probabilities while the others wait, then read them."""

    def __init__(self, experiment: Experiment, dataset: Dataset, work, fold: int, context: RunContext):
        self.experiment, self.work, self.fold, self.context = experiment, work, fold, context
        self.config = experiment.self_training
        pool_dir = experiment.resolve_path(self.config.unlabeled)
        self.dataset = dataset if pool_dir is None else with_unlabeled(dataset, pool_dir)
        self.source: ClipSource | None = None
        self.pool_size = 0
        if self.config.mix_prob > 0 and experiment.train.augment_on_device:
            raise ConfigError(f"experiment {experiment.name!r}: [self_training] mix_prob mixes whole samples; "
                              f"set it to 0 or train.augment_on_device to false")

    def start(self) -> None:
        processes = self.context.processes
        if processes.local_rank == 0:
            self._load()
        processes.barrier()
        if processes.local_rank != 0:
            self._load()

    def _load(self) -> None:
        fnames = unlabeled_pool(self.dataset)
        config, context = self.config, self.context
        per_fold = pool_predictions(config.teacher, self.dataset, self.work, fnames, **context.predicting())
        kept, targets = pseudo_targets(fold_teacher_probs(per_fold, config.teacher_folds, self.fold),
                                       config.power, config.floor)
        names = [fname for fname, keep in zip(fnames, kept) if keep]
        audio = self.experiment.audio
        ensure_features(self.dataset, self.work, audio, splits=(UNLABELED,), workers=context.feature_workers,
                        progress=context.show_progress)
        lazy = cached_bytes(self.dataset, self.work, UNLABELED, names, audio) > features.HOLD_IN_MEMORY_BYTES
        specs = load_features(self.dataset, self.work, UNLABELED, names, audio, lazy=lazy)
        self.source, self.pool_size = ClipSource("pseudo", specs, targets, False), len(fnames)
        context.log(f"fold {self.fold}: {len(names)} of {len(fnames)} unlabelled clips pseudo-labelled by "
                    f"{config.teacher} ({config.teacher_folds} folds, power {config.power:g}, floor {config.floor:g})")

    def sources(self) -> dict:
        return {"pseudo": (self.source, self.config.share)}

    def adapt_train_set(self, train_set):
        if self.config.mix_prob == 0:
            return train_set
        seed = self.experiment.train.seed + 1000 * self.fold
        return PseudoMix(train_set, self.source, self.config.mix_prob, self.config.mix_weight, seed)

    def checkpoint_fields(self) -> dict:
        return {"self_training": {"teacher": self.config.teacher, "pool": self.pool_size,
                                  "pseudo_labelled": len(self.source)}}


def self_training_parts(experiment: Experiment, dataset: Dataset, work, fold: int,
                        context: RunContext) -> list:
    """The fold's ``PseudoLabels`` part when ``[self_training]`` is on, else none."""
    if not experiment.self_training.enabled:
        return []
    return [PseudoLabels(experiment, dataset, work, fold, context)]

