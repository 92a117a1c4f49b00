"""Weight averaging for the first-level training: SWA over the last epochs, or an EMA of the weights.

``[averaging] method`` chooses (``freesound.config.AveragingConfig``); the trainer validates,
checkpoints and saves in its resumable state the averaged model this keeps, built on
``torch.optim.swa_utils.AveragedModel``:

- ``"swa"`` (stochastic weight averaging; Izmailov et al., "Averaging Weights Leads to Wider
  Optima and Better Generalization", UAI 2018): from epoch ``swa_start`` on, the weights at the end
  of each epoch join an equal-weight mean; its batch-norm statistics, which averaging weights does
  not give, are recomputed over training batches (``torch.optim.swa_utils.update_bn``) before it
  is validated. The models averaged from ``swa_start`` on are the only ones to compete for the
  checkpoint (``restarts_best``), so the kept model is an averaged one whenever the run reaches
  ``swa_start``.
- ``"ema"``: after every optimiser step, ``avg <- decay * avg + (1 - decay) * w`` over the
  parameters and the batch-norm buffers (``get_ema_multi_avg_fn``, ``use_buffers=True``); the
  first step copies the weights.

``WeightAverage.current(model)`` is the module to validate and save: the averaged one once it
exists, ``model`` itself before (SWA's first epochs) or without averaging.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from freesound.config import AveragingConfig


class WeightAverage:
    """The averaged copy of one model that a training run keeps (see the module docstring).

    Parameters
    ----------
    model : the training model (not a DDP or compiled wrapper); copied, on its device
    config : AveragingConfig
    """

    def __init__(self, model: torch.nn.Module, config: AveragingConfig):
        self.config = config
        self.averaged = None
        if config.method == "ema":
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                                          use_buffers=True)
        elif config.method == "swa":
            self.averaged = AveragedModel(model)

    @property
    def enabled(self) -> bool:
        return self.averaged is not None

    def step_hook(self, model: torch.nn.Module) -> Callable[[], None] | None:
        """What to call after every optimiser step on ``model`` (EMA: average its new weights), or None."""
        if self.config.method != "ema":
            return None
        return lambda: self.averaged.update_parameters(model)

    def end_epoch(self, model: torch.nn.Module, epoch: int, batches: Callable[[], Iterable], device) -> None:
        """SWA: add ``model``'s weights after ``epoch`` (1-based) to the mean once ``epoch`` reaches
        ``swa_start``, then recompute the mean's batch-norm statistics over ``batches()`` (an
        iterable of ``(images, ...)`` batches; its first ``bn_batches`` when that is set). Nothing
        for EMA, which averages step by step."""
        if self.config.method != "swa" or epoch < self.config.swa_start:
            return
        self.averaged.update_parameters(model)
        loader = batches()
        if self.config.bn_batches:
            loader = itertools.islice(loader, self.config.bn_batches)
        update_bn(((images.to(device, memory_format=torch.channels_last), *rest) for images, *rest in loader),
                  self.averaged.module)

    def current(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to validate and checkpoint: the average once it holds weights, else ``model``."""
        if self.averaged is not None and int(self.averaged.n_averaged) > 0:
            return self.averaged.module
        return model

    def restarts_best(self, epoch: int) -> bool:
        """Whether ``epoch`` (1-based) validates the first model of a new kind, against which the
        earlier ones no longer compete: SWA's first averaged model, at ``swa_start``."""
        return self.config.method == "swa" and epoch == self.config.swa_start
