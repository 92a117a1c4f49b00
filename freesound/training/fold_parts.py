"""The factory of a fold's parts: everything a first-level fold trains with, built from its experiment.

``build_fold_parts`` makes, in this order (the order of the random draws a recorded run repeats):
the training sources and the validation set, the sampler over them (``training_set``), the
on-device augment, the network (seeded with ``train.seed + fold``), then whatever the run's
options do to the network before it is optimised (``model_hooks``: a pretrained start, the
process group's batch-norm synchronisation and generators), then the optimiser, its
reduce-on-plateau scheduler, the gradient scaler, the weight average and the losses.

Each ``[section]`` of an experiment is mapped to its component's arguments here and only here
(``transform_options``, ``experiment_mixer``, ``model_params``, ``build_loss``,
``adam_with_plateau``); the stacker (``freesound.ensembling.stack``) and the benchmarks build
theirs with the same functions. The factory knows nothing of the process group or of resuming.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from freesound.config import ConfigError, Experiment
from freesound.data import features
from freesound.data.dataset import Dataset, apply_corrections, load_corrections, multi_hot, weak_targets
from freesound.data.features import cached_bytes, load_features
from freesound.data.folds import read_folds
from freesound.errors import FreesoundError
from freesound.models import create_model
from freesound.training.augment import train_transform, train_window_transform, valid_transform
from freesound.training.averaging import WeightAverage
from freesound.training.device_augment import BatchAugment
from freesound.training.losses import AuxLoss, NoisyCuratedLoss, NoisyHeadLoss, make_loss
from freesound.training.mixers import method_mixer
from freesound.training.sampling import ClipSource, SamplingDataset, ValidationDataset, WindowSamplingDataset
from freesound.training.teacher import TeacherPredictions, soft_targets


@dataclass
class FoldParts:
    """What one fold trains with (see the module docstring).

    Attributes
    ----------
    model : the network on the device, channels-last (not wrapped for DDP or compiled)
    optimizer, scheduler : Adam and its reduce-on-plateau scheduler on the val score (``[train] metric``)
    scaler : torch.amp.GradScaler, disabled without AMP
    averaging : WeightAverage (disabled without ``[averaging]``)
    loss_fn : the training loss over the model's heads; valid_loss_fn : the curated loss
    train_set : SamplingDataset or WindowSamplingDataset
    valid_set : ValidationDataset of the held-out curated fold; valid_targets : its (N, C) labels
    augment : BatchAugment, or None when augmenting in the DataLoader's workers
    use_amp : bool, fp16 autocast on CUDA
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    averaging: WeightAverage
    loss_fn: Callable
    valid_loss_fn: Callable
    train_set: SamplingDataset
    valid_set: ValidationDataset
    valid_targets: np.ndarray
    augment: BatchAugment | None
    use_amp: bool

    def modules(self) -> dict:
        """The modules whose state a resumable state holds, by name."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}


def build_fold_parts(experiment: Experiment, dataset: Dataset, work, fold: int, device: torch.device, *,
                     teacher: TeacherPredictions | None = None,
                     model_hooks: Iterable[Callable[[torch.nn.Module], torch.nn.Module]] = (),
                     extra_sources: dict | None = None, train_set_hooks: Iterable[Callable] = ()) -> FoldParts:
    """A fold's parts on ``device`` (see the module docstring); ``teacher`` gives the soft targets
    of ``[targets]`` (``build_sources``), and each of ``model_hooks`` in turn returns the network
    to optimise from the one built (in place or a converted copy). ``extra_sources`` (name ->
    ``(ClipSource, share)``) are sampled beside the experiment's, and each of ``train_set_hooks``
    in turn returns the sampler to train on from the one built (the self-training pool's).

    Raises
    ------
    ConfigError
        ``train.epoch_size`` / ``batch_size`` or ``[model] params`` do not fit (named).
    FreesoundError
        The fold is not in ``folds.csv``.
    """
    cfg = experiment.train
    sources, probs, (valid_specs, valid_targets, _) = build_sources(experiment, dataset, work, fold, teacher)
    for source, share in (extra_sources or {}).values():
        sources, probs = [*sources, source], [*probs, share]
    train_set = training_set(experiment, sources, probs, seed=cfg.seed + 1000 * fold)
    for hook in train_set_hooks:
        train_set = hook(train_set)
    crop, input_config = experiment.chunk_frames, experiment.input
    valid_set = ValidationDataset(valid_specs, valid_targets,
                                  valid_transform(crop, input_config.freq_channel, cfg.valid_crop))
    augment = BatchAugment(crop, device, input_config.freq_channel) if cfg.augment_on_device else None

    torch.manual_seed(cfg.seed + fold)
    model = create_training_model(experiment, len(dataset.classes), device)
    for hook in model_hooks:
        model = hook(model)
    optimizer, scheduler = adam_with_plateau(model.parameters(), cfg.lr, cfg.plateau_factor, cfg.plateau_patience)
    use_amp = cfg.amp and device.type == "cuda"
    return FoldParts(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp),
                     WeightAverage(model, experiment.averaging), build_loss(experiment),
                     make_loss(**experiment.loss.curated), train_set, valid_set, valid_targets, augment, use_amp)


def adam_with_plateau(parameters, lr: float, factor: float, patience: int) -> tuple:
    """``(Adam(parameters, lr), ReduceLROnPlateau(mode="max", factor, patience))``: the optimiser
    and schedule of the method's first-level models and of its stackers, stepped on the val score
    (val lwlrap, or the ``[train] metric`` of a first-level model)."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor,
                                                                  patience=patience)


def build_sources(experiment: Experiment, dataset: Dataset, work, fold: int,
                  teacher: TeacherPredictions | None = None):
    """The fold's training sources and its validation set.

    With ``teacher`` (``freesound.training.teacher``), the sources named by the experiment's
    ``[targets] sources`` train on soft targets (``soft_targets``); validation keeps the labels.
    With ``[train] secondary_weight`` the training targets of clips with secondary labels hold
    that weight for them (``weak_targets``); with ``[train] chunk_seconds`` the log-mels are
    memory maps of the cache (``LazyLogmels``), so a chunk of a long recording reads only itself.

    Returns
    -------
    sources : list of ClipSource (curated, corrected_noisy, noisy), in SamplingConfig order
    probs : list of float
    valid : (specs, targets, fnames) of the held-out curated fold
    """
    classes = dataset.classes
    folds = read_folds(work, dataset.curated.fname)
    if fold not in set(folds.fold):
        raise FreesoundError(f"fold {fold} is not in folds.csv (folds: {sorted(set(folds.fold))})")
    curated = dataset.curated.merge(folds, on="fname")
    corrections_path = experiment.resolve_path(experiment.data.corrections)
    if corrections_path:
        curated = apply_corrections(curated, load_corrections(corrections_path, classes))
    noisy = dataset.noisy
    corrected_noisy = noisy.iloc[:0]
    noisy_corrections_path = experiment.resolve_path(experiment.data.noisy_corrections)
    if noisy_corrections_path:
        noisy_corrections = load_corrections(noisy_corrections_path, classes)
        corrected_noisy = apply_corrections(noisy, noisy_corrections, only_corrected=True)
        noisy = noisy[~noisy.fname.isin(noisy_corrections.keys())]

    train_curated = curated[curated.fold != fold]
    valid = curated[curated.fold == fold]

    parts = [(train_curated, "train_curated"), (corrected_noisy, "train_noisy"), (noisy, "train_noisy"),
             (valid, "train_curated")]
    # Past what a 16 GB machine can hold beside training, read each log-mel from the cache when drawn.
    lazy = sum(cached_bytes(dataset, work, split, frame.fname, experiment.audio)
               for frame, split in parts) > features.HOLD_IN_MEMORY_BYTES

    mmap = experiment.train.chunk_seconds > 0

    def source(name, frame, split, is_noisy):
        specs = load_features(dataset, work, split, frame.fname, experiment.audio, lazy=lazy, mmap=mmap)
        targets = training_targets(experiment, dataset, split, frame)
        if teacher is not None and name in experiment.targets.sources:
            targets = soft_targets(targets, teacher.probabilities(split, frame.fname), experiment.targets.weight)
        return ClipSource(name, specs, targets, is_noisy)

    sampling = experiment.sampling
    sources = [
        source("curated", train_curated, "train_curated", False),
        source("corrected_noisy", corrected_noisy, "train_noisy", False),
        source("noisy", noisy, "train_noisy", True),
    ]
    probs = [sampling.curated, sampling.corrected_noisy, sampling.noisy]
    valid_specs = load_features(dataset, work, "train_curated", valid.fname, experiment.audio, lazy=lazy, mmap=mmap)
    return sources, probs, (valid_specs, multi_hot(valid.labels, classes), list(valid.fname))


def training_targets(experiment: Experiment, dataset: Dataset, split: str, frame) -> np.ndarray:
    """The (N, C) targets of the clips of ``frame`` (``fname``, ``labels``) of ``split``: their
    labels, with their secondary labels at ``[train] secondary_weight`` when it is above 0."""
    weight = experiment.train.secondary_weight
    if not weight:
        return multi_hot(frame.labels, dataset.classes)
    return weak_targets(frame.labels, dataset.secondary_labels(split, frame.fname), dataset.classes, weight)


def validation_batch_size(experiment: Experiment) -> int:
    """Clips a validation batch holds: ``[train] batch_size``, or 1 with ``valid_crop = "whole"``
    (whole clips differ in length)."""
    return 1 if experiment.train.valid_crop == "whole" else experiment.train.batch_size


def model_params(experiment: Experiment, num_classes: int) -> dict:
    """The keyword arguments of the experiment's network (as its checkpoints store them): the
    ``[model] params``, with ``in_channels`` set to the input's plane count when ``[input]
    freq_channel`` adds one (the method's 3-plane input leaves the params as they are), a
    ``[pretrained] weights`` file as the model's ``pretrained`` parameter (a start-only one,
    ``START_ONLY_PARAMS``), and a ``pretrained`` weights file given relative to the experiment
    file's folder made a full path.

    Raises
    ------
    ConfigError
        ``[model] params`` sets ``in_channels`` to another count than the input has.
    """
    params = {"num_classes": num_classes, **experiment.model.params}
    channels = experiment.input.channels
    if "in_channels" in params and params["in_channels"] != channels:
        raise ConfigError(f"experiment {experiment.name!r}: [model] params in_channels = {params['in_channels']} "
                          f"but the network input has {channels} planes ([input] freq_channel = "
                          f"{str(experiment.input.freq_channel).lower()}); leave in_channels out")
    if experiment.input.freq_channel:
        params["in_channels"] = channels
    if experiment.pretrained.weights:
        params["pretrained"] = experiment.pretrained.weights
    if isinstance(params.get("pretrained"), str) and params["pretrained"]:
        params["pretrained"] = str(experiment.resolve_path(params["pretrained"]))
    return params


def create_training_model(experiment: Experiment, num_classes: int, device) -> torch.nn.Module:
    """The experiment's network on ``device`` in channels-last layout (``train_epoch`` feeds it
    channels-last batches): faster training steps on the CPU (oneDNN; ``benchmarks/RESULTS.md``,
    "Training"), and the layout tensor cores want under AMP. Seed torch first for reproducible
    initial weights."""
    model = create_model(experiment.model.name, **model_params(experiment, num_classes))
    return model.to(device, memory_format=torch.channels_last)


def build_loss(experiment: Experiment):
    """The training loss over the model's heads: ``loss.curated`` on trusted and ``loss.noisy``
    on noisy samples, on every head; with a noisy-label head (``model.params.noisy_head``),
    trusted samples on the usual heads and noisy ones on that head only (``NoisyHeadLoss``)."""
    if experiment.model.params.get("noisy_head", False):
        return NoisyHeadLoss(make_loss(**experiment.loss.curated), make_loss(**experiment.loss.noisy),
                             weights=experiment.model.aux_weights)
    noisy_curated = NoisyCuratedLoss(
        make_loss(**experiment.loss.curated), make_loss(**experiment.loss.noisy)
    )
    return AuxLoss(noisy_curated, weights=experiment.model.aux_weights)


def training_set(experiment: Experiment, sources, probs, seed: int) -> SamplingDataset:
    """The experiment's sampler over ``sources``: whole network inputs (``SamplingDataset``), or,
    with ``train.augment_on_device``, windows and random draws for ``BatchAugment``
    (``WindowSamplingDataset``). Both draw the same numbers for the same ``seed``."""
    crop, options = experiment.chunk_frames, transform_options(experiment)
    mixer = experiment_mixer(experiment)
    if experiment.train.augment_on_device:
        return WindowSamplingDataset(sources, probs, experiment.train.epoch_size,
                                     transform=train_window_transform(crop, **options), mixer=mixer, seed=seed)
    return SamplingDataset(sources, probs, experiment.train.epoch_size,
                           transform=train_transform(crop, **options), mixer=mixer, seed=seed,
                           freq_channel=experiment.input.freq_channel)


def transform_options(experiment: Experiment) -> dict:
    """The ``[transforms]`` table as ``train_transform``'s (and ``train_window_transform``'s)
    keyword arguments, the crop size aside: the one place its names meet the transforms'."""
    transforms = experiment.transforms
    return dict(resize_prob=transforms.resized_crop_prob, spec_prob=transforms.spec_augment_prob,
                freq_warp_prob=transforms.freq_warp_prob, freq_warp_max=transforms.freq_warp_max)


def experiment_mixer(experiment: Experiment):
    """The ``[mixers]`` table's mixer (``method_mixer``): the one place its names meet the mixer's."""
    mixers = experiment.mixers
    return method_mixer(mixers.prob, mixers.sigmoid_concat, mixers.add, mixers.specmix)


def check_input_shape(experiment: Experiment, params: dict) -> None:
    """One forward pass of a zero tile of the experiment's shape (``[audio] n_mels`` x ``[input]
    tile_frames``) through its model built from ``params``, where that shape is not the method's
    128 x 256 (which every model takes), so that a tile too small for the network's pooling is a
    ``ConfigError`` naming the shape before any data is loaded. A model that cannot be built at
    all is left to ``check_experiment``'s own message."""
    shape = (experiment.input.channels, experiment.audio.n_mels, experiment.input.tile_frames)
    if shape[1:] == (128, 256):
        return
    try:
        model = create_model(experiment.model.name, **params).eval()
    except (KeyError, TypeError, ValueError):
        return
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape)))
    except RuntimeError as error:
        raise ConfigError(f"experiment {experiment.name!r}: the model {experiment.model.name} cannot take tiles of "
                          f"{shape[1]} mel bands x {shape[2]} frames ([audio] n_mels, [input] tile_frames): "
                          f"{str(error).splitlines()[0]}") from None


def check_experiment(experiment: Experiment, num_classes: int) -> None:
    """Build the experiment's model, losses, transforms and mixer once, so that an unknown model or
    loss name or a bad parameter (or mixer probabilities that do not sum to 1) is one
    ``ConfigError`` before any data is loaded."""
    params = model_params(experiment, num_classes)  # a ConfigError of its own
    check_input_shape(experiment, params)
    try:
        check_heads(experiment, create_model(experiment.model.name, **params))
        build_loss(experiment)
        make_loss(**experiment.loss.curated)
        train_transform(experiment.chunk_frames, **transform_options(experiment))
        experiment_mixer(experiment)
    except (KeyError, TypeError, ValueError) as error:
        # KeyError's str() quotes its message; the first argument is the sentence itself.
        raise ConfigError(f"experiment {experiment.name!r}: {error.args[0] if error.args else error}") from error


def check_heads(experiment: Experiment, model: torch.nn.Module) -> None:
    """Refuse ``[model] aux_weights`` of another length than the heads ``model`` returns, for a
    model that says how many (``output_heads``, e.g. the timm family's one): the loss would
    otherwise leave weights unused without a word.

    Raises
    ------
    ValueError
        The counts differ (the message says what to write).
    """
    heads, weights = getattr(model, "output_heads", None), experiment.model.aux_weights
    if heads is not None and len(weights) != heads:
        advice = "aux_weights = [1.0]" if heads == 1 else f"{heads} weights, main head first"
        raise ValueError(f"[model] aux_weights has {len(weights)} weight(s) {list(weights)} but the "
                         f"{experiment.model.name} model returns {heads} head(s); set {advice}")
