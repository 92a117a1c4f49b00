"""Issue 33, the files that break under a command: truncated audio (warned, listed, used as far as
it decodes), a stale or damaged feature cache (computed again), a full disk or a read-only
folder (one sentence naming the folder), and feature workers of a killed run (they end with it).

The front end's own rule for a truncated file is in ``test_audio.py``
(``test_a_truncated_file_warns_and_is_used_as_far_as_it_decodes``), the kernel's summary in
``test_kernel.py``.
"""

import errno
import os
import signal
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import tiny_experiment_toml
from freesound.audio import AudioConfig, AudioTruncatedWarning, read_as_melspectrogram
from freesound.data.dataset import load_dataset
from freesound.data.features import (
    DamagedFeaturesError,
    MissingFeaturesError,
    cache_features,
    cache_root,
    load_features,
    npy_is_whole,
)
from freesound.data.synth import synthesize_dataset
from freesound.fileio import atomic_save_npy
from test_reliability import assert_one_error, cli, kill_when, save_stub_folds, spawn, write_clip


def cut_to_half(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def messages(stderr: str) -> list:
    """The lines of ``stderr`` without the progress bars' (tqdm writes one per update here)."""
    return [line for line in stderr.splitlines() if not line.startswith(("predicting: ", "log-mel features: "))]


def truncation_message(path: Path, stated: int) -> str:
    """The warning for a PCM_16 mono WAV cut to half its bytes (a 44-byte header)."""
    held = (path.stat().st_size - 44) // 2
    return (f"{path} is truncated or damaged: its header states {stated} frames ({stated / 44100:.2f} s) but only "
            f"{held} ({held / 44100:.2f} s) decode; the audio that decodes is used")


@pytest.fixture
def small(tmp_path):
    """A fresh 3-class dataset (6 curated, 2 noisy, 5 test clips) and a work folder."""
    root = tmp_path / "small"
    synthesize_dataset(root, num_classes=3, num_curated=6, num_noisy=2, num_test=5, seed=3, progress=False)
    return load_dataset(root), tmp_path / "work"


@pytest.fixture
def stub(tmp_path, small):
    """A stub experiment of two folds over ``small``'s classes: (work, experiments folder)."""
    dataset, work = small
    save_stub_folds(work, "stub", dataset.classes, folds=(0, 1))
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "stub.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=1))
    return work, experiments


# ----------------------------------------------------------------------------- truncated audio


def test_tag_warns_of_a_truncated_file_and_lists_it(stub, tmp_path):
    work, _ = stub
    good = write_clip(tmp_path / "good.wav", seconds=2.0)
    cut = cut_to_half(write_clip(tmp_path / "cut.wav", seconds=2.0))
    result = cli("tag", good, cut, "--experiment", "stub", "--work", work)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: {truncation_message(cut, 88200)}\n"
                             "1 file(s) are truncated and were tagged from the audio that decodes: cut.wav\n")
    assert [line for line in result.stdout.splitlines() if not line.startswith(" ")] == ["good.wav", "cut.wav"]


def test_predict_warns_of_a_truncated_file_and_lists_it(stub, tmp_path):
    work, experiments = stub
    audio = tmp_path / "audio"
    audio.mkdir()
    write_clip(audio / "good.wav", seconds=2.0)
    cut = cut_to_half(write_clip(audio / "cut.wav", seconds=2.0))
    out = tmp_path / "audio.csv"
    result = cli("predict", "stub", "--audio", audio, "--work", work, "--experiments", experiments, "--out", out,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert messages(result.stderr) == [
        f"warning: {truncation_message(cut, 88200)}",
        "1 file(s) are truncated and were predicted from the audio that decodes: cut.wav"]
    assert sorted(pd.read_csv(out).fname) == ["cut.wav", "good.wav"]


def test_features_list_a_truncated_clip_and_cache_what_decodes(small):
    """The decoding runs in the pool's workers; their warnings are shown by ``features`` itself."""
    dataset, work = small
    cut = dataset.root / "test" / dataset.test_fnames[1]
    stated = sf.info(cut).frames
    cut_to_half(cut)
    result = cli("features", "--data", dataset.root, "--work", work, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "features: 13 computed, 0 already cached, 0 failed" in result.stdout
    assert messages(result.stderr) == [f"warning: {truncation_message(cut, stated)}",
                                       f"  truncated, cached from the audio that decodes: test/{cut.name}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioTruncatedWarning)
        expected = read_as_melspectrogram(cut)
    np.testing.assert_array_equal(load_features(dataset, work, "test", [cut.name])[0], expected)


# ----------------------------------------------------------------------------- the feature cache


def test_a_clip_replaced_with_the_same_size_and_time_is_computed_again(small):
    # Issue 33: the cache keyed a file by size and modification time only, so this kept the old log-mel.
    dataset, work = small
    cache_features(dataset, work, splits=("test",), progress=False)
    victim = dataset.root / "test" / dataset.test_fnames[2]
    stat = victim.stat()
    y, sr = sf.read(victim, dtype="int16")
    sf.write(victim, -y[::-1], sr, subtype="PCM_16")  # other audio, the same number of bytes
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(MissingFeaturesError, match=victim.name):
        load_features(dataset, work, "test", [victim.name])
    report = cache_features(dataset, work, splits=("test",), progress=False)
    assert (report.computed, report.cached) == (1, len(dataset.test_fnames) - 1)
    np.testing.assert_array_equal(load_features(dataset, work, "test", [victim.name])[0],
                                  read_as_melspectrogram(victim))
    # The old entry is gone: one cache file per clip.
    assert len(list((cache_root(work, dataset.root, AudioConfig()) / "test").glob("*.npy"))) == len(
        dataset.test_fnames)


def test_an_unreadable_clip_is_a_failure_and_the_rest_are_cached(small, monkeypatch):
    # The cache identity reads the file's first bytes: a clip without read permission fails alone.
    from freesound.data import features

    dataset, work = small
    unreadable = dataset.test_fnames[3]
    real_identity = features.file_identity

    def file_identity(audio_path):
        if Path(audio_path).name == unreadable:
            raise PermissionError(errno.EACCES, "Permission denied", str(audio_path))
        return real_identity(audio_path)

    monkeypatch.setattr(features, "file_identity", file_identity)
    report = cache_features(dataset, work, splits=("test",), progress=False)
    assert report.failures == [("test", unreadable, "cannot be read (Permission denied)")]
    assert report.computed == len(dataset.test_fnames) - 1
    with pytest.raises(MissingFeaturesError, match=unreadable):
        load_features(dataset, work, "test")


def _damage(path: Path, how: str) -> None:
    path.write_bytes(b"" if how == "empty" else path.read_bytes()[:path.stat().st_size // 2])


def test_features_compute_a_truncated_or_empty_cache_file_again(small):
    # Issue 33: such a file was counted as cached and never repaired; train then printed "Aborted!".
    dataset, work = small
    total = cache_features(dataset, work, progress=False).computed
    entries = sorted((cache_root(work, dataset.root, AudioConfig()) / "train_curated").glob("*.npy"))
    expected = {path: np.load(path) for path in entries}
    _damage(entries[0], "empty")
    _damage(entries[3], "truncated")
    assert not npy_is_whole(entries[0]) and not npy_is_whole(entries[3]) and npy_is_whole(entries[1])
    result = cli("features", "--data", dataset.root, "--work", work, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"features: 2 computed, {total - 2} already cached, 0 failed" in result.stdout
    repaired = sorted(messages(result.stderr))
    names = sorted(path.name.rsplit(".", 2)[0] for path in (entries[0], entries[3]))
    assert repaired == [f"  recomputed a damaged cache file: train_curated/{name}" for name in names]
    for path, logmel in expected.items():
        np.testing.assert_array_equal(np.load(path), logmel)


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_reading_a_damaged_cache_file_names_it(small, how):
    dataset, work = small
    cache_features(dataset, work, splits=("test",), progress=False)
    victim = sorted((cache_root(work, dataset.root, AudioConfig()) / "test").glob("*.npy"))[1]
    _damage(victim, how)
    with pytest.raises(DamagedFeaturesError) as caught:
        load_features(dataset, work, "test")
    message = str(caught.value)
    assert message.startswith(f"the cached log-mel {victim} is damaged (")
    assert message.endswith(f"run `freesound features --data {dataset.root}`, which computes it again")


# ----------------------------------------------------------------------------- full disk, read-only folder


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_while_caching_is_one_sentence_naming_the_folder(small, monkeypatch, workers):
    dataset, work = small

    def full_disk(file, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)  # the pool's forked workers inherit it
    result = cli("features", "--data", dataset.root, "--work", work, "--workers", workers)
    # The first clip of the first split is the first written; the message names its cache file.
    folder = cache_root(work, dataset.root, AudioConfig()) / "train_curated"
    assert_one_error(result, f"cannot write {folder}/{dataset.fnames('train_curated')[0]}.",
                     f"no space left on the device holding {folder}")
    assert list(folder.iterdir()) == []  # no temporary file left behind


def test_an_atomic_write_that_fails_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.npy"

    def full_disk(file, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError) as caught:
        atomic_save_npy(target, np.zeros(3))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert list(target.parent.iterdir()) == []


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder that behaves as if on a read-only file system: making a folder or a file in it
    fails with EROFS, naming the path, as the kernel does. (Tests run as root here, where a chmod
    stops no write.)"""
    folder = tmp_path / "read_only"
    folder.mkdir()
    real_mkdir, real_mkstemp = os.mkdir, tempfile.mkstemp

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(folder) and Path(path).parent.is_dir():
            refuse(path)
        return real_mkdir(path, *args, **kwargs)  # ENOENT below a missing parent, as the kernel says

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if dir is not None and Path(dir).is_relative_to(folder):
            refuse(Path(dir) / f"{prefix}abcdefgh{suffix}")
        return real_mkstemp(suffix, prefix, dir, text)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return folder


def features_into(folder, dataset, work, stub):
    return ["features", "--data", dataset.root, "--work", folder], folder / "features"


def make_folds_into(folder, dataset, work, stub):
    return ["make-folds", "--data", dataset.root, "--work", folder], folder / "folds.csv"


def predict_out_into(folder, dataset, work, stub):
    return (["predict", "stub", "--audio", dataset.root / "test", "--work", work, "--experiments", stub[1],
             "--out", folder / "audio.csv", "--device", "cpu"], folder / "audio.csv")


def build_kernel_into(folder, dataset, work, stub):
    return (["build-kernel", "--experiment", "stub", "--work", work, "--experiments", stub[1], "--out", folder],
            folder / "kernel.py")


@pytest.mark.parametrize("case", [features_into, make_folds_into, predict_out_into, build_kernel_into])
def test_a_read_only_folder_is_one_sentence_naming_it(case, small, stub, read_only):
    dataset, work = small
    args, written = case(read_only, dataset, work, stub)
    result = cli(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert messages(result.stderr) == [f"error: cannot write {written}: {read_only} is on a read-only file system"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode")
def test_a_folder_without_write_permission_is_one_sentence_naming_it(small, tmp_path):
    dataset, _ = small
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert_one_error(cli("make-folds", "--data", dataset.root, "--work", folder),
                         f"cannot use {folder / 'folds.csv'}: permission denied in {folder}")
    finally:
        folder.chmod(0o755)


def test_an_os_error_the_user_cannot_fix_keeps_its_traceback(monkeypatch, small):
    dataset, work = small
    from freesound.data import features

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/dev/sda")

    monkeypatch.setattr(features, "cache_features", broken)
    result = cli("features", "--data", dataset.root, "--work", work)
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


# ----------------------------------------------------------------------------- features options and workers


def test_max_seconds_below_min_seconds_is_one_sentence(small):
    dataset, work = small
    assert_one_error(cli("features", "--data", dataset.root, "--work", work, "--max-seconds", "0.2"),
                     "--max-seconds 0.2", "min_seconds, 0.5 s", "give at least 0.5")


def _children(pid: int) -> list:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie left for a parent (or a container's init) to reap."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc (Linux)")
def test_feature_workers_end_when_features_is_killed(tiny_data, tmp_path):
    # Issue 33: the pool's workers outlived a killed parent, blocked forever on its queue.
    dataset, _ = tiny_data
    work = tmp_path / "work"
    root = cache_root(work, dataset.root, AudioConfig())
    process = spawn(["features", "--data", dataset.root, "--work", work, "--workers", "2"], tmp_path)
    workers = []

    def computing():
        workers[:] = _children(process.pid)
        return len(workers) == 2 and any(root.rglob("*.npy"))

    kill_when(process, computing)
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # leave nothing running whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


@pytest.mark.slow
def test_train_computes_an_empty_cache_file_again(tiny_work, tmp_path):
    # Issue 33: train read the zero-byte file as cached and printed only "Aborted!" (click's answer
    # to NumPy's EOFError).
    dataset, work = tiny_work
    victim = sorted((cache_root(work, dataset.root, AudioConfig()) / "train_curated").glob("*.npy"))[0]
    expected = np.load(victim)
    victim.write_bytes(b"")
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=1))
    result = cli("train", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments,
                 "--fold", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(victim), expected)
