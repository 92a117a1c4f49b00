"""Interrupting a run: Ctrl-C ends ``train --devices`` and ``search`` with one line, and a
killed ``train --devices`` takes its fold processes with it.

Each test starts the command in its own session, waits for its first epoch line, then signals
it as a terminal (the whole process group) or ``kill -9`` (the parent alone) would.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_experiment_toml

#: Seconds to wait for the first epoch line, and then for the command (or its children) to end.
START_TIMEOUT_S = 240
END_TIMEOUT_S = 60
#: Seconds a fold process may outlive its killed parent (it is told at once by the kernel).
ORPHAN_TIMEOUT_S = 15
EPOCH_LINE = re.compile(r"epoch 1: ")


def terminal_signals() -> None:
    """What a shell gives a program it starts: SIGINT at its default action and no signal blocked.
    A child inherits both from this pytest process, where earlier tests' libraries may have
    changed them; a child started with SIGINT ignored or blocked never sees the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def start(args, cwd) -> subprocess.Popen:
    """``python -m freesound ARGS`` in a new session (its own process group), as from a terminal
    (``terminal_signals``), stdout and stderr piped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "freesound", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=terminal_signals)


def wait_for_first_epoch(process: subprocess.Popen) -> list:
    """Read stdout until a fold's first epoch line; return the lines read (fails after START_TIMEOUT_S)."""
    lines, deadline = [], time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if EPOCH_LINE.search(line):
            return lines
    process.kill()
    pytest.fail(f"no epoch line within {START_TIMEOUT_S} s: {''.join(lines)[-2000:]} "
                f"{process.communicate(timeout=END_TIMEOUT_S)[1][-2000:]}")


def children(pid: int) -> list:
    """The pids of ``pid``'s multiprocessing children (fold processes, not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if re.search(rf"^PPid:\s+{pid}$", status, re.M) and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        return not re.search(r"^State:\s+Z", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return False


@pytest.fixture
def long_experiment(tmp_path):
    """A tiny experiment with more epochs than any test waits for."""
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_experiment_toml(epoch_size=16, max_epochs=200))
    return path


def train_on_two_cpus(dataset, work, experiment, cwd) -> subprocess.Popen:
    return start(["train", experiment, "--data", dataset.root, "--work", work, "--no-oof", "--devices", "cpu,cpu"],
                 cwd)


@pytest.mark.slow
@pytest.mark.parametrize("group", [True, False], ids=["terminal", "parent-alone"])
def test_ctrl_c_during_train_on_devices_is_one_line(tiny_work, long_experiment, tmp_path, group):
    """From a terminal every process gets the interrupt; sent to the parent alone, it passes it on."""
    dataset, work = tiny_work
    process = train_on_two_cpus(dataset, work, long_experiment, tmp_path)
    wait_for_first_epoch(process)
    folds = children(process.pid)
    (os.killpg if group else os.kill)(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=END_TIMEOUT_S)
    assert not [pid for pid in folds if running(pid)]
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "leaked semaphore" not in stderr, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == "Aborted!"


@pytest.mark.slow
def test_killed_train_on_devices_takes_its_fold_processes_with_it(tiny_work, long_experiment, tmp_path):
    dataset, work = tiny_work
    process = train_on_two_cpus(dataset, work, long_experiment, tmp_path)
    wait_for_first_epoch(process)
    folds = children(process.pid)
    assert len(folds) == 2, folds
    process.kill()
    deadline = time.monotonic() + ORPHAN_TIMEOUT_S
    while any(map(running, folds)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in folds if running(pid)]
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"fold processes {left} outlived their killed parent by {ORPHAN_TIMEOUT_S} s"
    process.communicate(timeout=END_TIMEOUT_S)


@pytest.mark.slow
def test_ctrl_c_during_search_is_one_line(tiny_work, long_experiment, tmp_path):
    dataset, work = tiny_work
    space = tmp_path / "space.toml"
    space.write_text('"train.lr" = { loguniform = [1e-3, 1e-2] }\n')
    process = start(["search", long_experiment, "--data", dataset.root, "--work", work, "--trials", "2",
                     "--fold", "0", "--space", space], tmp_path)
    wait_for_first_epoch(process)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=END_TIMEOUT_S)
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "failed with value" not in stderr, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == "Aborted!"
    assert "search tiny: trial 0 interrupted (marked failed); rerunning the command resumes the search" in stdout


@pytest.mark.slow
def test_train_on_devices_resumes_after_ctrl_c(tiny_work, long_experiment, tmp_path):
    dataset, work = tiny_work
    process = train_on_two_cpus(dataset, work, long_experiment, tmp_path)
    wait_for_first_epoch(process)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=END_TIMEOUT_S)
    assert process.returncode == 1
    resumed = subprocess.run([sys.executable, "-m", "freesound", "train", long_experiment, "--data", dataset.root,
                              "--work", work, "--no-oof", "--devices", "cpu,cpu", "--resume", "--epochs", "2"],
                             cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                             text=True, timeout=START_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for fold in range(3):
        log = pd.read_csv(work / "experiments" / "tiny" / f"fold_{fold}" / "log.csv")
        assert list(log.epoch) == [1, 2], fold
