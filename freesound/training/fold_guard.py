"""What keeps a fold's weights honest: one training at a time, marked unfinished until it ends,
and tied to the split it trained on.

- ``fold_lock``: an exclusive ``flock`` on ``<work>/train_state/<name>/fold_<k>/lock`` while the
  fold trains, so a second training of the same fold is refused instead of overwriting the
  first's files. The kernel releases the lock when its process dies, so a killed run leaves no
  stale lock; the file holds the holder's pid for the message.
- ``mark_unfinished`` / ``mark_finished``: the ``fold_<k>/unfinished`` marker beside ``model.pt``
  (``freesound.paths.UNFINISHED_FILE``), which ``experiment_checkpoints`` refuses. It lives with
  the weights, not in ``train_state/``, so the check is one ``stat`` and also holds for a copy of
  ``experiments/`` (the Kaggle weights dataset) without the training states; weights that never
  went through training here (``import-argus``) have no marker.
- ``held_out`` fingerprints (``freesound.data.folds.held_out_fingerprint``), recorded in each
  fold's checkpoint and training state: a fold is not predicted out of fold, nor resumed, on a
  ``folds.csv`` that holds out other clips than it trained without. Weights from before the
  fingerprint was recorded (or imported) carry none and are taken as they are.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.data.folds import fold_fingerprint
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_text
from freesound.models import load_checkpoint
from freesound.paths import folds_path, train_state_path, unfinished_marker

LOCK_FILE = "lock"


class FoldBusyError(FreesoundError):
    """Another process is training the same fold."""


class StaleSplitError(FreesoundError):
    """Weights or a training state made on other folds than ``folds.csv`` now has."""


def fold_lock(work, name: str, fold: int, *, enabled: bool = True):
    """A context holding the fold's training lock (nothing when not ``enabled``: a torchrun
    process other than process 0, whose process 0 holds it).

    Raises
    ------
    FoldBusyError
        Another process holds it (its pid named).
    """
    return _held_lock(train_state_path(work, name, fold).parent / LOCK_FILE, name, fold) if enabled else nullcontext()


@contextmanager
def _held_lock(path: Path, name: str, fold: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written in place, not by an atomic rename: the lock is held on this one file (inode).
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 64).decode(errors="replace").strip() or "unknown"
            raise FoldBusyError(f"fold {fold} of {name!r} is being trained by another process (pid {holder}, "
                                f"holding {path}); wait for it to end or stop it") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def mark_unfinished(work, name: str, fold: int) -> None:
    """Mark the fold as in training (before its first epoch)."""
    atomic_write_text(unfinished_marker(work, name, fold),
                      f"fold {fold} of {name} is training or was interrupted; "
                      f"`freesound train {name} --fold {fold} --resume` finishes it\n")


def mark_finished(work, name: str, fold: int) -> None:
    """Mark the fold's training as ended (its last epoch done, or stopped early)."""
    unfinished_marker(work, name, fold).unlink(missing_ok=True)


def check_resume_held_out(state: dict, held_out: str, work, name: str, fold: int) -> None:
    """Refuse to resume a fold whose saved state held out other clips than ``folds.csv`` now does.

    Raises
    ------
    StaleSplitError
        The state's ``held_out`` fingerprint differs from ``held_out`` (a state without one is
        from before it was recorded and resumes).
    """
    saved = state.get("held_out")
    if saved is not None and saved != held_out:
        raise StaleSplitError(f"fold {fold} of {name!r} was trained holding out other clips than fold {fold} of "
                              f"{folds_path(work)} (remade since), so it cannot be resumed; train it again "
                              f"without --resume, or restore the folds.csv it was trained on")


def check_checkpoint_held_out(checkpoint_path, folds: pd.DataFrame, fold: int, work) -> None:
    """Refuse a fold checkpoint that held out other clips than ``folds`` (``folds.csv``) holds out
    in ``fold``: predicting that fold out of fold would score clips the model trained on.

    Raises
    ------
    StaleSplitError
        The checkpoint's ``held_out`` fingerprint differs (one without is taken as it is).
    """
    saved = load_checkpoint(checkpoint_path).get("held_out")
    if saved is not None and saved != fold_fingerprint(folds, fold):
        raise StaleSplitError(f"{checkpoint_path} was trained holding out other clips than fold {fold} of "
                              f"{folds_path(work)} (remade since), so its out-of-fold predictions would score "
                              f"clips it trained on; retrain the experiment, or restore the folds.csv it was "
                              f"trained on")


def check_oof_folds(oof_path, fnames, oof_folds, folds: pd.DataFrame, work) -> None:
    """Refuse out-of-fold predictions (``oof_path``, clips ``fnames`` of folds ``oof_folds``) made
    on other folds than ``folds`` (``folds.csv``).

    Raises
    ------
    StaleSplitError
        A clip in another fold, or other clips (the first named).
    """
    expected = folds.set_index("fname").fold
    fnames = pd.Index(np.asarray(fnames, dtype=str))
    if set(fnames) != set(expected.index):
        raise StaleSplitError(f"{oof_path} predicts other clips than {folds_path(work)} holds; predict the "
                              f"experiment again (freesound predict)")
    differs = np.flatnonzero(np.asarray(oof_folds) != expected.loc[fnames].to_numpy())
    if len(differs):
        first = differs[0]
        raise StaleSplitError(f"{oof_path} was predicted on other folds than {folds_path(work)} (clip "
                              f"{fnames[first]!r}: fold {oof_folds[first]} there, {expected[fnames[first]]} in "
                              f"folds.csv); retrain the experiment on these folds, or restore the folds.csv it "
                              f"was trained on")
