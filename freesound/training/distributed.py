"""Data-parallel training of one fold in several processes (``torchrun``), and its one-process case.

    torchrun --nproc_per_node=N -m freesound train EXPERIMENT --data DIR ...

``torchrun`` starts N copies of the command and tells each its place through the environment
(``freesound.settings.torchrun_environment``); ``process_group`` joins them (gloo on the CPU, NCCL
on CUDA, each process on ``cuda:<LOCAL_RANK>``). The trainer talks to the others only through a
``Processes``, which in one process (``SINGLE``) does nothing at all, so the training loop is the
same code in both cases:

- each process trains on its slice of every batch (``freesound.training.sampling.EpochShard``),
  through ``DistributedDataParallel`` (``Processes.wrap``), which averages the gradients: with
  equal slices and the method's per-sample mean loss the step is the one-process step on the whole
  batch, up to batch-norm statistics (per process unless ``train.sync_batchnorm``);
- before validating, every process takes process 0's batch-norm statistics (``sync_buffers``), so
  all hold process 0's model, the one saved; each validates a contiguous part of the fold
  (``shard``) and ``gather`` puts the predictions together in fold order, so every process computes
  the val lwlrap of the whole fold and takes the same plateau / early-stop / checkpoint decisions;
- only process 0 writes (``main``); a resumed state is read by process 0 and sent to the others
  (``broadcast``), which needs no shared file system; each process's random generators are saved
  (``gather_objects``) and restored in its own process.

A process that fails makes the others fail rather than wait forever: torchrun stops the job when
one process exits with an error, and every collective operation has a timeout
(``settings.DEFAULT_DDP_TIMEOUT_S``, or ``FREESOUND_DDP_TIMEOUT_S``), after which it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from freesound.errors import FreesoundError


class DistributedError(FreesoundError):
    """Distributed training cannot start as asked (environment, devices, settings)."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes training one fold together.

    Attributes
    ----------
    rank : int, 0 .. world_size - 1; process 0 writes every file
    world_size : int, processes in the job (1: no torch.distributed calls at all)
    local_rank : int, its index on its machine (its GPU there)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (process 0)."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This process's contiguous part of ``n`` items, ``np.array_split``'s part ``rank`` (the
        first ``n % world_size`` parts one longer), so the parts in rank order make ``range(n)``."""
        size, extra = divmod(n, self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return range(start, start + size + (self.rank < extra))

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Every process's ``array`` concatenated on the first axis, in rank order, on every
        process (the arrays may differ in length along that axis)."""
        if self.world_size == 1:
            return array
        return np.concatenate(self.gather_objects(array))

    def gather_objects(self, value) -> list:
        """Every process's ``value`` (any picklable object), in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value):
        """Process 0's ``value`` (any picklable object), on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        """The mean of a number over the processes (each process's mean over an equal share)."""
        return float(np.mean(self.gather_objects(float(value))))

    def barrier(self) -> None:
        """Wait until every process is here (up to the job's timeout)."""
        if self.world_size > 1:
            dist.barrier()

    def main_only(self, function: Callable) -> Callable:
        """``function`` on process 0; a function that does nothing (returns None) elsewhere."""
        return function if self.main else _nothing

    def seed_generators(self, seed: int) -> None:
        """Give each process its own random stream for dropout and the like, from ``seed`` and its
        rank (one process keeps the stream it has, so a one-process run is unchanged)."""
        if self.world_size > 1:
            torch.manual_seed(int(np.random.SeedSequence((seed, self.rank)).generate_state(1)[0]))

    def prepare_model(self, model: torch.nn.Module, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
        """``model`` with its batch norms synchronised across processes when ``sync_batchnorm``
        (``torch.nn.SyncBatchNorm``; its parameters are the same objects, its state-dict keys the
        same names, and in eval mode it is a plain batch norm). Do this before building the
        optimizer. Nothing changes in one process.

        Raises
        ------
        DistributedError
            ``sync_batchnorm`` with several processes on the CPU: torch's SyncBatchNorm runs only
            on GPUs.
        """
        if not sync_batchnorm or self.world_size == 1:
            return model
        if device.type != "cuda":
            raise DistributedError("train.sync_batchnorm needs CUDA devices: torch's SyncBatchNorm does not run on "
                                   f"the {device.type.upper()}; set it to false to train on {device.type}")
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train: ``DistributedDataParallel(model)`` (gradients averaged over the
        processes in the backward pass), or ``model`` itself in one process. Save and validate
        ``model``, not the wrapper."""
        if self.world_size == 1:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy process 0's buffers (batch-norm running statistics) into every process's ``model``.

        ``DistributedDataParallel`` keeps the parameters equal, but each process's last training
        step updates its running statistics from its own slice of the batch.
        """
        if self.world_size == 1:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _nothing(*args, **kwargs):
    return None


#: The one-process case: every operation is a no-op or the identity.
SINGLE = Processes()


def backend_for(device_type: str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise (PyTorch's recommendation for each)."""
    return "nccl" if device_type == "cuda" else "gloo"


def process_device(device: str, env: dict) -> torch.device:
    """The device of the process at ``env["local_rank"]``: ``cuda:<local rank>`` for ``cuda``, the
    CPU for ``cpu``.

    Raises
    ------
    DistributedError
        ``device`` names a GPU index (each process takes its own, by local rank), or the machine
        has fewer GPUs than processes on it.
    """
    chosen = torch.device(device)
    if chosen.type != "cuda":
        return chosen
    if chosen.index is not None:
        raise DistributedError(f"under torchrun each process trains on cuda:<LOCAL_RANK>; give --device cuda, not "
                               f"{device} (CUDA_VISIBLE_DEVICES chooses the GPUs)")
    count = torch.cuda.device_count()
    if env["local_rank"] >= count:
        raise DistributedError(f"process {env['rank']} has local rank {env['local_rank']} but this machine has "
                               f"{count} GPU(s): start at most {count} processes per machine (--nproc_per_node)")
    return torch.device("cuda", env["local_rank"])


def job_line(world_size: int, backend: str, device: torch.device) -> str:
    """The one log line that says the processes joined as one run (process 0 writes it)."""
    return (f"distributed run: {world_size} processes joined one process group ({backend} backend, "
            f"{device.type}); each fold is trained by all of them together")


@contextmanager
def process_group(env: dict, device: torch.device, log=None):
    """Join the job ``env`` describes (``settings.torchrun_environment``) for the duration of the
    context, with the backend for ``device`` and ``env["timeout_s"]`` on every collective; yield
    this process's ``Processes``. Once joined, process 0 says so through ``log`` (``job_line``).

    torchrun's own rendezvous (``MASTER_ADDR``/``MASTER_PORT``, read by torch's ``env://``
    initialisation) connects the processes.
    """
    options = {"device_id": device} if device.type == "cuda" else {}
    backend = backend_for(device.type)
    dist.init_process_group(backend, rank=env["rank"], world_size=env["world_size"],
                            timeout=timedelta(seconds=env["timeout_s"]), **options)
    if log is not None and env["rank"] == 0:
        log(job_line(env["world_size"], backend, device))
    try:
        yield Processes(env["rank"], env["world_size"], env["local_rank"])
    finally:
        dist.destroy_process_group()
