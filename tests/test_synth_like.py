"""`freesound synth --like`: a replica of the real FSDKaggle2019 metadata, and the pipeline on it.

The real metadata and the original team's corrections are read from ../shared/reference (CI has
them); without them these tests skip.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import REPO, run_cli
from freesound.data.dataset import FSD2019_CLASSES, apply_corrections, load_corrections, load_dataset
from freesound.data.synth_like import DURATIONS_S, plan_like, read_reference, sample_reference, synthesize_like

REFERENCE = (REPO.parent / "shared" / "reference").resolve()
if not REFERENCE.is_dir():  # a worktree beside the main checkout: ../shared is one level higher
    REFERENCE = Path("/work/shared/reference")
META = REFERENCE / "fsdkaggle2019"
CURATED_CORRECTIONS = REFERENCE / "corrections.json"
NOISY_CORRECTIONS = REFERENCE / "noisy_corrections.json"
pytestmark = pytest.mark.skipif(
    not (META / "train_noisy.csv").is_file() or not NOISY_CORRECTIONS.is_file(),
    reason=f"the real FSDKaggle2019 metadata and corrections are not at {REFERENCE}",
)
#: Rows drawn from each part, plus every clip the first few corrections name (so they apply).
COUNTS = {"train_curated": 100, "train_noisy": 100, "test": 40}
SCALE = 0.05


def corrected_names(count: int) -> list:
    curated = list(json.loads(CURATED_CORRECTIONS.read_text()))[:count]
    noisy = json.loads(NOISY_CORRECTIONS.read_text())
    relabelled = [name for name, value in noisy.items() if value != "remove"][:count]
    removed = [name for name, value in noisy.items() if value == "remove"][:count]
    return curated + relabelled + removed


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("like")
    meta = sample_reference(META, root / "meta", COUNTS, seed=3, include=corrected_names(5))
    summary = synthesize_like(root / "data", meta, duration_scale=SCALE, seed=1, progress=False)
    return meta, root / "data", summary


def test_full_plan_has_the_real_counts_names_and_length_ranges():
    reference = read_reference(META)
    assert reference.counts() == {"train_curated": 4970, "train_noisy": 19815, "test": 4481}
    assert reference.classes == FSD2019_CLASSES
    plans = plan_like(reference, 1.0, seed=0)
    assert [p.fname for p in plans[:4970]] == list(pd.read_csv(META / "train_curated.csv").fname)
    hours = {}
    for split, (low, high, mean) in DURATIONS_S.items():
        seconds = np.array([p.duration_s for p in plans if p.split == split])
        assert low <= seconds.min() and seconds.max() <= high, split
        assert abs(seconds.mean() - mean) < 0.03 * mean, split
        hours[split] = seconds.sum() / 3600
    # The FSDKaggle2019 release: 10.5 h curated, about 80 h noisy (mostly 15 s clips), 12.9 h test.
    assert hours == pytest.approx({"train_curated": 10.5, "train_noisy": 80.0, "test": 12.9}, rel=0.02)
    noisy = np.array([p.duration_s for p in plans if p.split == "train_noisy"])
    assert 0.85 < np.mean(noisy == 15.0) < 0.97
    # Scaling multiplies every length and changes nothing else.
    scaled = plan_like(reference, 0.1, seed=0)
    assert [p.duration_s for p in scaled[:50]] == pytest.approx([0.1 * p.duration_s for p in plans[:50]])
    assert [p.labels for p in scaled] == [p.labels for p in plans]


def test_replica_layout_equals_the_real_metadata(replica):
    meta, data, summary = replica
    dataset = load_dataset(data)
    assert dataset.classes == tuple(pd.read_csv(META / "vocabulary.csv", header=None)[1])
    for split, csv in (("train_curated", "train_curated.csv"), ("train_noisy", "train_noisy.csv")):
        real = pd.read_csv(meta / csv)
        written = pd.read_csv(data / csv)
        assert list(written.columns) == ["fname", "labels"]
        assert written.equals(real[["fname", "labels"]].reset_index(drop=True)), split
    real_test = pd.read_csv(meta / "test_post_competition.csv")
    assert list(dataset.test_fnames) == list(real_test.fname)  # the real file's order
    assert pd.read_csv(data / "test_labels.csv").labels.tolist() == real_test.labels.tolist()
    assert (pd.read_csv(data / "sample_submission.csv").iloc[:, 1:].to_numpy() == 0).all()
    assert summary.counts == {split: len(dataset.fnames(split)) for split in ("train_curated", "train_noisy", "test")}
    for split in ("train_curated", "train_noisy", "test"):
        assert sorted(os.listdir(data / split)) == sorted(dataset.fnames(split))
        low, high, _ = DURATIONS_S[split]
        for fname in dataset.fnames(split)[:10]:
            info = sf.info(data / split / fname)
            assert info.samplerate == 44100 and info.channels == 1 and info.subtype == "PCM_16"
            assert SCALE * low - 1e-4 <= info.duration <= SCALE * high + 1e-4


def test_real_corrections_apply_to_exactly_the_clips_they_name(replica):
    _, data, _ = replica
    dataset = load_dataset(data)
    curated = load_corrections(CURATED_CORRECTIONS, dataset.classes)
    named = set(curated) & set(dataset.curated.fname)
    assert len(named) >= 5
    fixed = apply_corrections(dataset.curated, curated, unknown="ignore")  # the replica samples the clips
    before = dataset.curated.set_index("fname").labels
    after = fixed.set_index("fname").labels
    dropped = {name for name in named if curated[name] is None}
    assert list(after.index) == [name for name in before.index if name not in dropped]
    assert all(after[name] == curated[name] for name in named - dropped)
    assert all(after[name] == before[name] for name in set(after.index) - named)
    assert sum(after[name] != before[name] for name in named - dropped) >= 3

    noisy = load_corrections(NOISY_CORRECTIONS, dataset.classes)
    trusted = apply_corrections(dataset.noisy, noisy, only_corrected=True, unknown="ignore")
    relabelled = {name for name, labels in noisy.items() if labels is not None} & set(dataset.noisy.fname)
    removed = {name for name, labels in noisy.items() if labels is None} & set(dataset.noisy.fname)
    assert len(relabelled) >= 5 and len(removed) >= 5
    assert set(trusted.fname) == relabelled
    assert all(labels == noisy[name] for name, labels in zip(trusted.fname, trusted.labels))
    kept = apply_corrections(dataset.noisy, noisy, unknown="ignore")
    assert set(kept.fname) == set(dataset.noisy.fname) - removed


def test_same_seed_same_replica_and_an_interrupted_run_resumes(replica, tmp_path, monkeypatch):
    meta, data, _ = replica
    again = synthesize_like(tmp_path / "again", meta, duration_scale=SCALE, seed=1, progress=False)
    assert again.rendered == sum(again.counts.values())
    for split in ("train_curated", "test"):
        for fname in os.listdir(data / split)[:5]:
            assert (data / split / fname).read_bytes() == (tmp_path / "again" / split / fname).read_bytes()
    # Interrupt a run after 7 clips: the staging folder keeps them and a rerun renders only the rest.
    import freesound.data.synth_like as module

    real_write, calls = module._write_like_clip, []

    def failing_write(plan, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(plan.fname)
        real_write(plan, **kwargs)

    monkeypatch.setattr(module, "_write_like_clip", failing_write)
    with pytest.raises(KeyboardInterrupt):
        synthesize_like(tmp_path / "cut", meta, duration_scale=SCALE, seed=1, progress=False)
    assert not (tmp_path / "cut").exists()
    monkeypatch.setattr(module, "_write_like_clip", real_write)
    resumed = synthesize_like(tmp_path / "cut", meta, duration_scale=SCALE, seed=1, progress=False)
    assert resumed.rendered == sum(resumed.counts.values()) - 7
    assert not (tmp_path / ".cut.partial").exists()
    for split in ("train_curated", "train_noisy", "test"):
        for fname in os.listdir(data / split):
            assert (data / split / fname).read_bytes() == (tmp_path / "cut" / split / fname).read_bytes()
    # A finished replica with the same arguments is left as it is.
    assert synthesize_like(tmp_path / "cut", meta, duration_scale=SCALE, seed=1, progress=False).rendered == 0


def _metadata_with(meta, out, *, row: int, column: str, value: str):
    """A copy of the metadata folder ``meta`` at ``out`` with one cell of train_curated.csv changed."""
    shutil.copytree(meta, out)
    frame = pd.read_csv(out / "train_curated.csv")
    frame.loc[row, column] = value
    frame.to_csv(out / "train_curated.csv", index=False)
    return out


def test_cli_synth_like_and_its_errors(replica, tmp_path):
    meta, _, _ = replica
    out = run_cli("synth", tmp_path / "cli", "--like", meta, "--duration-scale", "0.01").output
    assert "clips" in out and (tmp_path / "cli" / "sample_submission.csv").is_file()
    bad = _metadata_with(meta, tmp_path / "bad", row=3, column="labels", value="Not_a_class")
    result = run_cli("synth", tmp_path / "nope", "--like", bad, expect=1)
    assert "train_curated.csv, row 5" in result.output and "Not_a_class" in result.output
    assert not (tmp_path / "nope").exists()
    assert "--duration-scale applies only with --like" in run_cli(
        "synth", tmp_path / "x", "--duration-scale", "0.5", expect=2).output
    result = run_cli("synth", tmp_path / "inf", "--like", meta, "--duration-scale", "inf", expect=1)
    assert "finite duration scale" in result.output and not (tmp_path / "inf").exists()
    # A file name that is a path would be written outside the data folder: refused, nothing written.
    escape = _metadata_with(meta, tmp_path / "escape", row=0, column="fname", value="../escape.wav")
    result = run_cli("synth", tmp_path / "out", "--like", escape, expect=1)
    assert "row 2" in result.output and "not a plain file name" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.wav").exists()


@pytest.mark.slow
def test_pipeline_runs_to_a_kernel_on_the_replica(replica, tmp_path):
    """features -> make-folds -> train (real corrections) -> predict -> build-kernel -> the kernel
    in a simulated /kaggle tree, whose submission equals local prediction."""
    import subprocess
    import sys

    from conftest import tiny_experiment_toml
    from freesound.kaggle import COMPETITION

    _, data, _ = replica
    work, experiments = tmp_path / "work", tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(
        tiny_experiment_toml("aux_skip_attention", epoch_size=16, max_epochs=1).replace(
            "corrected_noisy = 0.0\nnoisy = 0.3", "corrected_noisy = 0.2\nnoisy = 0.1")
        + f'\n[data]\ncorrections = "{CURATED_CORRECTIONS}"\nnoisy_corrections = "{NOISY_CORRECTIONS}"\n')
    common = ["--data", data, "--work", work]
    run_cli("features", *common, "--workers", 2)
    run_cli("make-folds", *common, "--folds", 2)
    out = run_cli("train", "tiny", *common, "--experiments", experiments, "--device", "cpu").output
    assert "fold 1:" in out and "OOF lwlrap" in out
    run_cli("predict", "tiny", *common, "--experiments", experiments, "--device", "cpu", "--no-oof")
    local = pd.read_csv(work / "predictions" / "tiny" / "test.csv")
    assert list(local.fname) == list(load_dataset(data).test_fnames)
    run_cli("build-kernel", "--experiment", "tiny", "--work", work, "--experiments", experiments,
            "--out", tmp_path / "kernel")

    root = tmp_path / "kaggle"
    shutil.copytree(data / "test", root / "input" / COMPETITION / "test")
    shutil.copy(data / "sample_submission.csv", root / "input" / COMPETITION)
    shutil.copytree(work / "experiments", root / "input" / "freesound-weights" / "experiments")
    (root / "working").mkdir()
    env = {**os.environ, "FREESOUND_KAGGLE_ROOT": str(root), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(tmp_path / "kernel" / "kernel.py")], cwd=root / "working", env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    submission = pd.read_csv(root / "working" / "submission.csv")
    assert list(submission.columns) == list(local.columns) and list(submission.fname) == list(local.fname)
    np.testing.assert_allclose(submission.iloc[:, 1:].to_numpy(), local.iloc[:, 1:].to_numpy(), atol=1e-5)
