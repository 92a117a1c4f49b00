"""Self-training: unlabelled clips as a split, pseudo-labels (sharpening, floor, mixing), the guard
against scored clips in the pool, the round experiments, and ``self-train`` end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, tiny_experiment_toml
from freesound.config import ConfigError, experiment_from_dict, load_experiment, read_toml
from freesound.data.dataset import UNLABELED, DatasetError, load_dataset, with_unlabeled
from freesound.data.features import cache_features
from freesound.data.folds import dataset_folds, make_folds, write_folds
from freesound.data.prepare import prepare_collection
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.tools.self_training import (
    RoundResult,
    earlier_time,
    round_experiment,
    round_name,
    self_train,
    write_round_file,
    write_summary,
)
from freesound.training import pseudo_labels
from freesound.training.context import RunContext
from freesound.training.pseudo_labels import (
    PseudoMix,
    confident,
    fold_teacher_probs,
    pseudo_targets,
    scored_duplicates,
    sharpen,
    top_label_flips,
    unlabeled_pool,
)
from freesound.training.sampling import ClipSource
from test_prepare import write_wav

# ----------------------------------------------------------------------------- pure functions


def test_sharpen_is_a_power_without_renormalising():
    probs = np.array([[0.9, 0.3, 0.5], [1.0, 0.0, 0.2]], np.float32)
    sharp = sharpen(probs, 2.0)
    assert sharp.dtype == np.float32
    np.testing.assert_allclose(sharp, [[0.81, 0.09, 0.25], [1.0, 0.0, 0.04]], rtol=1e-6)
    np.testing.assert_array_equal(sharpen(probs, 1.0), probs)
    # Two confident labels stay confident: no sum-to-one squeeze of a multi-label clip.
    assert sharpen(np.array([[0.9, 0.9]]), 2.0)[0].tolist() == pytest.approx([0.81, 0.81])


def test_confidence_floor_keeps_clips_whose_highest_probability_reaches_it():
    probs = np.array([[0.9, 0.1], [0.4, 0.3], [0.5, 0.5], [0.2, 0.6]])
    assert confident(probs, 0.5).tolist() == [True, False, True, True]
    assert confident(probs, 0.0).all()
    kept, targets = pseudo_targets(probs, 2.0, 0.5)
    assert kept.tolist() == [True, False, True, True]
    np.testing.assert_allclose(targets, [[0.81, 0.01], [0.25, 0.25], [0.04, 0.36]], rtol=1e-6)
    assert confident(np.zeros((0, 3)), 0.5).shape == (0,)


def test_top_label_flips_and_teacher_folds():
    before = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    after = np.array([[0.8, 0.3], [0.7, 0.2], [0.4, 0.6], [0.1, 0.9]])
    assert top_label_flips(before, after) == 0.5
    assert top_label_flips(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    per_fold = {0: np.array([[0.25, 1.0]], np.float32), 1: np.array([[1.0, 0.25]], np.float32)}
    np.testing.assert_allclose(fold_teacher_probs(per_fold, "all", 0), [[0.5, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(fold_teacher_probs(per_fold, "same", 1), per_fold[1])
    with pytest.raises(FreesoundError, match="the teacher has no fold 2"):
        fold_teacher_probs(per_fold, "same", 2)


class _Base:
    """A sampler stand-in: every sample a (planes, 2, 4) image of zeros with target (1, 0, 0)."""

    epoch = 0

    def __init__(self, planes=3):
        self.planes = planes

    @staticmethod
    def transform(spec, rng):
        return spec

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 5

    def __getitem__(self, index):
        return torch.zeros(self.planes, 2, 4), torch.tensor([1.0, 0.0, 0.0]), torch.tensor(False)


def test_pseudo_mix_blends_the_image_and_takes_the_maximum_target():
    pool = ClipSource("pseudo", [np.ones((3, 2, 4), np.float32)], np.array([[0.2, 0.9, 0.0]], np.float32), False)
    image, target, noisy = PseudoMix(_Base(), pool, prob=1.0, weight=0.25, seed=0)[3]
    assert torch.equal(image, torch.full((3, 2, 4), 0.25))
    assert target.tolist() == pytest.approx([1.0, 0.9, 0.0]) and not noisy
    # A frequency plane, when the input has one, stays the sample's own.
    image, _, _ = PseudoMix(_Base(planes=4), pool, prob=1.0, weight=0.25, seed=0)[0]
    assert torch.equal(image[:3], torch.full((3, 2, 4), 0.25)) and torch.equal(image[3], torch.zeros(2, 4))
    untouched, target, _ = PseudoMix(_Base(), pool, prob=0.0, weight=0.25, seed=0)[3]
    assert torch.equal(untouched, torch.zeros(3, 2, 4)) and target.tolist() == [1.0, 0.0, 0.0]
    # About prob of the samples are mixed, the same ones for the same (seed, epoch, index).
    mixer = PseudoMix(_Base(), pool, prob=0.5, weight=0.25, seed=3)
    mixed = [bool(mixer[i][0].any()) for i in range(5)]
    assert mixed == [bool(mixer[i][0].any()) for i in range(5)] and 0 < sum(mixed) < 5


# ----------------------------------------------------------------------------- settings


def test_self_training_settings_are_checked():
    with pytest.raises(ConfigError, match=r"\[self_training\].*power = 0.0 is out of range"):
        experiment_from_dict({"self_training": {"power": 0}}, where="x.toml")
    with pytest.raises(ConfigError, match="teacher_folds must be one of all, same"):
        experiment_from_dict({"self_training": {"teacher_folds": "each"}})
    with pytest.raises(ConfigError, match=r"floor = 1.0 is out of range"):
        experiment_from_dict({"self_training": {"floor": 1.0}})
    assert not experiment_from_dict({}).self_training.enabled
    assert experiment_from_dict({"self_training": {"teacher": "t"}}).self_training.enabled


def test_round_experiment_applies_the_noise_the_teacher_and_a_warm_start(tmp_path):
    student = experiment_from_dict({
        "model": {"params": {"dropout": 0.2}},
        "self_training": {"power": 2.0, "noise": {"model": {"params": {"dropout": 0.4}},
                                                   "transforms": {"spec_augment_prob": 0.9}},
                          "warm_start": True, "warm_epochs": 3},
    }, name="exp", source_dir=str(tmp_path))
    round_1 = round_experiment(student, "exp_r1", "exp", unlabeled=str(tmp_path / "pool"))
    assert round_1.name == "exp_r1"
    assert round_1.model.params["dropout"] == 0.4 and round_1.model.params["base_size"] == 64
    assert round_1.transforms.spec_augment_prob == 0.9
    assert (round_1.self_training.teacher, round_1.self_training.power, round_1.self_training.noise) == ("exp", 2.0, {})
    assert round_1.self_training.unlabeled == str((tmp_path / "pool").resolve())
    assert (round_1.pretrained.experiment, round_1.train.max_epochs) == ("exp", 3)
    bad = experiment_from_dict({"self_training": {"noise": {"modle": {"name": "x"}}}}, name="exp")
    with pytest.raises(ConfigError, match="noise names 'modle', which is not a table"):
        round_experiment(bad, "exp_r1", "exp")
    idle = experiment_from_dict({"self_training": {"share": 0.0}}, name="exp")
    with pytest.raises(ConfigError, match="share and mix_prob are both 0"):
        round_experiment(idle, "exp_r1", "exp")


def test_a_warm_start_can_wait_for_a_later_round(tmp_path):
    student = experiment_from_dict({"train": {"max_epochs": 18},
                                    "self_training": {"warm_start": True, "warm_epochs": 8, "warm_from_round": 2}},
                                   name="exp", source_dir=str(tmp_path))
    round_1 = round_experiment(student, "exp_r1", "exp", round_index=1)
    round_2 = round_experiment(student, "exp_r2", "exp_r1", round_index=2)
    assert (round_1.pretrained.experiment, round_1.train.max_epochs) == ("", 18)
    assert (round_2.pretrained.experiment, round_2.train.max_epochs) == ("exp_r1", 8)
    assert round_2.to_dict()["self_training"]["warm_from_round"] == 2
    assert "warm_from_round" not in experiment_from_dict({}).to_dict()["self_training"]  # configs as before it
    with pytest.raises(ConfigError, match=r"warm_from_round = 0 is out of range"):
        experiment_from_dict({"self_training": {"warm_from_round": 0}})


def test_a_round_file_is_rewritten_until_a_fold_trains_then_a_change_is_refused(tmp_path):
    experiments, work = tmp_path / "experiments", tmp_path / "work"
    experiments.mkdir()
    student = experiment_from_dict({"self_training": {"power": 2.0}}, name="exp")
    path = write_round_file(round_experiment(student, "exp_r1", "exp"), experiments, work, "round 1")
    assert path == experiments / "exp_r1.toml" and path.read_text().startswith("# round 1\n")
    assert load_experiment("exp_r1", experiments).self_training.teacher == "exp"
    changed = round_experiment(experiment_from_dict({"self_training": {"power": 3.0}}, name="exp"), "exp_r1", "exp")
    write_round_file(changed, experiments, work, "round 1")  # nothing trained yet: rewritten
    assert read_toml(path)["self_training"]["power"] == 3.0
    (work / "experiments" / "exp_r1" / "fold_0").mkdir(parents=True)
    with pytest.raises(FreesoundError, match=r"exp_r1.toml was trained with other settings .*\(self_training.power\)"):
        write_round_file(round_experiment(student, "exp_r1", "exp"), experiments, work, "round 1")
    write_round_file(changed, experiments, work, "round 1")  # the same settings: fine


def test_the_round_summary_is_a_csv_and_a_png_and_its_times_add_up_over_runs(tmp_path):
    results = [RoundResult(0, "exp", 0.61, cpu_seconds=100.0, wall_seconds=120.0),
               RoundResult(1, "exp_r1", None, pool=40, pseudo_labelled=30, confident_share=0.75, cpu_seconds=50.0,
                           wall_seconds=60.0)]
    csv, png = write_summary(results, tmp_path / "summary")
    table = pd.read_csv(csv)
    assert list(table.columns) == ["round", "experiment", "cv_lwlrap", "pool", "pseudo_labelled", "confident_share",
                                   "top_label_flips", "cpu_seconds", "wall_seconds"]
    assert table.cv_lwlrap.isna().tolist() == [False, True] and table.pool.tolist() == [0, 40]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert earlier_time(csv) == {"exp": (100.0, 120.0), "exp_r1": (50.0, 60.0)}
    assert earlier_time(tmp_path / "none.csv") == {}


# ----------------------------------------------------------------------------- the split and the guard


def _pool_folder(dataset, folder, noisy=6, scored=()):
    """A folder of copies of the first ``noisy`` noisy clips, plus the clips ``scored`` (split,
    fname) under new names."""
    folder.mkdir()
    for fname in dataset.noisy.fname[:noisy]:
        shutil.copy(dataset.audio_dir("train_noisy") / fname, folder / f"u_{fname}")
    for i, (split, fname) in enumerate(scored):
        shutil.copy(dataset.audio_dir(split) / fname, folder / f"copy_{i}.wav")
    return folder


def test_unlabelled_clips_are_a_split_that_features_cache_and_folds_ignore(tiny_data, tmp_path):
    dataset, _ = tiny_data
    data = tmp_path / "data"
    shutil.copytree(dataset.root, data)
    _pool_folder(dataset, data / UNLABELED, noisy=4)
    names = sorted(path.name for path in (data / UNLABELED).iterdir())
    pd.DataFrame({"fname": names}).to_csv(data / "train_unlabeled.csv", index=False)
    loaded = load_dataset(data)
    assert list(loaded.unlabeled) == names and loaded.paths(UNLABELED)[0] == data / UNLABELED / names[0]
    report = cache_features(loaded, tmp_path / "work", splits=(UNLABELED,), progress=False)
    assert report.computed == 4 and not report.failures
    folds = dataset_folds(loaded, n_folds=3).folds
    assert sorted(folds.fname) == sorted(loaded.curated.fname)  # no unlabelled clip is in a fold
    pd.DataFrame({"fname": [names[0], names[0]]}).to_csv(data / "train_unlabeled.csv", index=False)
    with pytest.raises(DatasetError, match=f"fname '{names[0]}' appears more than once"):
        load_dataset(data)


def test_prepare_puts_an_unlabelled_folder_beside_the_labelled_clips(tmp_path):
    write_wav(tmp_path / "src" / "dog" / "1.wav")
    write_wav(tmp_path / "src" / "cat" / "2.wav", freq=300)
    write_wav(tmp_path / "pool" / "a" / "3.wav", freq=500)
    write_wav(tmp_path / "pool" / "b" / "3.wav", freq=600)
    result = run_cli("prepare", tmp_path / "src", tmp_path / "out", "--unlabeled", tmp_path / "pool")
    assert "prepared: 2 training, 2 unlabelled and 0 test clips of 2 classes" in result.output
    dataset = load_dataset(tmp_path / "out")
    assert sorted(dataset.unlabeled) == ["a__3.wav", "b__3.wav"] and len(dataset.curated) == 2
    assert list(pd.read_csv(tmp_path / "out" / "train_unlabeled.csv").columns) == ["fname"]
    assert sorted(pd.read_csv(tmp_path / "out" / "metadata.csv").split) == ["train_curated", "train_curated"]
    with pytest.raises(FreesoundError, match="no audio files"):
        (tmp_path / "empty").mkdir()
        prepare_collection(tmp_path / "src", tmp_path / "out2", unlabeled=tmp_path / "empty")


def test_the_guard_leaves_scored_clips_out_of_the_pool(tiny_data, tmp_path, monkeypatch):
    dataset, _ = tiny_data
    curated, test = dataset.curated.fname[0], dataset.test_fnames[0]
    folder = _pool_folder(dataset, tmp_path / "pool", noisy=3, scored=[("train_curated", curated), ("test", test)])
    pooled = with_unlabeled(dataset, folder)
    assert scored_duplicates(pooled) == ["copy_0.wav", "copy_1.wav"]
    monkeypatch.setattr(pseudo_labels, "_WARNED", set())
    with pytest.warns(FreesoundWarning, match=r"2 unlabelled clip\(s\) are also validation or test clips .*: "
                                              r"copy_0.wav, copy_1.wav; left out"):
        pool = unlabeled_pool(pooled)
    assert pool == [name for name in pooled.unlabeled if name.startswith("u_")] and len(pool) == 3
    with pytest.raises(FreesoundError, match="has no unlabelled clips"):
        unlabeled_pool(dataset)
    with pytest.raises(DatasetError, match="share a file name"):
        (folder / "sub").mkdir()
        shutil.copy(folder / "copy_0.wav", folder / "sub" / "copy_0.wav")
        with_unlabeled(dataset, folder)


# ----------------------------------------------------------------------------- end to end


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.slow
def test_self_train_two_rounds_resumes_after_an_interrupt_and_a_round_predicts(tiny_data, tmp_path,
                                                                               one_torch_thread):
    """Round 1 is interrupted after fold 1's first epoch; the rerun skips round 0 and round 1's
    fold 0, resumes fold 1, trains round 2; then `freesound predict EXP_r1` finds the round."""
    dataset, tiny_work = tiny_data
    work = tmp_path / "work"
    shutil.copytree(tiny_work, work)
    write_folds(work, make_folds(dataset.curated.fname, n_folds=2, seed=42))
    pool = _pool_folder(dataset, tmp_path / "pool", noisy=8, scored=[("test", dataset.test_fnames[0])])
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(tiny_experiment_toml(max_epochs=2) + """
[self_training]
power = 2.0
share = 0.3
mix_prob = 0.5
noise = { model = { params = { dropout = 0.3 } } }
""")
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("fold 1 epoch 1") and "self-train: round 1 (tiny_r1)" in lines and not resumed:
            raise Interrupt

    resumed = False
    run = dict(unlabeled=pool, experiments_dir=experiments, context=RunContext.create("cpu", log=log, progress=False))
    with pytest.warns(FreesoundWarning, match=r"1 unlabelled clip\(s\) are also validation or test clips"), \
            pytest.raises(Interrupt):
        self_train(load_experiment("tiny", experiments), dataset, work, 2, **run)
    assert (work / "experiments" / "tiny_r1" / "fold_1" / "unfinished").exists()
    resumed, lines[:] = True, []
    results = self_train(load_experiment("tiny", experiments), dataset, work, 2, **run)

    assert [r.experiment for r in results] == ["tiny", "tiny_r1", "tiny_r2"]
    assert all(0.0 <= r.cv_lwlrap <= 1.0 for r in results)
    assert "fold 1: resuming after epoch 1 (best val lwlrap" in "\n".join(lines)
    assert not any(line.startswith("fold 0 epoch") for line in lines[:lines.index("self-train: round 2 (tiny_r2)")])
    assert [r.pool for r in results] == [0, 8, 8] and results[1].top_label_flips is None
    assert 0.0 <= results[2].top_label_flips <= 1.0
    assert load_experiment("tiny_r2", experiments).self_training.teacher == "tiny_r1"
    assert load_experiment("tiny_r1", experiments).model.params["dropout"] == 0.3
    table = pd.read_csv(work / "self_training" / "tiny" / "rounds.csv")
    assert table.experiment.tolist() == ["tiny", "tiny_r1", "tiny_r2"] and (table.cpu_seconds > 0).all()
    assert (work / "self_training" / "tiny" / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = torch.load(work / "experiments" / "tiny_r1" / "fold_0" / "model.pt", weights_only=True)
    assert checkpoint["self_training"] == {"teacher": "tiny", "pool": 8, "pseudo_labelled": 8}

    out = tmp_path / "r1.csv"
    result = run_cli("predict", "tiny_r1", "--data", dataset.root, "--work", work, "--experiments", experiments,
                     "--out", out, "--no-oof")
    assert "tiny_r1: predicted 18 clips" in result.output
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["fname", *dataset.classes] and len(predictions) == 18
    assert round_name("tiny", 0) == "tiny" and round_name("tiny", 2) == "tiny_r2"


def test_self_train_on_a_dataset_without_unlabelled_clips_is_one_sentence(tiny_data, tmp_path):
    dataset, _ = tiny_data
    result = run_cli("self-train", "small", "--data", dataset.root, "--work", tmp_path, "--rounds", 1, expect=1)
    assert result.output.startswith("error: ") and "has no unlabelled clips" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "experiments").exists()
