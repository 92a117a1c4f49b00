"""The chain on tiny data through the CLI: train -> OOF -> stack -> predict -> evaluate -> relabel."""

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli as run
from conftest import tiny_ensemble_toml, tiny_experiment_toml
from freesound.data.dataset import load_corrections, multi_hot, read_labels_csv
from freesound.ensembling.stack import random_tile_subset
from freesound.metrics import lwlrap
from freesound.predict import Tagger, geometric_mean
from freesound.training.oof import ensure_oof, load_oof_tiles, oof_is_current

ENSEMBLE = tiny_ensemble_toml(["tiny_a", "tiny_b"], base_size=16, epoch_size=64, max_epochs=4)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """Two tiny experiments trained on every fold, OOF-predicted, stacked and test-predicted."""
    dataset, base_work = tiny_data
    root = tmp_path_factory.mktemp("pipeline")
    work = root / "work"
    shutil.copytree(base_work, work)
    experiments = root / "experiments"
    experiments.mkdir()
    (experiments / "tiny_a.toml").write_text(tiny_experiment_toml("aux_skip_attention", epoch_size=24, max_epochs=2))
    (experiments / "tiny_b.toml").write_text(tiny_experiment_toml("simple_cnn", epoch_size=24, max_epochs=2))
    (experiments / "tiny_ens.toml").write_text(ENSEMBLE)
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    for name in ("tiny_a", "tiny_b"):
        out = run("train", name, *common).output
        assert "fold 2:" in out
        # Every fold trained: train scores them out of fold, as predict does.
        assert re.search(r"OOF lwlrap \d\.\d{4}", out) and re.search(r"per fold: 0: \S+ +1: \S+ +2: \S+", out), out
    assert "OOF lwlrap" in run("predict", "tiny_a", *common).output
    assert "OOF lwlrap" not in run("predict", "tiny_b", *common, "--no-oof").output
    stacked = run("stack", "tiny_ens", *common).output
    run("predict", "tiny_ens", *common)
    return dataset, work, experiments, stacked


def test_oof_files_and_scores(trained):
    dataset, work, _, _ = trained
    out = work / "predictions" / "tiny_a"
    oof = load_oof_tiles(out / "oof_tiles.npz")
    assert sorted(oof.fnames) == sorted(dataset.curated.fname)
    assert oof.probs.shape[1] == len(dataset.classes) and oof.offsets[-1] == len(oof.probs)
    frame = pd.read_csv(out / "oof.csv")
    np.testing.assert_allclose(frame.drop(columns="fname").to_numpy(), oof.clip_means(), rtol=1e-6)
    scores = json.loads((out / "oof_scores.json").read_text())
    labels = dataset.curated.set_index("fname").loc[frame.fname, "labels"]
    assert scores["lwlrap"] == pytest.approx(lwlrap(multi_hot(labels, dataset.classes), oof.clip_means()))
    assert set(scores["per_fold"]) == {"0", "1", "2"}
    assert sum(v["weight"] for v in scores["per_class"].values()) == pytest.approx(1.0)


def test_oof_is_redone_when_incomplete_or_older_than_the_weights(trained, tmp_path):
    dataset, base_work, _, _ = trained
    work = tmp_path / "work"
    shutil.copytree(base_work, work)
    out = work / "predictions" / "tiny_a"
    assert oof_is_current(work, "tiny_a")
    expected = (out / "oof.csv").read_text()

    (out / "oof_scores.json").unlink()  # a run killed before its last file
    assert not oof_is_current(work, "tiny_a")
    ensure_oof(["tiny_a"], dataset, work, log=lambda *_: None)
    assert oof_is_current(work, "tiny_a") and (out / "oof.csv").read_text() == expected

    weights = work / "experiments" / "tiny_a" / "fold_1" / "model.pt"  # retrained after the OOF
    earlier = weights.stat().st_mtime - 10
    os.utime(out / "oof_scores.json", (earlier, earlier))
    assert not oof_is_current(work, "tiny_a")
    ensure_oof(["tiny_a"], dataset, work, log=lambda *_: None)
    assert (out / "oof_scores.json").stat().st_mtime >= weights.stat().st_mtime


def test_experiment_test_prediction_is_fold_geometric_mean(trained):
    dataset, work, _, _ = trained
    submission = pd.read_csv(work / "predictions" / "tiny_a" / "test.csv")
    assert list(submission.fname) == list(dataset.test_fnames)
    assert list(submission.columns[1:]) == list(dataset.classes)
    folds = [Tagger.from_checkpoints([work / "experiments" / "tiny_a" / f"fold_{k}" / "model.pt"]) for k in range(3)]
    per_fold = np.stack([t.predict_files(dataset.paths("test")).to_numpy() for t in folds])
    np.testing.assert_allclose(submission.drop(columns="fname").to_numpy(), geometric_mean(per_fold), atol=1e-6)


def test_ensemble_prediction_is_the_blend(trained):
    dataset, work, _, stacked = trained
    blend = pd.read_csv(work / "predictions" / "tiny_ens" / "test.csv").drop(columns="fname").to_numpy()
    a = pd.read_csv(work / "predictions" / "tiny_a" / "test.csv").drop(columns="fname").to_numpy()
    b = pd.read_csv(work / "predictions" / "tiny_b" / "test.csv").drop(columns="fname").to_numpy()
    from freesound.models import load_model
    from freesound.predict import predict_stacker

    stackers = [load_model(work / "experiments" / "tiny_ens_mlp" / f"fold_{k}" / "model.pt") for k in range(3)]
    s = predict_stacker(stackers, np.concatenate([a, b], axis=1))
    np.testing.assert_allclose(blend, geometric_mean(np.stack([a, b, s])), atol=1e-5)
    cv = json.loads((work / "predictions" / "tiny_ens" / "cv_scores.json").read_text())
    assert set(cv) == {"tiny_a", "tiny_b", "tiny_ens_mlp", "blend"}
    assert "blend" in stacked


def test_evaluate_command(trained):
    dataset, work, _, _ = trained
    csv = work / "predictions" / "tiny_ens" / "test.csv"
    out = run("evaluate", csv, "--labels", dataset.root / "test_labels.csv").output
    predictions = pd.read_csv(csv)
    truth = multi_hot(read_labels_csv(dataset.root / "test_labels.csv", dataset.classes)
                      .set_index("fname").loc[predictions.fname, "labels"], dataset.classes)
    expected = lwlrap(truth, predictions.drop(columns="fname").to_numpy())
    # a test-set score, not an out-of-fold one
    assert out.splitlines()[0] == f"test.csv: lwlrap {expected:.4f} on {len(predictions)} clips"
    assert "OOF" not in out


def test_predict_audio_folder_with_broken_files(trained, tmp_path):
    dataset, work, experiments, _ = trained
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    good = dataset.paths("test")[:3]
    for path in good[:2]:
        shutil.copy(path, audio / path.name)
    shutil.copy(good[2], audio / "sub" / good[2].name)
    (audio / "broken.wav").write_bytes(b"\x00" * 100)
    (audio / "empty.flac").write_bytes(b"")
    (audio / "notes.txt").write_text("not audio, not collected")
    out_csv = tmp_path / "out.csv"
    result = run("predict", "tiny_a", "--audio", audio, "--work", work, "--experiments", experiments,
                 "--out", out_csv, "--device", "cpu", expect=1)
    frame = pd.read_csv(out_csv)
    assert sorted(frame.fname) == sorted([p.name for p in good[:2]] + [f"sub/{good[2].name}"])  # relative to --audio
    errors = pd.read_csv(tmp_path / "out.errors.csv")
    assert sorted(errors.fname) == ["broken.wav", "empty.flac"]
    assert "broken.wav" in result.output and "empty.flac" in result.output


def test_relabel_round_trips_through_the_corrections_loader(trained):
    dataset, work, experiments, _ = trained
    run("relabel", "tiny_a", "--data", dataset.root, "--work", work, "--experiments", experiments,
        "--curated-below", "0.9", "--promote-at", "0.3", "--device", "cpu")
    out = work / "predictions" / "tiny_a"
    curated = load_corrections(out / "relabel_curated.json", dataset.classes)
    noisy = load_corrections(out / "relabel_noisy.json", dataset.classes)
    review = pd.read_csv(out / "relabel_review.csv", keep_default_na=False)
    assert len(review) == len(dataset.curated) + len(dataset.noisy)
    curated_rows = review[review.split == "train_curated"]
    assert list(curated_rows.score) == sorted(curated_rows.score)
    noisy_rows = review[review.split == "train_noisy"]
    assert list(noisy_rows.score) == sorted(noisy_rows.score, reverse=True)
    for fname, labels in curated.items():
        assert curated_rows.set_index("fname").loc[fname, "proposal"] == ",".join(labels)
    for fname, labels in noisy.items():
        expected = "remove" if labels is None else ",".join(labels)
        assert noisy_rows.set_index("fname").loc[fname, "proposal"] == expected


def test_random_tile_subsets():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 13):
        for _ in range(50):
            subset = random_tile_subset(n, rng)
            assert len(subset) >= 1 and subset.min() >= 0 and subset.max() < n
            steps = np.diff(subset)
            assert len(set(steps)) <= 1  # contiguous (step 1) or strided (one stride)


def test_stacker_and_blend_cv_scores_match_their_oof_files(trained):
    dataset, work, _, _ = trained
    cv = json.loads((work / "predictions" / "tiny_ens" / "cv_scores.json").read_text())
    blend = pd.read_csv(work / "predictions" / "tiny_ens" / "blend_oof.csv")
    labels = dataset.curated.set_index("fname").loc[blend.fname, "labels"]
    assert cv["blend"] == pytest.approx(lwlrap(multi_hot(labels, dataset.classes), blend.drop(columns="fname").to_numpy()))
    stacker = pd.read_csv(work / "predictions" / "tiny_ens" / "tiny_ens_mlp_oof.csv").set_index("fname")
    assert cv["tiny_ens_mlp"] == pytest.approx(lwlrap(multi_hot(labels, dataset.classes),
                                                      stacker.loc[blend.fname].to_numpy()))
