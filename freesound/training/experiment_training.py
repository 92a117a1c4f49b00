"""The one entry that trains the folds of an experiment and scores them: ``freesound train``,
``search``'s trials, ``distill`` and ``train --devices`` all call ``train_folds``.

Where the folds train is an argument (``where``):

- ``IN_PROCESS``: in this process, one fold after another (``trainer.train_experiment``);
- ``Torchrun(environment)``: this process is one of a torchrun job (``freesound.settings.torchrun_environment``);
  it joins the job's process group on its own device (``distributed.process_device``) and the
  processes train each fold together; process 0 alone scores and reports;
- ``OnDevices(devices)``: one process per device, each training whole folds
  (``freesound.training.fold_devices``).

Every way runs the same preflight first (``tracking.reachable``: the trackers;
``trainer.checked_folds``: the settings, the folds, the ``[pretrained]`` folds), then, once every
fold of ``folds.csv`` has weights, the out-of-fold prediction and scores (``predict_oof``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from freesound.config import Experiment
from freesound.data.dataset import Dataset
from freesound.data.folds import recorded_folds
from freesound.errors import FreesoundError
from freesound.paths import checkpoint_path, fold_unfinished
from freesound.training.context import RunContext
from freesound.training.distributed import process_device, process_group
from freesound.training.fold_devices import train_folds_on_devices
from freesound.training.oof import predict_oof, reported_metrics
from freesound.training.tracking import reachable
from freesound.training.trainer import train_experiment


@dataclass(frozen=True)
class InProcess:
    """The folds train in this process, one after another."""


@dataclass(frozen=True)
class Torchrun:
    """This process is one of a torchrun job's (``environment``: ``settings.torchrun_environment()``)."""

    environment: dict


@dataclass(frozen=True)
class OnDevices:
    """One process per device (``fold_devices.parse_devices``), each training whole folds."""

    devices: tuple


IN_PROCESS = InProcess()


@dataclass(frozen=True)
class TrainingReport:
    """What ``train_folds`` did.

    Attributes
    ----------
    folds : list of FoldResult, the folds trained now
    untrained : list of int, folds of ``folds.csv`` that still have no weights, or unfinished ones
    oof_scores : dict or None, out-of-fold lwlrap (``predict_oof``) once every fold has weights
    main : bool, False in a torchrun process other than process 0, which reports nothing
    experiment : Experiment as trained: its ``[tracking]`` without a store that could not be
        reached (``tracking.reachable``); None where ``main`` is False
    """

    folds: list
    untrained: list
    oof_scores: dict | None
    main: bool = True
    experiment: Experiment | None = None


def train_folds(experiment: Experiment, dataset: Dataset, work, folds=None, *, context: RunContext | None = None,
                where=IN_PROCESS, max_epochs: int | None = None, resume: bool = False, on_epoch=None,
                score_oof: bool = True) -> TrainingReport:
    """Train the given folds (default: all of ``folds.csv``) where ``where`` says, then, once every
    fold of ``folds.csv`` has weights and ``score_oof``, predict each fold's held-out clips and
    score them out of fold.

    Parameters
    ----------
    context : RunContext (default: ``RunContext()``, on the CPU); under ``OnDevices`` its device
        is unused, and the out-of-fold scores are predicted on the first device
    where : IN_PROCESS, Torchrun or OnDevices (the module docstring)
    max_epochs : overrides ``train.max_epochs``
    resume : continue each fold from its saved state
    on_epoch : ``(fold, FitState, row) -> None`` after each epoch of each fold (may raise to stop);
        not with ``OnDevices``, whose folds train in other processes

    The experiment's trackers (``[tracking]``) are checked once first, by the process that logs
    (``tracking.reachable``): a missing package stops the run, an unreachable store is dropped.

    Raises
    ------
    FreesoundError
        ``on_epoch`` with ``OnDevices``; a tracker's missing package; and whatever the preflight or a
        fold refuses.
    """
    context = context or RunContext()
    if not isinstance(where, Torchrun) or where.environment["rank"] == 0:
        experiment = reachable(experiment, work, context.log,
                               context.tracked_under.group if context.tracked_under else None)
    run = dict(max_epochs=max_epochs, resume=resume)
    if isinstance(where, OnDevices):
        if on_epoch is not None:
            raise FreesoundError("folds training on several devices report no epochs to on_epoch; train in "
                                 "this process to follow each epoch")
        results = train_folds_on_devices(experiment, dataset, work, list(where.devices), folds, context=context, **run)
        context = dataclasses.replace(context, device=torch.device(where.devices[0]))
    elif isinstance(where, Torchrun):
        device = process_device(str(context.device), where.environment)
        with process_group(where.environment, device, log=context.log) as processes:
            context = dataclasses.replace(context, device=device).in_group(processes)
            results = train_experiment(experiment, dataset, work, folds, context=context, on_epoch=on_epoch, **run)
        if not processes.main:
            return TrainingReport(results, [], None, main=False)
    else:
        results = train_experiment(experiment, dataset, work, folds, context=context, on_epoch=on_epoch, **run)
    return score_trained(experiment, dataset, work, results, score_oof=score_oof, context=context)


def score_trained(experiment: Experiment, dataset: Dataset, work, results: list, *, score_oof: bool,
                  context: RunContext) -> TrainingReport:
    """The report on folds just trained (``results``): which folds of ``folds.csv`` still lack
    weights and, once none does and ``score_oof``, the out-of-fold scores (``predict_oof``)."""
    untrained = [fold for fold in recorded_folds(work) or []
                 if not checkpoint_path(work, experiment.name, fold).is_file()
                 or fold_unfinished(work, experiment.name, fold)]
    scores = None
    if score_oof and not untrained:
        scores = predict_oof(experiment.name, dataset, work, **context.predicting(),
                             metrics=reported_metrics(experiment.train.metric))
    return TrainingReport(results, untrained, scores, experiment=experiment)
