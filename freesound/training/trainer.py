"""The method's first-level training: one fold of one experiment.

Per epoch (``freesound.training.engine.fit``): train on ``epoch_size`` sampled clips, validate on
the held-out curated fold (centre-cropped), then, in this order: step the plateau scheduler on the
val score, keep the checkpoint if the val score improved, write ``log.csv``, save the resumable
state, and stop early after ``early_stop_patience`` epochs without improvement. The val score is
``[train] metric`` of the fold's clips: lwlrap (the method's), ROC-AUC or padded cmAP. With
``[averaging]`` (SWA or EMA, ``freesound.training.averaging``) the averaged model is the one
validated and kept.

Files in ``<work>/experiments/<name>/fold_<k>/``::

    model.pt    best checkpoint (``freesound.models.load_model`` reads it)
    config.toml the resolved experiment
    log.csv     epoch, lr, train_loss, val_loss, val_lwlrap, seconds (and val_<metric> before
                seconds when ``[train] metric`` is not lwlrap)

and ``<work>/train_state/<name>/fold_<k>/state.pt``: everything needed to resume
(``freesound.training.resume_state``). It lives outside ``experiments/`` because that folder is
the weights dataset uploaded to Kaggle, which needs only ``model.pt``.

A fold may resume on another device than it started on (a CPU run continued on a GPU): the
gradient scaler then starts fresh when AMP is switched on or off, and the log says, once, that
the resumed epochs will not repeat an uninterrupted run bit for bit.

``FoldRun`` is one fold's run: its parts come from ``freesound.training.fold_parts``, its options
(pretrained start, process group, weight averaging) are the parts of
``freesound.training.fold_options``, its trackers the part of ``freesound.training.tracking``, the
self-training pool the part of ``freesound.training.pseudo_labels``, and
its steps are the small methods ``engine.fit`` calls.
``freesound.training.experiment_training.train_folds`` trains the folds of an experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from freesound.config import ConfigError, Experiment, dump_experiment
from freesound.data.dataset import Dataset
from freesound.data.features import ensure_features
from freesound.data.folds import fold_fingerprint, read_folds, requested_folds
from freesound.fileio import atomic_write_text
from freesound.metrics import METRICS, lwlrap
from freesound.models import save_checkpoint
from freesound.paths import fold_dir, train_state_path
from freesound.progress import progress_bar
from freesound.training.context import RunContext
from freesound.training.device_augment import AugmentedBatches
from freesound.training.engine import FitState, Hooks, deterministic_algorithms, fit, on_device, restore, rng_states, save_state
from freesound.training.fold_guard import fold_lock
from freesound.training.fold_options import (
    Averaging,
    FoldOption,
    PretrainedStart,
    ProcessGroup,
    SplitGuard,
    TeacherTargets,
)
# build_loss, build_sources, create_training_model, training_set, StaleTrainingStateError, changed_settings,
# resume_conflicts and saved_run are imported from here too: the names fold training has always offered.
from freesound.training.fold_parts import (
    FoldParts,
    build_fold_parts,
    build_loss,
    build_sources,
    check_experiment,
    create_training_model,
    model_params,
    training_set,
    validation_batch_size,
)
from freesound.training.pretrained import check_pretrained
from freesound.training.pseudo_labels import self_training_parts
from freesound.training.resume_state import (
    STATE_FORMAT,
    StaleTrainingStateError,
    changed_settings,
    read_fold_state,
    refuse_conflicts,
    restore_generators,
    resume_conflicts,
    resume_note,
    saved_run,
)
from freesound.training.sampling import EpochShard
from freesound.training.tracking import tracking_parts

LOG_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_lwlrap", "seconds"]
#: The splits a fold trains and validates on.
TRAIN_SPLITS = ("train_curated", "train_noisy")


def log_columns(metric: str) -> list:
    """``log.csv``'s columns when the val score is ``metric``: ``LOG_COLUMNS``, with ``val_<metric>``
    before ``seconds`` for a metric other than lwlrap."""
    return LOG_COLUMNS if metric == "lwlrap" else [*LOG_COLUMNS[:-1], f"val_{metric}", LOG_COLUMNS[-1]]


@dataclass(frozen=True)
class FoldResult:
    """A trained fold; ``best_lwlrap`` is its best val score, of ``[train] metric`` (lwlrap by default)."""

    fold: int
    best_epoch: int
    best_lwlrap: float
    epochs: int
    checkpoint: Path


def train_fold(experiment: Experiment, dataset: Dataset, work, fold: int, *, context: RunContext | None = None,
               max_epochs: int | None = None, resume: bool = False, on_epoch=None, **context_options) -> FoldResult:
    """Train one fold; with ``resume``, continue from ``state.pt`` exactly where it stopped.

    Log-mels not cached yet are computed first (``ensure_features``, in ``context.feature_workers``
    processes); a clip that cannot be used stops training with an ``UnusableClipsError`` naming it.
    A CUDA device is the current device while it trains (``engine.on_device``), and
    ``train.deterministic`` holds torch to deterministic algorithms meanwhile
    (``engine.deterministic_algorithms``).

    Parameters
    ----------
    context : RunContext; default ``RunContext.create(**context_options)`` (``device``, ``log``,
        ``progress``, ``feature_workers``, ``processes``)
    max_epochs : overrides ``train.max_epochs``
    on_epoch : ``(FitState, row) -> None``, run after each epoch's log line with the epoch's log
        row; it may raise to stop the training (a search prunes a trailing trial this way)

    With ``context.processes`` (``freesound.training.distributed``) the fold trains together with
    the other processes of a torchrun job, each on its slice of every batch; only process 0 logs,
    shows progress and writes files. Every process of the job must call this with the same arguments.
    """
    context = context or RunContext.create(**context_options)
    with on_device(context.device), deterministic_algorithms(experiment.train.deterministic), \
            fold_lock(work, experiment.name, fold, enabled=context.main):
        return FoldRun(experiment, dataset, work, fold, context, max_epochs=max_epochs, resume=resume,
                       on_epoch=on_epoch).run()


def checked_folds(experiment: Experiment, dataset: Dataset, work, folds=None) -> list:
    """The folds to train (default: every fold in ``folds.csv``), once the experiment's settings
    (``check_experiment``) and its ``[pretrained]`` folds (``check_pretrained``) are checked: the
    preflight of every way folds are trained."""
    check_experiment(experiment, len(dataset.classes))
    folds = requested_folds(work, dataset.curated.fname, folds)
    check_pretrained(experiment, work, folds)
    return folds


def train_experiment(experiment: Experiment, dataset: Dataset, work, folds=None, *, context: RunContext | None = None,
                     max_epochs: int | None = None, resume: bool = False, on_epoch=None, **context_options) -> list:
    """Train the given folds (default: every fold in ``folds.csv``) in this process (or this
    torchrun job), one after another, after ``checked_folds``; return their ``FoldResult``s.

    ``on_epoch(fold, FitState, row)``, when given, runs after each epoch of each fold.
    ``context`` and ``context_options`` as for ``train_fold``.
    """
    context = context or RunContext.create(**context_options)
    return [train_fold(experiment, dataset, work, fold, context=context, max_epochs=max_epochs, resume=resume,
                       on_epoch=None if on_epoch is None else _for_fold(on_epoch, fold))
            for fold in checked_folds(experiment, dataset, work, folds)]


def _for_fold(on_epoch, fold: int):
    return lambda fit_state, row: on_epoch(fold, fit_state, row)


def compiled(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when ``enabled`` (``train.compile``), else ``module``. The compiled
    module shares ``module``'s parameters; save and validate ``module`` itself."""
    return torch.compile(module) if enabled else module


class FoldRun:
    """One fold's training run (see the module docstring); ``run()`` trains it once.

    Its parts: the fold's ``FoldParts`` (``build_fold_parts``), the options as ``FoldOption``
    parts (``options``: a pretrained start, the process group, weight averaging), the teacher's
    targets, and the run's ``RunContext``.
    """

    def __init__(self, experiment: Experiment, dataset: Dataset, work, fold: int, context: RunContext, *,
                 max_epochs: int | None = None, resume: bool = False, on_epoch=None):
        self.experiment, self.dataset, self.work, self.fold, self.context = experiment, dataset, work, fold, context
        self.max_epochs = experiment.train.max_epochs if max_epochs is None else max_epochs
        self.resume, self.on_epoch = resume, on_epoch
        self.out_dir = fold_dir(work, experiment.name, fold)
        self.columns = log_columns(experiment.train.metric)
        self.val_values: dict = {}  # the last validation's log values, for the checkpoint
        self.state_path = train_state_path(work, experiment.name, fold)
        cfg = experiment.train
        self.group = ProcessGroup(context.processes, context.device, cfg.sync_batchnorm, cfg.seed + fold)
        pretrained = ([PretrainedStart(experiment, dataset.classes, work, fold)]
                      if experiment.pretrained.experiment else [])
        held_out = fold_fingerprint(read_folds(work, dataset.curated.fname), fold)
        guard = SplitGuard(work, experiment.name, fold, held_out, context.processes)
        tracking = tracking_parts(experiment, work, fold, context.log, context.main, context.tracked_under)
        pseudo = self_training_parts(experiment, dataset, work, fold, context)
        self.options: list[FoldOption] = [*pretrained, self.group, guard, *tracking, *pseudo]  # in the order their hooks run
        self.parts: FoldParts | None = None  # built by run()
        self.train_model: torch.nn.Module | None = None  # the model as trained: DDP-wrapped, compiled
        self.shard: EpochShard | None = None

    def run(self) -> FoldResult:
        """Train (or resume) the fold; return its result."""
        self.shard = self._shard()
        self._each("start")
        self._build(self._teacher_predictions())
        resumed = self._resumed()
        if resumed is not None and resumed.finished:  # perhaps killed just after its last save
            self._each("end_fold", resumed)
            return self._result(resumed)
        # Only now, every check passed: a refused fold leaves no folder that predict would count as a fold.
        self.context.processes.main_only(atomic_write_text)(self.out_dir / "config.toml",
                                                            dump_experiment(self.experiment))
        if resumed is None:  # a fresh start: an older run's state must not be resumed after it
            self.context.processes.main_only(self.state_path.unlink)(missing_ok=True)
        self._each("begin_fit")
        try:
            fit_state = fit(self._hooks(), self.parts.optimizer, self.parts.scheduler, max_epochs=self.max_epochs,
                            early_stop_patience=self.experiment.train.early_stop_patience,
                            log_path=self.out_dir / "log.csv" if self.context.main else None, columns=self.columns,
                            resumed=resumed)
        except BaseException as error:
            self._each("abort_fold", error)
            raise
        self._each("end_fold", fit_state)
        return self._result(fit_state)

    def _shard(self) -> EpochShard:
        cfg, processes = self.experiment.train, self.context.processes
        try:
            return EpochShard(cfg.epoch_size, cfg.batch_size, processes.rank, processes.world_size)
        except ValueError as error:
            raise ConfigError(f"experiment {self.experiment.name!r}: {error}") from None

    def _teacher_predictions(self):
        """Cache the training log-mels and the teacher's predictions: one process per machine
        makes them while the others wait, then reads them."""
        context, processes = self.context, self.context.processes
        teacher = TeacherTargets(self.experiment, self.dataset, self.work, context)
        predictions = None
        if processes.local_rank == 0:
            ensure_features(self.dataset, self.work, self.experiment.audio, splits=TRAIN_SPLITS,
                            workers=context.feature_workers, progress=context.show_progress)
            predictions = teacher.predictions()
        processes.barrier()
        return teacher.predictions() if processes.local_rank != 0 else predictions

    def _build(self, teacher) -> None:
        self.parts = build_fold_parts(self.experiment, self.dataset, self.work, self.fold, self.context.device,
                                      teacher=teacher, model_hooks=[option.adapt_model for option in self.options],
                                      extra_sources=self._merged("sources"),
                                      train_set_hooks=[option.adapt_train_set for option in self.options])
        self.options.append(Averaging(self.parts.averaging, self.parts.model, self.context, self.fold))
        self.train_model = compiled(self.group.wrap(self.parts.model), self.experiment.train.compile)

    def _modules(self) -> dict:
        return {**self.parts.modules(), **self._merged("modules")}

    def _resumed(self) -> FitState | None:
        """The saved state restored (None: a fresh run), after refusing one trained with other settings."""
        processes = self.context.processes
        saved = self.resume and processes.main and self.state_path.is_file()
        if saved and not (self.out_dir / "model.pt").is_file():
            # The state's best epoch lives in model.pt; resuming without it would end with no model.
            self.context.log(f"fold {self.fold}: {self.state_path} was saved beside a model.pt that is gone "
                             f"({self.out_dir / 'model.pt'}): training the fold from the start")
            saved = False
        # Process 0 reads the state (on the CPU, see load_state); every process gets it.
        state = processes.broadcast(read_fold_state(self.state_path, self.work, self.experiment.name, self.fold)
                                    if saved else None)
        if state is None:
            return None
        refuse_conflicts(state, self.experiment, self.fold, self.state_path)
        self._each("check_resume", state)
        scaler = self.parts.scaler
        # A disabled scaler saved {}, which an enabled one refuses to load: it starts fresh then.
        restored = {name: module for name, module in self._modules().items()
                    if name != "scaler" or state["amp"] == scaler.is_enabled()}
        fit_state = restore(state, restored, self.columns)
        generators = restore_generators(state, self.context.device, processes.rank, processes.world_size)
        self.context.log(f"fold {self.fold}: resuming after epoch {fit_state.epoch} (best val {self._metric} "
                         f"{fit_state.best_score:.4f} at epoch {fit_state.best_epoch})")
        note = resume_note(self.fold, state["device"], state["amp"], self.context.device, scaler.is_enabled(),
                           generators, saved_processes=state["world_size"], processes=processes.world_size)
        if note:
            self.context.log(note)
        return fit_state

    def _hooks(self) -> Hooks:
        return Hooks(self.train_one_epoch, self.validate, self.context.processes.main_only(self.save_best),
                     self.save_fold_state, self.end_epoch, restart_best=self.restarts_best)

    def epoch_batches(self):
        """This process's batches of the current epoch (augmented on the device with ``augment``)."""
        device = self.context.device
        loader = DataLoader(self.parts.train_set, batch_size=self.shard.local_batch, sampler=self.shard,
                            num_workers=self.experiment.train.workers, drop_last=True,
                            pin_memory=device.type == "cuda")
        return loader if self.parts.augment is None else AugmentedBatches(loader, self.parts.augment)

    def train_one_epoch(self, epoch: int) -> dict:
        parts, context = self.parts, self.context
        parts.train_set.set_epoch(epoch)
        steps = [hook for option in self.options if (hook := option.step_hook()) is not None]
        loss = train_epoch(self.train_model, self.epoch_batches(), parts.loss_fn, parts.optimizer, parts.scaler,
                           context.device, parts.use_amp, desc=f"fold {self.fold} epoch {epoch + 1}",
                           progress=context.show_progress, after_step=_all(steps))
        self._each("end_train_epoch", epoch + 1, self.epoch_batches)
        return {"train_loss": context.processes.mean(loss)}

    def evaluated(self) -> torch.nn.Module:
        """The module validated and kept: the model, or what an option puts in its place."""
        module = self.parts.model
        for option in self.options:
            module = option.evaluated(module)
        return module

    def validate(self) -> tuple:
        parts, processes = self.parts, self.context.processes
        processes.sync_buffers(parts.model)  # every process validates process 0's model, the one saved
        evaluated = self.evaluated()
        if evaluated is not parts.model:
            processes.sync_buffers(evaluated)
        part = processes.shard(len(parts.valid_set))
        loss_sum, scores = _validate(evaluated, Subset(parts.valid_set, part), parts.valid_loss_fn,
                                     validation_batch_size(self.experiment), self.context.device, parts.use_amp,
                                     len(self.dataset.classes))
        scores = processes.gather(scores)
        val_loss = sum(processes.gather_objects(loss_sum)) / len(parts.valid_set)
        self.val_values = {"val_loss": val_loss, "val_lwlrap": lwlrap(parts.valid_targets, scores)}
        metric = self._metric
        if metric != "lwlrap":
            try:
                self.val_values[f"val_{metric}"] = METRICS[metric](parts.valid_targets, scores,
                                                                     classes=list(self.dataset.classes))
            except ValueError as error:  # e.g. ROC-AUC of a class every validation clip has
                raise ConfigError(f"experiment {self.experiment.name!r}, fold {self.fold}: [train] metric = "
                                  f"{metric!r} cannot score the fold's validation clips: {error}") from None
        return self.val_values[f"val_{metric}"], self.val_values

    @property
    def _metric(self) -> str:
        return self.experiment.train.metric

    def restarts_best(self, epoch: int) -> bool:
        return any(option.restarts_best(epoch) for option in self.options)

    def save_best(self, epoch: int, score: float) -> None:
        experiment, classes = self.experiment, self.dataset.classes
        fields = self._merged("checkpoint_fields")
        save_checkpoint(
            self.out_dir / "model.pt", self.evaluated(),
            model_name=experiment.model.name, model_params=model_params(experiment, len(classes)),
            classes=list(classes), audio_config=experiment.audio.to_dict(), network_input=experiment.input.to_dict(),
            experiment=experiment.name, fold=self.fold, epoch=epoch, **self._val_fields(score), **fields,
        )

    def _val_fields(self, score: float) -> dict:
        """The checkpoint's val scores: ``val_lwlrap``, and ``val_<metric>`` when that is the score."""
        if self._metric == "lwlrap":
            return {"val_lwlrap": float(score)}
        return {"val_lwlrap": float(self.val_values["val_lwlrap"]), f"val_{self._metric}": float(score)}

    def save_fold_state(self, fit_state: FitState) -> None:
        processes, device = self.context.processes, self.context.device
        rank_rng = processes.gather_objects(rng_states(device))  # every process takes part
        fields = self._merged("state_fields")
        processes.main_only(save_state)(
            self.state_path, self._modules(), fit_state, self.columns, **rank_rng[0], rank_rng=rank_rng,
            world_size=processes.world_size, experiment=self.experiment.to_dict(), device=str(device),
            amp=self.parts.scaler.is_enabled(), format=STATE_FORMAT, **fields)

    def end_epoch(self, fit_state: FitState, row: dict) -> None:
        self.context.log(f"fold {self.fold} epoch {fit_state.epoch}: train loss {row['train_loss']:.4f}, val loss "
                         f"{row['val_loss']:.4f}, val lwlrap {row['val_lwlrap']:.4f}{self._other_score(row)}"
                         f"{' *' if fit_state.best_epoch == fit_state.epoch else ''}")
        self._each("end_epoch", fit_state, row)
        if self.on_epoch is not None:
            self.on_epoch(fit_state, row)

    def _other_score(self, row: dict) -> str:
        """The log line's val score of ``[train] metric`` when it is not lwlrap."""
        metric = self._metric
        return "" if metric == "lwlrap" else f", val {metric} {row[f'val_{metric}']:.4f}"

    def _each(self, hook: str, *args) -> None:
        """Call the ``FoldOption`` hook ``hook`` of every option, in order."""
        for option in self.options:
            getattr(option, hook)(*args)

    def _merged(self, hook: str) -> dict:
        """The dicts every option's ``hook`` returns, merged in order."""
        merged = {}
        for option in self.options:
            merged.update(getattr(option, hook)())
        return merged

    def _result(self, fit_state: FitState) -> FoldResult:
        return FoldResult(self.fold, fit_state.best_epoch, fit_state.best_score, fit_state.epoch,
                          self.out_dir / "model.pt")


def _all(hooks: list):
    """One function calling each of ``hooks`` in turn (None when there are none)."""
    if not hooks:
        return None
    return hooks[0] if len(hooks) == 1 else lambda: [hook() for hook in hooks]


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


