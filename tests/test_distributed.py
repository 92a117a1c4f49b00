"""Training past one process: DDP under torchrun (gloo, 2 CPU processes) and folds across devices
(``train --devices cpu,cpu``), end to end through the command line, plus the pure pieces."""

import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_experiment_toml
from torch.utils.data import DataLoader

from freesound.config import load_experiment
from freesound.metrics import lwlrap
from freesound.models import load_model
from freesound.paths import train_state_path
from freesound.training.augment import valid_transform
from freesound.training.distributed import DistributedError, Processes, process_device, process_group
from freesound.training.sampling import EpochShard, ValidationDataset
from freesound.training.trainer import build_sources, train_fold

#: Weights of a resumed DDP run against an unbroken one. Two CPU processes over gloo sum the same
#: two gradients in the same order every run, so the weights are expected bit for bit equal; the
#: tolerance only leaves room for float32 rounding should gloo change its reduction.
RESUME_ATOL = 1e-6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def freesound_command(args, cwd, torchrun: bool = False, processes: int = 2):
    """Run ``python -m freesound ARGS`` (under torchrun with ``processes`` processes when asked);
    return the completed process (stdout and stderr as text)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                 f"--master_port={free_port()}"] if torchrun else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FREESOUND_DDP_TIMEOUT_S": "120"}
    return subprocess.run([*launcher, "-m", "freesound", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def train_args(dataset_root, work, experiment, *more, device="cpu"):
    return ["train", str(experiment), "--data", str(dataset_root), "--work", str(work), "--no-oof", *more,
            *(["--device", device] if device else [])]


@pytest.fixture
def tiny_setup(tiny_data, tmp_path):
    dataset, work = tiny_data
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(tiny_experiment_toml(epoch_size=32, max_epochs=2))
    return dataset, work, experiment


def copy_work(work, destination):
    import shutil

    shutil.copytree(work, destination)
    return destination


def whole_fold_lwlrap(checkpoint, experiment, dataset, work, fold=0) -> float:
    """The val lwlrap of ``checkpoint``'s weights on every clip of ``fold``, computed in this one
    process as the trainer does (centre crop)."""
    _, _, (specs, targets, _) = build_sources(experiment, dataset, work, fold)
    model = load_model(checkpoint)
    loader = DataLoader(ValidationDataset(specs, targets, valid_transform(experiment.transforms.crop)), batch_size=7)
    with torch.inference_mode():
        outputs = [model(images.contiguous(memory_format=torch.channels_last)) for images, _ in loader]
    logits = torch.cat([out[0] if isinstance(out, tuple) else out for out in outputs])
    return lwlrap(targets, torch.sigmoid(logits).numpy())


@pytest.mark.slow
def test_torchrun_trains_a_fold_whose_log_is_the_whole_folds_and_resumes_exactly(tiny_setup, tmp_path):
    """2 gloo processes: a 2-epoch fold; its checkpoint loads; the logged val lwlrap of the saved
    epoch is that of the saved weights on the whole fold; process 0 alone prints; a run stopped
    after epoch 1 (its state saved, as a killed run leaves it) resumes to the unbroken run's weights."""
    dataset, work, experiment_path = tiny_setup
    experiment = load_experiment(experiment_path, tmp_path)
    straight = copy_work(work, tmp_path / "straight")
    done = freesound_command(train_args(dataset.root, straight, experiment_path, "--fold", "0"), tmp_path, True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("fold 0 epoch 1:") == 1 and done.stdout.count("fold 0 epoch 2:") == 1
    assert done.stdout.count("distributed run: 2 processes joined one process group (gloo backend, cpu)") == 1
    fold_dir = straight / "experiments" / "tiny" / "fold_0"
    log = pd.read_csv(fold_dir / "log.csv")
    assert list(log.epoch) == [1, 2]
    best = log.loc[log.val_lwlrap.idxmax()]
    checkpoint = torch.load(fold_dir / "model.pt", weights_only=False)
    assert checkpoint["epoch"] == best.epoch
    recomputed = whole_fold_lwlrap(fold_dir / "model.pt", experiment, dataset, straight)
    assert recomputed == pytest.approx(best.val_lwlrap, abs=1e-6)
    assert checkpoint["val_lwlrap"] == pytest.approx(recomputed, abs=1e-6)

    resumed = copy_work(work, tmp_path / "resumed")
    first = freesound_command(train_args(dataset.root, resumed, experiment_path, "--fold", "0", "--epochs", "1"),
                              tmp_path, True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(train_state_path(resumed, "tiny", 0), weights_only=False)["epoch"] == 1
    second = freesound_command(train_args(dataset.root, resumed, experiment_path, "--fold", "0", "--resume"),
                               tmp_path, True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fold 0: resuming after epoch 1" in second.stdout and "bit for bit" not in second.stdout
    states = [torch.load(train_state_path(run, "tiny", 0), weights_only=False) for run in (straight, resumed)]
    assert states[0]["epoch"] == states[1]["epoch"] == 2 and states[1]["world_size"] == 2
    for key, value in states[0]["model"].items():
        assert torch.allclose(value.float(), states[1]["model"][key].float(), rtol=0, atol=RESUME_ATOL), key
    np.testing.assert_allclose([row[:5] for row in states[0]["log"]], [row[:5] for row in states[1]["log"]], atol=1e-6)


#: The logged val lwlrap came from fp16 (AMP) predictions on the GPUs, the recomputation from the
#: CPU's fp32: a rank metric, it moves only where two clips' scores swap order.
AMP_LWLRAP_TOLERANCE = 0.02


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)")
def test_torchrun_on_every_gpu(tiny_setup, tmp_path):
    """DDP (NCCL) with one process per GPU present: trains, and the logged val lwlrap is the
    saved weights' on the whole fold."""
    dataset, work, experiment_path = tiny_setup
    run = copy_work(work, tmp_path / "gpus")
    done = freesound_command(train_args(dataset.root, run, experiment_path, "--fold", "0", device="cuda"), tmp_path,
                             True, processes=torch.cuda.device_count())
    assert done.returncode == 0, done.stderr[-3000:]
    log = pd.read_csv(run / "experiments" / "tiny" / "fold_0" / "log.csv")
    assert list(log.epoch) == [1, 2]
    recomputed = whole_fold_lwlrap(run / "experiments" / "tiny" / "fold_0" / "model.pt",
                                   load_experiment(experiment_path, tmp_path), dataset, run)
    assert recomputed == pytest.approx(log.val_lwlrap.max(), abs=AMP_LWLRAP_TOLERANCE)


@pytest.mark.slow
def test_devices_cpu_cpu_trains_two_folds_at_once(tiny_setup, tmp_path):
    """Two folds in two processes: both trained, with one summary, and fold 0's weights are those
    that one process trains."""
    dataset, work, experiment_path = tiny_setup
    parallel = copy_work(work, tmp_path / "parallel")
    done = freesound_command(train_args(dataset.root, parallel, experiment_path, "--fold", "0", "--fold", "1",
                                        "--devices", "cpu,cpu", device=None), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training folds 0, 1 on cpu#0, cpu#1, one process per device" in done.stdout
    summary = done.stdout.split("best val lwlrap per fold")[1]
    assert summary.count("fold 0:") == 1 and summary.count("fold 1:") == 1
    for fold in (0, 1):
        assert len(pd.read_csv(parallel / "experiments" / "tiny" / f"fold_{fold}" / "log.csv")) == 2

    alone = copy_work(work, tmp_path / "alone")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes of this 2-thread test run
    try:
        train_fold(load_experiment(experiment_path, tmp_path), dataset, alone, 0, progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    weights = [torch.load(train_state_path(run, "tiny", 0), weights_only=False)["model"] for run in (parallel, alone)]
    for key, value in weights[0].items():
        assert torch.allclose(value.float(), weights[1][key].float(), rtol=0, atol=1e-6), key


def test_devices_refuses_device_and_bad_names(tiny_setup, tmp_path):
    dataset, work, experiment_path = tiny_setup
    from click.testing import CliRunner

    from freesound.cli import main

    runner = CliRunner()
    both = runner.invoke(main, train_args(dataset.root, work, experiment_path, "--devices", "cpu,cpu"))
    assert both.exit_code == 2 and "not with --device" in both.output
    bad = runner.invoke(main, train_args(dataset.root, work, experiment_path, "--devices", "cpu,,cpu", device=None))
    assert bad.exit_code == 1 and "has an empty entry" in bad.output
    empty = runner.invoke(main, train_args(dataset.root, work, experiment_path, "--devices", "", device=None))
    assert empty.exit_code == 1 and "--devices is empty" in empty.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_devices_refuses_an_unusable_device_before_any_work(tiny_setup, tmp_path):
    dataset, _, experiment_path = tiny_setup
    from click.testing import CliRunner

    from freesound.cli import main

    work = tmp_path / "fresh"
    result = CliRunner().invoke(main, train_args(dataset.root, work, experiment_path, "--devices", "cpu,cuda:0",
                                                 device=None))
    assert result.exit_code == 1, result.output
    assert "cannot run a convolution on cuda:0" in result.output and "Traceback" not in result.output
    assert not work.exists()


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_epoch_shards_split_every_batch_of_one_process(world_size):
    """The processes' slices are disjoint and, step by step, make up the one-process batches."""
    size, batch = 70, 8
    one = list(EpochShard(size, batch))
    assert one == list(range(64))
    shards = [list(EpochShard(size, batch, rank, world_size)) for rank in range(world_size)]
    local = batch // world_size
    for step in range(size // batch):
        together = sum((shard[step * local:(step + 1) * local] for shard in shards), [])
        assert together == one[step * batch:(step + 1) * batch]
    assert sorted(sum(shards, [])) == one
    with pytest.raises(ValueError, match="cannot be split evenly over 3 processes"):
        EpochShard(size, batch, 0, 3)


def test_validation_parts_cover_the_fold_in_order():
    for n in (0, 1, 19, 20):
        parts = [Processes(rank, 3).shard(n) for rank in range(3)]
        assert [i for part in parts for i in part] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_process_device_takes_the_local_rank():
    env = {"rank": 3, "local_rank": 1}
    assert process_device("cpu", env) == torch.device("cpu")
    with pytest.raises(DistributedError, match="give --device cuda, not cuda:1"):
        process_device("cuda:1", env)
    if torch.cuda.device_count() < 2:
        with pytest.raises(DistributedError, match="local rank 1 but this machine has"):
            process_device("cuda", env)


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    from freesound import settings

    for name in settings.TORCHRUN_VARIABLES + (settings.DDP_TIMEOUT_VARIABLE,):
        monkeypatch.delenv(name, raising=False)
    assert settings.torchrun_environment() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not: start"):
        settings.torchrun_environment()
    for name, value in {"LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    env = settings.torchrun_environment()
    assert env == {"rank": 1, "world_size": 2, "local_rank": 1, "local_world_size": 2, "master_addr": "10.0.0.1",
                   "master_port": 29500, "timeout_s": settings.DEFAULT_DDP_TIMEOUT_S}
    monkeypatch.setenv(settings.DDP_TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ValueError, match="FREESOUND_DDP_TIMEOUT_S='soon' is not a number"):
        settings.torchrun_environment()
    monkeypatch.setenv(settings.DDP_TIMEOUT_VARIABLE, "5")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        settings.torchrun_environment()


def test_one_process_is_left_alone():
    """``SINGLE``-like Processes touch no torch.distributed state."""
    processes = Processes()
    array = np.arange(6).reshape(3, 2)
    assert processes.gather(array) is array and processes.broadcast("x") == "x" and processes.mean(2.5) == 2.5
    model = torch.nn.Linear(2, 2)
    assert processes.wrap(model, torch.device("cpu")) is model
    assert processes.prepare_model(model, torch.device("cpu"), True) is model


def test_process_0_says_once_that_the_processes_joined_one_run(monkeypatch):
    """Under torchrun the log says that the processes formed one run: how many, and the backend."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    lines = []
    env = {"rank": 0, "world_size": 1, "local_rank": 0, "timeout_s": 60}
    with process_group(env, torch.device("cpu"), log=lines.append) as processes:
        assert (processes.rank, processes.world_size) == (0, 1)
    assert lines == ["distributed run: 1 processes joined one process group (gloo backend, cpu); each fold is "
                     "trained by all of them together"]
