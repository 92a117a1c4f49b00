"""The options of a fold run as parts: each owns its state and joins the run through named hooks.

A fold run (``freesound.training.trainer.FoldRun``) calls every part's hooks at these points, in
the order the parts are listed::

    start()                      the fold begins (nothing read yet)
    sources() -> dict            training sources it adds: name -> (ClipSource, sampling share)
    adapt_train_set(train_set) -> train_set   the sampler is built, before the network
    check_resume(state)          a saved state is about to be restored: refuse it by raising
    adapt_model(model) -> model  the network is built, before its optimiser (``build_fold_parts``)
    modules() -> dict            modules whose state the resumable state keeps besides the fold's own
    step_hook() -> fn or None    called after every optimiser step
    end_train_epoch(epoch, batches)   an epoch's training is done (1-based), before validation
    end_epoch(fit_state, row)    the epoch is validated and its log row written (``engine.fit``)
    evaluated(model) -> model    the module to validate and checkpoint
    restarts_best(epoch) -> bool this epoch's model must not compete with the earlier ones
    begin_fit()                  every check passed; the first epoch (or the resumed one) follows
    checkpoint_fields() -> dict  what ``model.pt`` records of the option
    state_fields() -> dict       what ``state.pt`` records of the option
    end_fold(fit_state)          training stopped (or a resumed fold had already ended)
    abort_fold(error)            training raised ``error`` (a failure, an interrupt, a pruned trial)

Every hook does nothing unless a part overrides it, so an option adds a part and one line where
the run lists its parts. The teacher of ``[targets]`` (``TeacherTargets``) comes before the parts:
its predictions are the data's targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from freesound.config import Experiment
from freesound.data.dataset import Dataset
from freesound.training.averaging import WeightAverage
from freesound.training.context import RunContext
from freesound.training.distributed import Processes
from freesound.training.engine import FitState
from freesound.training.fold_guard import check_resume_held_out, mark_finished, mark_unfinished
from freesound.training.pretrained import load_pretrained
from freesound.training.teacher import TeacherPredictions, teacher_predictions


class FoldOption:
    """A part of a fold run; its hooks (the module docstring) do nothing until overridden."""

    def start(self) -> None:
        return None

    def sources(self) -> dict:
        return {}

    def adapt_train_set(self, train_set):
        return train_set

    def check_resume(self, state: dict) -> None:
        return None

    def adapt_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def modules(self) -> dict:
        return {}

    def step_hook(self) -> Callable[[], None] | None:
        return None

    def end_train_epoch(self, epoch: int, batches: Callable[[], Iterable]) -> None:
        return None

    def evaluated(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def end_epoch(self, fit_state: FitState, row: dict) -> None:
        return None

    def restarts_best(self, epoch: int) -> bool:
        return False

    def begin_fit(self) -> None:
        return None

    def checkpoint_fields(self) -> dict:
        return {}

    def state_fields(self) -> dict:
        return {}

    def end_fold(self, fit_state: FitState) -> None:
        return None

    def abort_fold(self, error: BaseException) -> None:
        return None


class PretrainedStart(FoldOption):
    """``[pretrained] experiment``: the network starts from that experiment's same-fold weights."""

    def __init__(self, experiment: Experiment, classes, work, fold: int):
        self.experiment, self.classes, self.work, self.fold = experiment, classes, work, fold

    def adapt_model(self, model: torch.nn.Module) -> torch.nn.Module:
        load_pretrained(model, self.experiment, self.classes, self.work, self.fold)
        return model


class SplitGuard(FoldOption):
    """The split the fold trains on and whether it ended (``freesound.training.fold_guard``): the
    held-out clips' fingerprint is recorded in ``model.pt`` and ``state.pt`` and a state saved on
    another split is not resumed; the fold is marked unfinished from its first epoch until
    training ends, so that predict and build-kernel refuse it meanwhile. Process 0 writes."""

    def __init__(self, work, name: str, fold: int, held_out: str, processes: Processes):
        self.work, self.name, self.fold, self.held_out, self.processes = work, name, fold, held_out, processes

    def check_resume(self, state: dict) -> None:
        check_resume_held_out(state, self.held_out, self.work, self.name, self.fold)

    def begin_fit(self) -> None:
        self.processes.main_only(mark_unfinished)(self.work, self.name, self.fold)

    def checkpoint_fields(self) -> dict:
        return {"held_out": self.held_out}

    def state_fields(self) -> dict:
        return {"held_out": self.held_out}

    def end_fold(self, fit_state: FitState) -> None:
        self.processes.main_only(mark_finished)(self.work, self.name, self.fold)


class ProcessGroup(FoldOption):
    """The processes of a torchrun job training the fold together (nothing in one process): batch
    norms synchronised when ``sync_batchnorm``, each process's own random stream, DDP's wrapper."""

    def __init__(self, processes: Processes, device: torch.device, sync_batchnorm: bool, seed: int):
        self.processes, self.device, self.sync_batchnorm, self.seed = processes, device, sync_batchnorm, seed

    def adapt_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = self.processes.prepare_model(model, self.device, self.sync_batchnorm)
        self.processes.seed_generators(self.seed)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train (``Processes.wrap``)."""
        return self.processes.wrap(model, self.device)


class Averaging(FoldOption):
    """``[averaging]``: SWA or EMA of ``model``'s weights (``WeightAverage``), validated and kept."""

    def __init__(self, average: WeightAverage, model: torch.nn.Module, context: RunContext, fold: int):
        self.average, self.model, self.context, self.fold = average, model, context, fold

    def modules(self) -> dict:
        return {"averaged": self.average.averaged} if self.average.enabled else {}

    def step_hook(self) -> Callable[[], None] | None:
        return self.average.step_hook(self.model)

    def end_train_epoch(self, epoch: int, batches: Callable[[], Iterable]) -> None:
        self.average.end_epoch(self.model, epoch, batches, self.context.device)

    def evaluated(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.average.current(model)

    def restarts_best(self, epoch: int) -> bool:
        return self.average.restarts_best(epoch)

    def checkpoint_fields(self) -> dict:
        averaged = self.average.current(self.model) is not self.model
        return {"averaging": self.average.config.method} if averaged else {}

    def end_fold(self, fit_state: FitState) -> None:
        config = self.average.config
        if config.method == "swa" and fit_state.epoch < config.swa_start:
            self.context.log(f"fold {self.fold}: training ended at epoch {fit_state.epoch}, before SWA's first "
                             f"epoch ({config.swa_start}): model.pt holds the best model without averaging")


class TeacherTargets:
    """``[targets]``: the teacher's predictions that the named sources train on (none when off)."""

    def __init__(self, experiment: Experiment, dataset: Dataset, work, context: RunContext):
        self.experiment, self.dataset, self.work, self.context = experiment, dataset, work, context

    def predictions(self) -> TeacherPredictions | None:
        """Made (and cached) when missing (``teacher_predictions``)."""
        return teacher_predictions(self.experiment, self.dataset, self.work, **self.context.predicting())
