"""The method's first-level training: one fold of one experiment.

Per epoch (``freesound.training.engine.fit``): train on ``epoch_size`` sampled clips, validate on
the held-out curated fold (centre-cropped), then, in this order: step the plateau scheduler on val
lwlrap, keep the checkpoint if val lwlrap improved, write ``log.csv``, save the resumable state,
and stop early after ``early_stop_patience`` epochs without improvement. With ``[averaging]`` (SWA
or EMA, ``freesound.training.averaging``) the averaged model is the one validated and kept.

Files in ``<work>/experiments/<name>/fold_<k>/``::

    model.pt    best checkpoint (``freesound.models.load_model`` reads it)
    config.toml the resolved experiment
    log.csv     epoch, lr, train_loss, val_loss, val_lwlrap, seconds

and ``<work>/train_state/<name>/fold_<k>/state.pt``: everything needed to resume (model,
optimiser, scheduler, scaler, the CPU's and the GPUs' generators, log, and the settings, device
and AMP setting it was trained under). It lives outside ``experiments/`` because that folder is
the weights dataset uploaded to Kaggle, which needs only ``model.pt``.

A fold may resume on another device than it started on (a CPU run continued on a GPU): the
gradient scaler then starts fresh when AMP is switched on or off, and the log says, once, that
the resumed epochs will not repeat an uninterrupted run bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from freesound.config import ConfigError, Experiment, dump_experiment, experiment_from_dict, read_toml
from freesound.data import features
from freesound.data.dataset import Dataset, apply_corrections, load_corrections, multi_hot
from freesound.data.features import cached_bytes, ensure_features, load_features
from freesound.data.folds import fold_fingerprint, read_folds, recorded_folds, requested_folds
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_text
from freesound.metrics import lwlrap
from freesound.models import create_model, save_checkpoint
from freesound.paths import checkpoint_path, fold_dir, fold_unfinished, train_state_path
from freesound.progress import progress_bar
from freesound.training.augment import train_transform, train_window_transform, valid_transform
from freesound.training.averaging import WeightAverage
from freesound.training.device_augment import AugmentedBatches, BatchAugment
from freesound.training.distributed import SINGLE, Processes, process_device, process_group
from freesound.training.engine import (
    Hooks,
    Progress,
    deterministic_algorithms,
    fit,
    load_state,
    on_device,
    restore,
    restore_rng_states,
    rng_states,
    save_state,
)
from freesound.training.fold_guard import check_resume_held_out, fold_lock, mark_finished, mark_unfinished
from freesound.training.losses import AuxLoss, NoisyCuratedLoss, NoisyHeadLoss, make_loss
from freesound.training.mixers import method_mixer
from freesound.training.oof import predict_oof
from freesound.training.pretrained import check_pretrained, load_pretrained
from freesound.training.sampling import (
    ClipSource,
    EpochShard,
    SamplingDataset,
    ValidationDataset,
    WindowSamplingDataset,
)
from freesound.training.teacher import TeacherPredictions, soft_targets, teacher_predictions

LOG_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_lwlrap", "seconds"]
#: Settings a resumed run may change: how long it trains, how many loader processes it uses and
#: whether it insists on deterministic algorithms. Any other change would continue old weights
#: under new rules, so resuming then is refused.
RESUMABLE_SETTINGS = ("train.max_epochs", "train.workers", "train.deterministic")
#: The splits a fold trains and validates on.
TRAIN_SPLITS = ("train_curated", "train_noisy")


class StaleTrainingStateError(FreesoundError):
    """``--resume`` on a fold whose saved state was trained with other settings."""


@dataclass(frozen=True)
class FoldResult:
    fold: int
    best_epoch: int
    best_lwlrap: float
    epochs: int
    checkpoint: Path


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: dict, current: dict) -> list:
    """Dotted keys (``"model.params.base_size"``) whose values differ between two
    ``Experiment.to_dict()`` dicts, except ``RESUMABLE_SETTINGS``; sorted. A setting added since
    ``saved`` was written counts as its default there (it did not exist, so it was off); the
    entries of table-valued settings (model params, losses) are another model's or loss's own, so
    they have no such default."""
    defaults = {key: value for key, value in _flatten(Experiment().to_dict()).items()
                if not key.startswith(("model.params.", "loss."))}
    saved, current = _flatten(saved), _flatten(current)
    return sorted(key for key in saved.keys() | current.keys()
                  if key not in RESUMABLE_SETTINGS and saved.get(key, defaults.get(key)) != current.get(key))


def _saved_settings(state: dict, work, name: str, fold: int) -> dict | None:
    """The settings a saved state was trained with: stored in it, or, for states from before
    they were, the fold's config.toml (None when neither is there). Settings added since the
    state was saved are missing from it; ``changed_settings`` counts them as their defaults."""
    if "experiment" in state:
        return state["experiment"]
    config = fold_dir(work, name, fold) / "config.toml"
    return experiment_from_dict(read_toml(config), name=name).to_dict() if config.is_file() else None


def _state_conflicts(state: dict, experiment: Experiment, work, fold: int) -> list:
    saved = _saved_settings(state, work, experiment.name, fold)
    return [] if saved is None else changed_settings(saved, experiment.to_dict())


def resume_conflicts(experiment: Experiment, work, fold: int) -> list:
    """The settings that differ between ``experiment`` and the fold's saved training state
    (empty when there is no saved state, or it matches)."""
    path = train_state_path(work, experiment.name, fold)
    if not path.is_file():
        return []
    return _state_conflicts(load_state(path), experiment, work, fold)


def build_sources(experiment: Experiment, dataset: Dataset, work, fold: int,
                  teacher: TeacherPredictions | None = None):
    """The fold's training sources and its validation set.

    With ``teacher`` (``freesound.training.teacher``), the sources named by the experiment's
    ``[targets] sources`` train on soft targets (``soft_targets``); validation keeps the labels.

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

    def source(name, frame, split, is_noisy):
        specs = load_features(dataset, work, split, frame.fname, experiment.audio, lazy=lazy)
        targets = multi_hot(frame.labels, classes)
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
    valid_specs = load_features(dataset, work, "train_curated", valid.fname, experiment.audio, lazy=lazy)
    return sources, probs, (valid_specs, multi_hot(valid.labels, classes), list(valid.fname))


def model_params(experiment: Experiment, num_classes: int) -> dict:
    """The keyword arguments of the experiment's network (as its checkpoints store them): the
    ``[model] params``, with ``in_channels`` set to the input's plane count when ``[input]
    freq_channel`` adds one (the method's 3-plane input leaves the params as they are).

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
    return params


def create_training_model(experiment: Experiment, num_classes: int, device) -> torch.nn.Module:
    """The experiment's network on ``device`` in channels-last layout (``train_epoch`` feeds it
    channels-last batches): about 1.2x faster training steps on the CPU (oneDNN), and the layout
    tensor cores want under AMP. Seed torch first for reproducible initial weights."""
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


def saved_run(state: dict) -> tuple:
    """The device and AMP setting a training state was saved under.

    States from before they were recorded give ``None`` for the device, and AMP on exactly when
    their gradient scaler's state is not empty (a disabled ``GradScaler`` saves ``{}``).

    Returns
    -------
    (device str or None, amp bool)
    """
    return state.get("device"), bool(state.get("amp", bool(state.get("scaler"))))


def resume_note(fold: int, saved_device, saved_amp: bool, device: torch.device, use_amp: bool,
                generators_restored: bool, *, saved_processes: int = 1, processes: int = 1) -> str | None:
    """The one log line for a fold resumed under another device, AMP setting or number of
    (torchrun) processes, or without every generator it draws from (None when the resume is exact).

    A change of AMP setting starts the gradient scaler afresh: a disabled scaler saves nothing to
    continue from, and an enabled one's loss scale means nothing without AMP. An unrecorded device
    (a state from before it was recorded) counts as a change only through the others.
    """
    same_device = saved_device is None or torch.device(saved_device).type == device.type
    if same_device and saved_amp == use_amp and generators_restored and saved_processes == processes:
        return None

    def under(where, amp, count):
        return (f"{where or 'an unrecorded device'} {'with' if amp else 'without'} AMP"
                f"{f' in {count} processes' if count != 1 else ''}")

    consequences = ["the gradient scaler starts fresh"] if saved_amp != use_amp else []
    consequences.append("the resumed epochs will not repeat an uninterrupted run bit for bit")
    return (f"fold {fold}: saved on {under(saved_device, saved_amp, saved_processes)}, resumed on "
            f"{under(device, use_amp, processes)}: {' and '.join(consequences)}")


def train_fold(
    experiment: Experiment,
    dataset: Dataset,
    work,
    fold: int,
    *,
    device: str = "cpu",
    max_epochs: int | None = None,
    resume: bool = False,
    progress: bool = True,
    feature_workers: int = 1,
    log=print,
    on_epoch=None,
    processes: Processes = SINGLE,
) -> FoldResult:
    """Train one fold; with ``resume``, continue from ``state.pt`` exactly where it stopped.

    Log-mels not cached yet are computed first (``ensure_features``, in ``feature_workers``
    processes); a clip that cannot be used stops training with an ``UnusableClipsError`` naming it.
    A CUDA ``device`` is the current device while it trains (``engine.on_device``), and
    ``train.deterministic`` holds torch to deterministic algorithms meanwhile
    (``engine.deterministic_algorithms``).

    ``on_epoch(progress, row)``, when given, runs after each epoch's log line, with the
    ``freesound.training.engine.Progress`` and the epoch's log row; it may raise to stop the
    training (a search prunes a trailing trial this way).

    ``processes`` (``freesound.training.distributed``) trains the fold together with the other
    processes of a torchrun job, each on its slice of every batch; only process 0 logs, shows
    progress and writes files. Every process of the job must call this with the same arguments.
    """
    device = torch.device(device)
    with on_device(device), deterministic_algorithms(experiment.train.deterministic), \
            fold_lock(work, experiment.name, fold, enabled=processes.main):
        return _train_fold(experiment, dataset, work, fold, device=device, max_epochs=max_epochs, resume=resume,
                           progress=progress and processes.main, feature_workers=feature_workers,
                           log=processes.main_only(log), on_epoch=on_epoch, processes=processes)


def training_set(experiment: Experiment, sources, probs, seed: int) -> SamplingDataset:
    """The experiment's sampler over ``sources``: whole network inputs (``SamplingDataset``), or,
    with ``train.augment_on_device``, windows and random draws for ``BatchAugment``
    (``WindowSamplingDataset``). Both draw the same numbers for the same ``seed``."""
    crop, options = experiment.transforms.crop, transform_options(experiment)
    mixer = experiment_mixer(experiment)
    if experiment.train.augment_on_device:
        return WindowSamplingDataset(sources, probs, experiment.train.epoch_size,
                                     transform=train_window_transform(crop, **options), mixer=mixer, seed=seed)
    return SamplingDataset(sources, probs, experiment.train.epoch_size,
                           transform=train_transform(crop, **options), mixer=mixer, seed=seed,
                           freq_channel=experiment.input.freq_channel)


def transform_options(experiment: Experiment) -> dict:
    """The ``[transforms]`` table as ``train_transform``'s (and ``train_window_transform``'s)
    keyword arguments, the crop size aside."""
    transforms = experiment.transforms
    return dict(resize_prob=transforms.resized_crop_prob, spec_prob=transforms.spec_augment_prob,
                freq_warp_prob=transforms.freq_warp_prob, freq_warp_max=transforms.freq_warp_max)


def experiment_mixer(experiment: Experiment):
    """The ``[mixers]`` table's mixer (``method_mixer``)."""
    mixers = experiment.mixers
    return method_mixer(mixers.prob, mixers.sigmoid_concat, mixers.add, mixers.specmix)


def compiled(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when ``enabled`` (``train.compile``), else ``module``. The compiled
    module shares ``module``'s parameters; save and validate ``module`` itself."""
    return torch.compile(module) if enabled else module


def restore_generators(state: dict, device: torch.device, processes: Processes) -> bool:
    """Set this process's random generators from a saved state: its own entry of the state's
    ``rank_rng`` (one per process that saved it), or, for states saved before those were kept,
    the state's own. False (nothing restored) when the state was saved by another number of
    processes, or ``restore_rng_states`` could not restore every generator."""
    saved = state.get("rank_rng") or [state]
    return len(saved) == processes.world_size and restore_rng_states(saved[processes.rank], device)


def _train_fold(experiment: Experiment, dataset: Dataset, work, fold: int, *, device: torch.device,
                max_epochs: int | None, resume: bool, progress: bool, feature_workers: int, log,
                on_epoch, processes: Processes) -> FoldResult:
    cfg = experiment.train
    out_dir = fold_dir(work, experiment.name, fold)
    resume_path = train_state_path(work, experiment.name, fold)
    max_epochs = cfg.max_epochs if max_epochs is None else max_epochs
    use_amp = cfg.amp and device.type == "cuda"
    try:
        shard = EpochShard(cfg.epoch_size, cfg.batch_size, processes.rank, processes.world_size)
    except ValueError as error:
        raise ConfigError(f"experiment {experiment.name!r}: {error}") from None

    teacher_options = dict(device=device, progress=progress, feature_workers=feature_workers, log=log)
    teacher = None
    if processes.local_rank == 0:  # one process per machine caches; the others wait for it
        ensure_features(dataset, work, experiment.audio, splits=TRAIN_SPLITS, workers=feature_workers,
                        progress=progress)
        teacher = teacher_predictions(experiment, dataset, work, **teacher_options)
    processes.barrier()
    if processes.local_rank != 0:
        teacher = teacher_predictions(experiment, dataset, work, **teacher_options)  # cached by now
    sources, probs, (valid_specs, valid_targets, _) = build_sources(experiment, dataset, work, fold, teacher)
    held_out = fold_fingerprint(read_folds(work, dataset.curated.fname), fold)  # fold_guard: the split trained on
    train_set = training_set(experiment, sources, probs, seed=cfg.seed + 1000 * fold)
    freq_channel = experiment.input.freq_channel
    valid_set = ValidationDataset(valid_specs, valid_targets, valid_transform(experiment.transforms.crop, freq_channel))
    augment = BatchAugment(experiment.transforms.crop, device, freq_channel) if cfg.augment_on_device else None

    torch.manual_seed(cfg.seed + fold)
    model = create_training_model(experiment, len(dataset.classes), device)
    if experiment.pretrained.experiment:
        load_pretrained(model, experiment, dataset.classes, work, fold)
    model = processes.prepare_model(model, device, cfg.sync_batchnorm)
    processes.seed_generators(cfg.seed + fold)
    train_model = compiled(processes.wrap(model, device), cfg.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    averaging = WeightAverage(model, experiment.averaging)
    if averaging.enabled:
        modules["averaged"] = averaging.averaged
    loss_fn = build_loss(experiment)
    valid_loss_fn = make_loss(**experiment.loss.curated)

    run = Progress()
    # Process 0 reads the state (on the CPU, see load_state) and judges it; every process gets both.
    saved = processes.broadcast(_read_resume_state(resume_path, experiment, work, fold)
                                if resume and processes.main else None)
    if saved is not None:
        state, conflicts = saved
        if conflicts:
            raise StaleTrainingStateError(
                f"fold {fold} of {experiment.name!r} was trained with other settings "
                f"({', '.join(conflicts)} changed), so it cannot be resumed; train it again without "
                f"--resume (its state in {resume_path.parent} is then replaced)")
        check_resume_held_out(state, held_out, work, experiment.name, fold)
        saved_device, saved_amp = saved_run(state)
        # A disabled scaler saved {}, which an enabled one refuses to load: it starts fresh then.
        restored = {name: module for name, module in modules.items()
                    if name != "scaler" or saved_amp == scaler.is_enabled()}
        run = restore(state, restored, LOG_COLUMNS)
        generators_restored = restore_generators(state, device, processes)
        log(f"fold {fold}: resuming after epoch {run.epoch} (best val lwlrap {run.best_score:.4f} "
            f"at epoch {run.best_epoch})")
        note = resume_note(fold, saved_device, saved_amp, device, scaler.is_enabled(), generators_restored,
                           saved_processes=state.get("world_size", 1), processes=processes.world_size)
        if note:
            log(note)
        if run.finished:
            processes.main_only(mark_finished)(work, experiment.name, fold)  # killed just after its last save
            return FoldResult(fold, run.best_epoch, run.best_score, run.epoch, out_dir / "model.pt")
    # Only now, every check passed: a refused fold leaves no folder that predict would count as a fold.
    processes.main_only(atomic_write_text)(out_dir / "config.toml", dump_experiment(experiment))
    processes.main_only(mark_unfinished)(work, experiment.name, fold)

    def epoch_batches():
        loader = DataLoader(
            train_set, batch_size=shard.local_batch, sampler=shard, num_workers=cfg.workers,
            drop_last=True, pin_memory=device.type == "cuda",
        )
        return loader if augment is None else AugmentedBatches(loader, augment)

    def train_one_epoch(epoch: int) -> dict:
        train_set.set_epoch(epoch)
        loss = train_epoch(train_model, epoch_batches(), loss_fn, optimizer, scaler, device, use_amp,
                           desc=f"fold {fold} epoch {epoch + 1}", progress=progress,
                           after_step=averaging.step_hook(model))
        averaging.end_epoch(model, epoch + 1, epoch_batches, device)
        return {"train_loss": processes.mean(loss)}

    def validate() -> tuple:
        processes.sync_buffers(model)  # every process validates process 0's model, the one saved
        evaluated = averaging.current(model)
        if evaluated is not model:
            processes.sync_buffers(evaluated)
        part = processes.shard(len(valid_set))
        loss_sum, scores = _validate(evaluated, Subset(valid_set, part), valid_loss_fn, cfg.batch_size, device,
                                     use_amp, len(dataset.classes))
        scores = processes.gather(scores)
        val_loss = sum(processes.gather_objects(loss_sum)) / len(valid_set)
        return lwlrap(valid_targets, scores), {"val_loss": val_loss}

    def save_best(epoch: int, score: float) -> None:
        averaged = {"averaging": experiment.averaging.method} if averaging.current(model) is not model else {}
        save_checkpoint(
            out_dir / "model.pt", averaging.current(model),
            model_name=experiment.model.name,
            model_params=model_params(experiment, len(dataset.classes)),
            classes=list(dataset.classes), audio_config=experiment.audio.to_dict(),
            network_input=experiment.input.to_dict(),
            experiment=experiment.name, fold=fold, epoch=epoch, val_lwlrap=float(score), **averaged,
            held_out=held_out,
        )

    def save_fold_state(run: Progress) -> None:
        rank_rng = processes.gather_objects(rng_states(device))  # every process takes part
        processes.main_only(save_state)(
            resume_path, modules, run, LOG_COLUMNS, **rank_rng[0], rank_rng=rank_rng,
            world_size=processes.world_size, experiment=experiment.to_dict(), device=str(device),
            amp=scaler.is_enabled(), held_out=held_out)

    def end_epoch(run: Progress, row: dict) -> None:
        log(f"fold {fold} epoch {run.epoch}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val lwlrap {row['val_lwlrap']:.4f}{' *' if run.best_epoch == run.epoch else ''}")
        if on_epoch is not None:
            on_epoch(run, row)

    hooks = Hooks(train_one_epoch, validate, processes.main_only(save_best), save_fold_state, end_epoch,
                  restart_best=averaging.restarts_best if averaging.enabled else None)
    run = fit(hooks, optimizer, scheduler, max_epochs=max_epochs, early_stop_patience=cfg.early_stop_patience,
              log_path=out_dir / "log.csv" if processes.main else None, columns=LOG_COLUMNS, progress=run)
    processes.main_only(mark_finished)(work, experiment.name, fold)
    if experiment.averaging.method == "swa" and run.epoch < experiment.averaging.swa_start:
        log(f"fold {fold}: training ended at epoch {run.epoch}, before SWA's first epoch "
            f"({experiment.averaging.swa_start}): model.pt holds the best model without averaging")
    return FoldResult(fold, run.best_epoch, run.best_score, run.epoch, out_dir / "model.pt")


def _read_resume_state(path: Path, experiment: Experiment, work, fold: int) -> tuple | None:
    """``(state, conflicting settings)`` of the fold's saved state, or None when there is none."""
    if not path.is_file():
        return None
    state = load_state(path)
    return state, _state_conflicts(state, experiment, work, fold)


def train_epoch(model, loader, loss_fn, optimizer, scaler, device, use_amp, *, desc="train", progress=False,
                after_step=None) -> float:
    """One pass over ``loader``'s ``(images, targets, noisy)`` batches; returns the mean loss.

    ``use_amp`` runs the forward pass under fp16 autocast (CUDA); ``scaler`` is a
    ``torch.amp.GradScaler``, disabled when AMP is off. ``after_step()``, when given, runs after
    every optimiser step (an EMA of the weights).
    """
    model.train()
    total, count = 0.0, 0
    bar = progress_bar(loader, desc=desc, leave=False, enabled=progress, unit="batch")
    for images, targets, noisy in bar:
        images = images.to(device, memory_format=torch.channels_last)
        targets, noisy = targets.to(device), noisy.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            outputs = model(images)
        loss = loss_fn(tuple(head.float() for head in outputs), targets, noisy)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        total += loss.item() * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.inference_mode()
def _validate(model, valid_set, loss_fn, batch_size, device, use_amp, num_classes: int) -> tuple:
    """``(sum of the per-clip validation losses, probabilities (N, num_classes))`` of ``valid_set``
    (which may be empty: a process's part of a tiny fold)."""
    model.eval()
    losses, scores = [], [np.empty((0, num_classes), dtype=np.float32)]
    for images, targets in DataLoader(valid_set, batch_size=batch_size):
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(images.to(device, memory_format=torch.channels_last))[0].float()
        losses.append(loss_fn(logits, targets.to(device)).item() * len(images))
        scores.append(torch.sigmoid(logits).cpu().numpy())
    return sum(losses), np.concatenate(scores)


def check_experiment(experiment: Experiment, num_classes: int) -> None:
    """Build the experiment's model, losses, transforms and mixer once, so that an unknown model or
    loss name or a bad parameter (or mixer probabilities that do not sum to 1) is one
    ``ConfigError`` before any data is loaded."""
    params = model_params(experiment, num_classes)  # a ConfigError of its own
    try:
        create_model(experiment.model.name, **params)
        build_loss(experiment)
        make_loss(**experiment.loss.curated)
        train_transform(experiment.transforms.crop, **transform_options(experiment))
        experiment_mixer(experiment)
    except (KeyError, TypeError, ValueError) as error:
        # KeyError's str() quotes its message; the first argument is the sentence itself.
        raise ConfigError(f"experiment {experiment.name!r}: {error.args[0] if error.args else error}") from error


def train_experiment(
    experiment: Experiment, dataset: Dataset, work, folds=None, **kwargs
) -> list:
    """Train the given folds (default: every fold in ``folds.csv``)."""
    check_experiment(experiment, len(dataset.classes))
    folds = requested_folds(work, dataset.curated.fname, folds)
    check_pretrained(experiment, work, folds)
    return [train_fold(experiment, dataset, work, fold, **kwargs) for fold in folds]


@dataclass(frozen=True)
class TrainingReport:
    """What ``train_and_score`` did.

    Attributes
    ----------
    folds : list of FoldResult, the folds trained now
    untrained : list of int, folds of ``folds.csv`` that still have no weights
    oof_scores : dict or None, out-of-fold lwlrap (``predict_oof``) once every fold has weights
    main : bool, False in a torchrun process other than process 0, which reports nothing
    """

    folds: list
    untrained: list
    oof_scores: dict | None
    main: bool = True


def train_and_score(experiment: Experiment, dataset: Dataset, work, folds=None, *, score_oof: bool = True,
                    device: str = "cpu", log=print, distributed: dict | None = None, **kwargs) -> TrainingReport:
    """``freesound train``: train the given folds (default: all), then, once every fold of
    ``folds.csv`` has weights, predict each fold's held-out clips and score them out of fold.

    ``kwargs`` go to ``train_fold`` (``max_epochs``, ``resume``, ``progress``, ``feature_workers``).

    ``distributed`` is a torchrun job's environment (``freesound.settings.torchrun_environment``):
    every process of the job calls this, joins the job's process group on its own device
    (``process_device``: ``cuda:<LOCAL_RANK>`` for ``cuda``) and the processes train each fold
    together, one fold after another; process 0 then scores the out-of-fold predictions alone.
    """
    if distributed is None:
        return score_trained(experiment, dataset, work, train_experiment(
            experiment, dataset, work, folds, device=device, log=log, **kwargs), score_oof=score_oof, device=device,
            log=log, feature_workers=kwargs.get("feature_workers", 1), progress=kwargs.get("progress", True))
    device = process_device(device, distributed)
    with process_group(distributed, device, log=log) as processes:
        results = train_experiment(experiment, dataset, work, folds, device=device, log=log, processes=processes,
                                   **kwargs)
    if not processes.main:
        return TrainingReport(results, [], None, main=False)
    return score_trained(experiment, dataset, work, results, score_oof=score_oof, device=device, log=log,
                         feature_workers=kwargs.get("feature_workers", 1), progress=kwargs.get("progress", True))


def score_trained(experiment: Experiment, dataset: Dataset, work, results: list, *, score_oof: bool, device,
                  log=print, feature_workers: int = 1, progress: bool = True) -> TrainingReport:
    """The report on folds just trained (``results``): which folds of ``folds.csv`` still lack
    weights and, once none does and ``score_oof``, the out-of-fold scores (``predict_oof``)."""
    untrained = [fold for fold in recorded_folds(work) or []
                 if not checkpoint_path(work, experiment.name, fold).is_file()
                 or fold_unfinished(work, experiment.name, fold)]
    scores = None
    if score_oof and not untrained:
        scores = predict_oof(experiment.name, dataset, work, device=str(device), log=log,
                             feature_workers=feature_workers, progress=progress)
    return TrainingReport(results, untrained, scores)
