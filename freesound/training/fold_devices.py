"""Folds in parallel: one process per device, each training whole folds.

    freesound train EXPERIMENT --data DIR --devices cuda:0,cuda:1

Folds are independent, so with several GPUs the simplest speed-up is to train several at once,
one process per device (``spawn``ed: CUDA cannot be used in a forked child). Each process takes
the next fold from a shared queue and trains it with ``train_fold`` exactly as one process would
(same files, same resumable state, the same weights on the CPU); the parent caches the log-mels
first, shows one progress display (epochs of every fold, and each device's fold, epoch and val
lwlrap), prints each process's epoch lines, and reports the folds together, then the out-of-fold
score. A device may be named more than once (``cpu,cpu``); CPU processes share this process's torch
threads (``torch.get_num_threads()``) between them.

If a process fails, the others are stopped (each fold's last finished epoch is saved, so
``train --resume`` continues them) and the error names the fold and the device. Ctrl-C stops
every process and ends with one line, as in one process; a killed parent (``kill -9``) takes its
fold processes with it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import traceback
from dataclasses import dataclass

import torch

from freesound.config import Experiment
from freesound.data.dataset import Dataset
from freesound.data.features import ensure_features
from freesound.errors import FreesoundError
from freesound.predict.device import require_device
from freesound.processes import die_with_parent
from freesound.progress import progress_bar
from freesound.training.context import RunContext
from freesound.training.teacher import teacher_predictions
from freesound.training.trainer import TRAIN_SPLITS, checked_folds, train_fold

#: Seconds between checks that every fold process is still alive while waiting for its news.
POLL_S = 1.0
#: Seconds a fold process that has reported its exit gets to end before it is terminated.
EXIT_WAIT_S = 60.0
#: Seconds a fold process gets to end on the interrupt it had too before this one passes it on.
INTERRUPT_GRACE_S = 2.0
#: Seconds an interrupted fold process gets to end (its epoch's batch, its clean-up) before it is
#: terminated.
INTERRUPT_WAIT_S = 10.0


class FoldProcessError(FreesoundError):
    """A fold's process failed (the message names the fold, the device and the error)."""


def parse_devices(text: str) -> list:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]``, each a device torch understands and that
    ran one tiny convolution (``freesound.predict.device.require_device``), before any work starts.

    Raises
    ------
    FreesoundError
        An empty list or entry, or a name torch does not know (named).
    UnusableDeviceError
        A device this machine cannot run (named, with the reason).
    """
    names = [name.strip() for name in text.split(",")]
    if not text.strip():
        raise FreesoundError("--devices is empty: give devices separated by commas, e.g. cuda:0,cuda:1")
    if not all(names):
        raise FreesoundError(f"--devices {text!r} has an empty entry: give devices separated by commas, "
                             "e.g. cuda:0,cuda:1")
    for name in names:
        try:
            torch.device(name)
        except RuntimeError:
            raise FreesoundError(f"--devices: {name!r} is not a torch device (e.g. cuda:0, cuda:1, cpu)") from None
    for name in dict.fromkeys(names):
        require_device(name)
    return names


def device_labels(devices: list) -> list:
    """Names to show for the processes: the device, with ``#k`` where a device is named twice."""
    return [device if devices.count(device) == 1 else f"{device}#{devices[:i].count(device)}"
            for i, device in enumerate(devices)]


@dataclass(frozen=True)
class _Job:
    """What a fold process needs besides its device and the queues (pickled once per process)."""

    experiment: Experiment
    dataset: Dataset
    work: str
    max_epochs: int | None
    resume: bool
    cpu_threads: int


def _fold_process(slot: int, device: str, job: _Job, folds, events, parent: int) -> None:
    """A fold process: train folds from ``folds`` until its ``None``, reporting to ``events``:
    ``("log", slot, line)``, ``("epoch", slot, fold, epoch, val score)`` (of ``[train] metric``), ``("done", slot,
    FoldResult)``, and last ``("exit", slot)`` or ``("failed", slot, fold, message, traceback or
    None)``. It ends when ``parent`` dies; interrupted (Ctrl-C), it ends quietly: the parent
    reports the interrupt."""
    die_with_parent(parent)
    if torch.device(device).type == "cpu":
        torch.set_num_threads(job.cpu_threads)
    context = RunContext.create(device, log=lambda line: events.put(("log", slot, line)), progress=False)
    fold, score = None, f"val_{job.experiment.train.metric}"
    try:
        while (fold := folds.get()) is not None:
            result = train_fold(
                job.experiment, job.dataset, job.work, fold, context=context, max_epochs=job.max_epochs,
                resume=job.resume,
                on_epoch=lambda run, row, fold=fold: events.put(("epoch", slot, fold, run.epoch, row[score])))
            events.put(("done", slot, result))
    except Exception as error:  # reported to the parent, which stops the job with it
        expected = isinstance(error, FreesoundError)
        events.put(("failed", slot, fold, str(error) if expected else f"{type(error).__name__}: {error}",
                     None if expected else traceback.format_exc()))
        return
    except KeyboardInterrupt:
        # Exiting normally (no traceback) runs this process's clean-up, which frees its
        # semaphores; a second interrupt must not break into it, and the news it has not sent
        # is no longer read.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        events.cancel_join_thread()
        return
    events.put(("exit", slot))


def train_folds_on_devices(experiment: Experiment, dataset: Dataset, work, devices: list, folds=None, *,
                           context: RunContext, max_epochs: int | None = None, resume: bool = False) -> list:
    """Train ``folds`` (default: every fold of ``folds.csv``) in one process per entry of
    ``devices``, at most one process per fold, after ``trainer.checked_folds``; return their
    ``FoldResult``s in fold order. ``context`` gives the log, progress display and feature workers
    (its device is unused).

    Raises
    ------
    FoldProcessError
        A fold's process failed (or died): the others are stopped; the message names the fold,
        its device and the error (an unexpected error's traceback is logged first).
    """
    folds = checked_folds(experiment, dataset, work, folds)
    progress, log = context.show_progress, context.log
    ensure_features(dataset, work, experiment.audio, splits=TRAIN_SPLITS, workers=context.feature_workers,
                    progress=progress)
    # A [targets] teacher's predictions are made (and cached) once here, not by every process.
    teacher_predictions(experiment, dataset, work, **{**context.predicting(), "device": devices[0]})
    devices = list(devices)[: len(folds)]
    labels = device_labels(devices)
    cpu_processes = sum(torch.device(device).type == "cpu" for device in devices)
    job = _Job(experiment, dataset, str(work), max_epochs, resume,
               cpu_threads=max(1, torch.get_num_threads() // max(1, cpu_processes)))
    context = multiprocessing.get_context("spawn")
    fold_queue, events = context.Queue(), context.Queue()
    for fold in folds + [None] * len(devices):
        fold_queue.put(fold)
    processes = [context.Process(target=_fold_process, name=f"freesound-fold-{label}",
                                 args=(slot, device, job, fold_queue, events, os.getpid()))
                 for slot, (device, label) in enumerate(zip(devices, labels))]
    epochs = experiment.train.max_epochs if max_epochs is None else max_epochs
    log(f"training folds {', '.join(map(str, folds))} on {', '.join(labels)}, one process per device")
    finished = False
    try:
        for process in processes:
            process.start()
        results = _follow(processes, events, labels, devices, folds, epochs, progress, log)
        finished = True
        return results
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches every process. An interrupt sent to this one alone is passed
        # on, so that each fold process ends as quietly; only to those still running after a
        # moment, as a second interrupt would break into a fold process's clean-up.
        for process in processes:
            process.join(timeout=INTERRUPT_GRACE_S)
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join(timeout=INTERRUPT_WAIT_S)
        raise
    finally:
        # A process that reported its exit is left to finish its interpreter's clean-up (a
        # terminated one can leave its semaphores behind); after a failure the others are stopped.
        for process in processes:
            process.join(timeout=EXIT_WAIT_S if finished else 0)
            if process.is_alive():
                process.terminate()
                process.join()


def _follow(processes, events, labels, devices, folds, epochs: int, progress: bool, log) -> list:
    """Show the fold processes' news until each has exited; return their results in fold order."""
    results, running, counted = {}, set(range(len(processes))), {fold: 0 for fold in folds}
    status = {label: "starting" for label in labels}
    with progress_bar(total=len(folds) * epochs, desc="folds", unit="epoch", enabled=progress) as bar:
        while running:
            try:
                event = events.get(timeout=POLL_S)
            except queue.Empty:
                for slot in list(running):
                    if not processes[slot].is_alive():
                        raise FoldProcessError(f"the process training on {labels[slot]} died (exit status "
                                               f"{processes[slot].exitcode}); the other folds were stopped, "
                                               "and train --resume continues them")
                continue
            kind, slot = event[0], event[1]
            if kind == "log":
                with bar.external_write_mode():
                    log(f"[{labels[slot]}] {event[2]}")
            elif kind == "epoch":
                _, _, fold, epoch, score = event
                counted[fold] += 1
                bar.update(1)
                status[labels[slot]] = f"fold {fold} epoch {epoch}/{epochs} val {score:.3f}"
                bar.set_postfix(**status)
            elif kind == "done":
                result = event[2]
                results[result.fold] = result
                bar.update(max(0, epochs - counted[result.fold]))
                counted[result.fold] = epochs
                status[labels[slot]] = f"fold {result.fold} done"
                bar.set_postfix(**status)
            elif kind == "exit":
                running.discard(slot)
            else:
                _, _, fold, message, details = event
                if details:
                    with bar.external_write_mode():
                        log(details.rstrip())
                raise FoldProcessError(f"fold {fold} on {devices[slot]} failed: {message} (the other folds were "
                                       "stopped; train --resume continues them)")
    return [results[fold] for fold in sorted(results)]
