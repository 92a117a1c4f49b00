"""The training loop skeleton both trainers share: first-level models and stackers.

One epoch, top to bottom::

    train_values = hooks.train_epoch(epoch)      # e.g. {"train_loss": 0.08}
    score, val_values = hooks.validate()         # the val score (lwlrap unless a trainer's metric
                                                 # says otherwise), e.g. {"val_loss": 0.05}
    scheduler.step(score)                        # reduce-on-plateau of the val score
    log row: epoch, lr, train values, val_lwlrap (the score), val values, seconds
    if hooks.restart_best(epoch): forget the best so far # SWA's first averaged model
    if score improved: hooks.save_best(epoch, score)     # keep the best checkpoint
    early stop after `early_stop_patience` epochs without improvement
    write log.csv; hooks.save_state(state)       # the resumable state, after the log
    hooks.end_epoch(state, row)                  # a log line; a search's pruning

``FitState`` is what a resumed run needs besides the tensors (epoch, best score, patience count,
log rows); ``save_state`` / ``load_state`` write and read it with the modules' state dicts, and
``rng_states`` / ``restore_rng_states`` the random generators. ``on_device`` and
``deterministic_algorithms`` are the process-wide settings a training run holds while it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from freesound.errors import FreesoundError
from freesound.fileio import atomic_path, atomic_write_csv
from freesound.models.checkpoint import CheckpointError, read_torch_file
from freesound.settings import use_deterministic_cublas_workspace


@dataclass
class FitState:
    """Where a training run stands.

    Attributes
    ----------
    epoch : int, epochs finished
    best_score : float, the best val score so far (-1 before the first epoch; saved as ``best_lwlrap``
        whatever the metric, the name of resumable states written before there were others)
    best_epoch : int, the epoch it was reached at (1-based; -1 before the first epoch)
    bad_epochs : int, epochs since the last improvement
    rows : list of dict, the log, one row per epoch
    finished : bool, stopped early
    """

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    rows: list = field(default_factory=list)
    finished: bool = False

    def to_state(self, columns) -> dict:
        """Plain values for a ``weights_only`` state file."""
        return {"epoch": self.epoch, "best_lwlrap": float(self.best_score), "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "log": [[row[c] for c in columns] for row in self.rows],
                "finished": self.finished}

    @classmethod
    def from_state(cls, state: dict, columns) -> "FitState":
        return cls(epoch=state["epoch"], best_score=state["best_lwlrap"], best_epoch=state["best_epoch"],
                   bad_epochs=state["bad_epochs"], rows=[dict(zip(columns, row)) for row in state["log"]],
                   finished=state["finished"])


@dataclass
class Hooks:
    """What differs between trainers; ``fit`` calls them in the order of the module docstring.

    Attributes
    ----------
    train_epoch : ``(epoch index, 0-based) -> dict`` of log values
    validate : ``() -> (val score, dict of other log values)``; the score is logged as ``val_lwlrap``
        unless the dict holds ``val_lwlrap`` itself (the score is then another metric's)
    save_best : ``(epoch, score) -> None``, called when the score improved
    save_state : ``(FitState) -> None``, the resumable state, after the log is written (optional)
    end_epoch : ``(FitState, row) -> None``, last; may raise to stop training, as a search does to
        prune a trailing trial (optional)
    restart_best : ``(epoch, 1-based) -> bool``, before the score is compared: True when this
        epoch's model is the first of a kind the earlier ones must not compete with (SWA's first
        averaged model); the best score and the epochs without improvement then start afresh from
        it (optional)
    """

    train_epoch: Callable[[int], dict]
    validate: Callable[[], tuple]
    save_best: Callable[[int, float], None]
    save_state: Callable[[FitState], None] | None = None
    end_epoch: Callable[[FitState, dict], None] | None = None
    restart_best: Callable[[int], bool] | None = None


def fit(hooks: Hooks, optimizer, scheduler, *, max_epochs: int, early_stop_patience: int, log_path, columns,
        resumed: FitState | None = None) -> FitState:
    """Train until ``max_epochs`` epochs are done or the run stops early; return where it stands.

    Parameters
    ----------
    hooks : Hooks
    optimizer : its first parameter group's ``lr`` is logged
    scheduler : ``ReduceLROnPlateau`` in ``mode="max"``, stepped on the val score
    max_epochs : total epochs, counting those of a ``resumed`` run
    early_stop_patience : stop after this many epochs without improvement
    log_path : ``log.csv``, rewritten atomically after every epoch; None: not written (a torchrun
        process other than process 0)
    columns : the log's columns, in order (a subset of each row's keys)
    resumed : a resumed run's ``FitState`` (default: a fresh one)
    """
    state = resumed or FitState()
    while state.epoch < max_epochs and not state.finished:
        started = time.perf_counter()
        train_values = hooks.train_epoch(state.epoch)
        score, val_values = hooks.validate()
        scheduler.step(score)
        state.epoch += 1
        row = {"epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"], **train_values, "val_lwlrap": score,
               **val_values, "seconds": time.perf_counter() - started}
        state.rows.append({column: row[column] for column in columns})
        if hooks.restart_best is not None and hooks.restart_best(state.epoch):
            state.best_score, state.bad_epochs = -1.0, 0
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            hooks.save_best(state.epoch, score)
        else:
            state.bad_epochs += 1
        state.finished = state.bad_epochs >= early_stop_patience
        if log_path is not None:
            atomic_write_csv(log_path, pd.DataFrame(state.rows, columns=columns), index=False)
        if hooks.save_state is not None:
            hooks.save_state(state)
        if hooks.end_epoch is not None:
            hooks.end_epoch(state, row)
    return state


def save_state(path, modules: dict, fit_state: FitState, columns, **extra) -> None:
    """Write a resumable state atomically: every module's (model, optimizer, scheduler, scaler)
    ``state_dict()``, the ``FitState`` and ``extra`` plain values (RNG states, settings)."""
    state = {name: module.state_dict() for name, module in modules.items()}
    state.update(fit_state.to_state(columns), **extra)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path, map_location="cpu") -> dict:
    """A state written by ``save_state`` (``weights_only``: no pickled code runs).

    Read it onto the CPU (the default) even to resume on a GPU: ``restore`` copies each tensor to
    its module's device, except the optimizers' ``step`` counters, which torch keeps where they are
    loaded unless the optimizer is ``capturable`` or ``fused``; counters on a GPU cost one device
    synchronisation per parameter per step (``torch.optim.Adam``'s ``capturable`` documentation).

    Raises
    ------
    FreesoundError
        The file is not a readable state (truncated by a full disk, say): one sentence naming it
        and saying to train without ``--resume``, which replaces it.
    """
    try:
        return read_torch_file(Path(path), map_location, what="training state")
    except (CheckpointError, OSError) as error:
        reason = str(error) if isinstance(error, CheckpointError) else f"{path}: unreadable ({error})"
        raise FreesoundError(f"{reason}; train the fold again without --resume, which replaces it") from error


def restore(state: dict, modules: dict, columns) -> FitState:
    """Load every module's state from ``state`` (read by ``load_state``); return its ``FitState``."""
    for name, module in modules.items():
        module.load_state_dict(state[name])
    return FitState.from_state(state, columns)


def rng_states(device: torch.device) -> dict:
    """The state of every generator a training step on ``device`` draws from, for ``save_state``.

    Returns
    -------
    dict: ``rng``, the CPU generator's state (ByteTensor); on a CUDA device also ``cuda_rng``,
    a list with one state per visible GPU (``torch.cuda.get_rng_state_all``): dropout on CUDA
    tensors draws from the GPU's generator, not the CPU's.
    """
    states = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(state: dict, device: torch.device) -> bool:
    """Set the generators ``rng_states`` saved in ``state``.

    Returns
    -------
    bool: every generator a step on ``device`` draws from was restored. False when resuming on
    CUDA a state without CUDA generator states for this many GPUs (saved on the CPU, or with
    another GPU count); those generators then keep the run's seeding, so the resumed epochs draw
    other random numbers than an uninterrupted run would.
    """
    torch.set_rng_state(state["rng"].cpu())
    if device.type != "cuda":
        return True
    saved = state.get("cuda_rng") or []
    if len(saved) != torch.cuda.device_count():
        return False
    torch.cuda.set_rng_state_all([generator.cpu() for generator in saved])
    return True


def on_device(device: torch.device):
    """A context in which a CUDA ``device`` is the current one (nothing for other devices).

    Pinned host memory (``DataLoader(pin_memory=True)``) is allocated through the current device,
    so training on ``cuda:1`` outside this context would open a second CUDA context on GPU 0.
    """
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


@contextmanager
def deterministic_algorithms(enabled: bool):
    """Within the context, with ``enabled``: only deterministic algorithms
    (``torch.use_deterministic_algorithms``; an operation without one raises), cuDNN deterministic
    and not autotuning, and cuBLAS's deterministic workspace
    (``freesound.settings.use_deterministic_cublas_workspace``). The previous settings are
    restored on exit. Without ``enabled`` nothing changes.

    Source: PyTorch's "Reproducibility" notes (torch.backends.cudnn, CUBLAS_WORKSPACE_CONFIG).
    """
    if not enabled:
        yield
        return
    use_deterministic_cublas_workspace()
    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.deterministic, cudnn.benchmark = previous[2], previous[3]
