"""Where and how a training run runs: one object instead of five arguments on every signature.

``RunContext`` holds what every step of a run needs but no step decides: the torch device, the
log function, whether progress bars are shown, the processes computing log-mels, the process
group (``freesound.training.distributed.Processes``) when the run is one process of a torchrun job,
and the trackers' run that the folds' runs nest under.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from freesound.training.distributed import SINGLE, Processes


@dataclass(frozen=True)
class RunContext:
    """Where and how a training run runs.

    Attributes
    ----------
    device : torch.device the run trains on
    log : ``(line) -> None``, the run's log lines (``print`` by default)
    show_progress : bool, show progress bars
    feature_workers : int, processes that compute log-mels not cached yet
    processes : Processes, this process's place in a torchrun job (``SINGLE``: alone)
    tracked_under : the trackers' run the folds' runs nest under (``tracking.ParentRun``: a search's
        trial), or None
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    log: Callable[[str], None] = print
    show_progress: bool = True
    feature_workers: int = 1
    processes: Processes = SINGLE
    tracked_under: object = None

    @classmethod
    def create(cls, device="cpu", log=print, progress: bool = True, feature_workers: int = 1,
               processes: Processes = SINGLE) -> "RunContext":
        """A context on ``device`` (a name or a ``torch.device``), showing progress bars when
        ``progress``, as one process of ``processes`` (``in_group``)."""
        return cls(torch.device(device), log, progress, feature_workers).in_group(processes)

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (always, outside a torchrun job)."""
        return self.processes.main

    def in_group(self, processes: Processes) -> "RunContext":
        """This context as one process of ``processes``: only process 0 logs and shows progress."""
        return dataclasses.replace(self, processes=processes, log=processes.main_only(self.log),
                                   show_progress=self.show_progress and processes.main)

    def predicting(self) -> dict:
        """The keyword arguments of the prediction helpers a run calls (``predict_oof``,
        ``teacher_predictions``): device, progress, feature workers and log."""
        return dict(device=str(self.device), progress=self.show_progress, feature_workers=self.feature_workers,
                    log=self.log)
