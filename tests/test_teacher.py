"""Targets from an earlier model: soft pseudo-labels ([targets]), noisy pretraining ([pretrained])
and ``freesound distill``."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_cli, tiny_ensemble_toml
from freesound.config import ConfigError, Experiment, experiment_from_dict, load_experiment
from freesound.data.dataset import multi_hot
from freesound.data.features import load_features
from freesound.data.folds import read_folds
from freesound.errors import FreesoundError
from freesound.models import load_checkpoint
from freesound.paths import checkpoint_path, fold_dir, predictions_dir
from freesound.predict import Tagger
from freesound.training import teacher as teacher_module
from freesound.training.mixers import AddMixer, SigmoidConcatMixer
from freesound.training.oof import predict_oof
from freesound.training.pretrained import load_pretrained
from freesound.training.teacher import NOISY_CACHE, soft_targets, teacher_predictions
from freesound.training.trainer import (
    build_sources,
    changed_settings,
    create_training_model,
    train_experiment,
    train_fold,
)

TINY = {
    "model": {"name": "simple_cnn", "params": {"base_size": 4}, "aux_weights": [1.0]},
    "train": {"batch_size": 8, "epoch_size": 16, "max_epochs": 1, "workers": 0, "lr": 3e-3},
    "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3},
}


def tiny(name, **sections):
    return experiment_from_dict({**TINY, **sections}, name=name)


@pytest.fixture(scope="module")
def taught(tiny_data, tmp_path_factory, one_torch_thread):
    """A tiny teacher trained on every fold and predicted out of fold, in a private work copy."""
    import shutil

    dataset, work = tiny_data
    copy = tmp_path_factory.mktemp("taught") / "work"
    shutil.copytree(work, copy)
    train_experiment(tiny("teacher"), dataset, copy, progress=False, log=lambda line: None)
    predict_oof("teacher", dataset, copy, progress=False, log=lambda line: None)
    return dataset, copy


# -- formulas ---------------------------------------------------------------------------------


def test_soft_targets_mix_labels_and_predictions_by_weight():
    labels = np.array([[1.0, 0.0, 1.0]], np.float32)
    probs = np.array([[0.2, 0.6, 1.0]], np.float32)
    np.testing.assert_allclose(soft_targets(labels, probs, 0.25), [[0.8, 0.15, 1.0]], rtol=1e-6)
    assert np.array_equal(soft_targets(labels, probs, 0.0), labels)
    assert np.array_equal(soft_targets(labels, probs, 1.0), probs)
    assert soft_targets(labels, probs, 0.5).dtype == np.float32


def test_sigmoid_concat_mixes_soft_targets_by_elementwise_max():
    mixer = SigmoidConcatMixer()
    soft = mixer.mix_targets(np.array([0.3, 0.6, 0.0], np.float32), np.array([0.5, 0.2, 0.0], np.float32), None)
    np.testing.assert_array_equal(soft, np.array([0.5, 0.6, 0.0], np.float32))  # not clip(sum): 0.8, 0.8
    # On multi-hot labels max is the method's OR, clip(a + b, 0, 1), exactly.
    hard = np.array([[a, b] for a in (0.0, 1.0) for b in (0.0, 1.0)], np.float32)
    for a, b in hard:
        pair = (np.array([a, b], np.float32), np.array([b, a], np.float32))
        np.testing.assert_array_equal(mixer.mix_targets(*pair, None), np.clip(pair[0] + pair[1], 0, 1))
    # The additive mixer's weighted sum already keeps soft targets in [0, 1].
    weights = (np.full(4, 0.7, np.float32), np.full(4, 0.3, np.float32))
    np.testing.assert_allclose(AddMixer.mix_targets(np.float32([0.5]), np.float32([1.0]), weights), [0.65], rtol=1e-6)


def test_targets_and_pretrained_are_off_by_default_and_checked():
    default = load_experiment("default", REPO / "experiments")
    assert not default.targets.enabled and default.pretrained.experiment == ""
    on = experiment_from_dict({"targets": {"teacher": "small", "sources": ["noisy", "curated"], "weight": 1}})
    assert on.targets.enabled and on.targets.sources == ("noisy", "curated") and on.targets.weight == 1.0
    assert not experiment_from_dict({"targets": {"teacher": "small", "weight": 0.0}}).targets.enabled
    with pytest.raises(ConfigError, match=r"targets: sources \['test'\] are not training sources"):
        experiment_from_dict({"targets": {"sources": ["test"]}})
    with pytest.raises(ConfigError, match=r"targets: weight must be in \[0, 1\]"):
        experiment_from_dict({"targets": {"weight": 1.5}})
    with pytest.raises(ConfigError, match="pretrained: unknown key"):
        experiment_from_dict({"pretrained": {"name": "x"}})


def test_a_state_saved_before_the_new_sections_still_resumes():
    saved = Experiment().to_dict()
    del saved["targets"], saved["pretrained"]
    assert changed_settings(saved, Experiment().to_dict()) == []
    on = experiment_from_dict({"targets": {"teacher": "small"}}).to_dict()
    assert changed_settings(saved, on) == ["targets.teacher"]


# -- where the teacher's probabilities come from ----------------------------------------------


def test_curated_targets_are_out_of_fold_and_noisy_targets_the_fold_gmean(taught, monkeypatch):
    dataset, work = taught
    student = tiny("student", targets={"teacher": "teacher", "sources": ["curated", "noisy"], "weight": 1.0})
    teacher = teacher_predictions(student, dataset, work, progress=False, log=lambda line: None)
    sources, _, (valid_specs, valid_targets, valid_fnames) = build_sources(student, dataset, work, 0, teacher)

    folds = read_folds(work, dataset.curated.fname).set_index("fname").fold
    train_fnames = [f for f in dataset.curated.fname if folds[f] != 0]
    models = {k: Tagger.from_checkpoints([checkpoint_path(work, "teacher", k)]) for k in range(3)}
    specs = load_features(dataset, work, "train_curated", train_fnames)
    own_fold = np.stack([models[folds[f]].predict_spectrograms([s])[0] for f, s in zip(train_fnames, specs)])
    # Each training clip's target is the prediction of the teacher's model of the clip's own
    # fold (which never trained on it), not of the student's fold-0 teacher (which did).
    np.testing.assert_allclose(sources[0].targets, own_fold, atol=1e-5)
    fold_zero = models[0].predict_spectrograms(specs)
    assert np.abs(sources[0].targets - fold_zero).max() > 1e-3
    # Validation keeps its labels.
    labels = dataset.curated.set_index("fname").labels
    np.testing.assert_array_equal(valid_targets, multi_hot(labels.loc[valid_fnames], dataset.classes))

    gmean = Tagger.from_checkpoints([checkpoint_path(work, "teacher", k) for k in range(3)])
    noisy = gmean.predict_spectrograms(load_features(dataset, work, "train_noisy", list(dataset.noisy.fname)))
    np.testing.assert_allclose(sources[2].targets, noisy, atol=1e-5)

    # Cached: a second student reads the noisy predictions without predicting again.
    assert (predictions_dir(work, "teacher") / NOISY_CACHE).is_file()
    monkeypatch.setattr(teacher_module, "predict_noisy", lambda *a, **k: pytest.fail("predicted again"))
    half = dataclasses.replace(student, targets=dataclasses.replace(student.targets, weight=0.5, sources=("noisy",)))
    again = build_sources(half, dataset, work, 0, teacher_predictions(half, dataset, work, progress=False))[0]
    given = multi_hot(dataset.noisy.labels, dataset.classes)
    np.testing.assert_allclose(again[2].targets, 0.5 * given + 0.5 * noisy, atol=1e-5)
    np.testing.assert_array_equal(again[0].targets, multi_hot(labels.loc[train_fnames], dataset.classes))
    # The same work folder given as a relative path is the same cache.
    monkeypatch.chdir(work.parent)
    relative = teacher_predictions(half, dataset, Path(work.name), progress=False)
    np.testing.assert_allclose(relative.noisy.to_numpy(), noisy, atol=1e-5)


def test_missing_teacher_names_what_to_run_first(taught, tmp_path):
    dataset, work = taught
    unknown = tiny("student", targets={"teacher": "nowhere"})
    with pytest.raises(FreesoundError, match=r"teacher 'nowhere' is neither .* train it first"):
        teacher_predictions(unknown, dataset, work, progress=False)
    (tmp_path / "ens.toml").write_text(tiny_ensemble_toml(["teacher"]))
    ensemble = dataclasses.replace(tiny("student", targets={"teacher": "ens", "sources": ["curated"]}),
                                   source_dir=str(tmp_path))
    with pytest.raises(FreesoundError, match=r"stacker 'ens_mlp' is not trained; run `freesound stack ens"):
        teacher_predictions(ensemble, dataset, work, progress=False)
    itself = tiny("teacher", targets={"teacher": "teacher"})
    with pytest.raises(FreesoundError, match="names itself as its teacher"):
        teacher_predictions(itself, dataset, work, progress=False)


def test_an_ensemble_without_stackers_teaches_its_experiments_gmean(taught, tmp_path):
    dataset, work = taught
    (tmp_path / "plain.toml").write_text('experiments = ["teacher"]\n')
    student = dataclasses.replace(tiny("student", targets={"teacher": "plain", "sources": ["curated"]}),
                                  source_dir=str(tmp_path))
    curated = teacher_predictions(student, dataset, work, progress=False).curated
    oof = pd.read_csv(predictions_dir(work, "teacher") / "oof.csv").set_index("fname")
    np.testing.assert_allclose(curated.loc[oof.index].to_numpy(), oof.to_numpy(), atol=1e-6)


# -- noisy pretraining, then fine-tuning ------------------------------------------------------


def test_pretrained_loads_the_same_fold_and_refuses_another_model(taught):
    dataset, work = taught
    finetune = tiny("finetune", pretrained={"experiment": "teacher"})
    model = create_training_model(finetune, len(dataset.classes), "cpu")
    load_pretrained(model, finetune, dataset.classes, work, 1)
    expected = load_checkpoint(checkpoint_path(work, "teacher", 1))["state_dict"]
    other = load_checkpoint(checkpoint_path(work, "teacher", 0))["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert any(not torch.equal(expected[k], other[k]) for k in expected)

    # A different dropout shapes no weight; another width, model or class list does.
    dropout = experiment_from_dict({**TINY, "model": {**TINY["model"], "params": {"base_size": 4, "dropout": 0.5}},
                                    "pretrained": {"experiment": "teacher"}}, name="dropout")
    load_pretrained(model, dropout, dataset.classes, work, 1)
    wider = experiment_from_dict({**TINY, "model": {**TINY["model"], "params": {"base_size": 8}},
                                  "pretrained": {"experiment": "teacher"}}, name="wider")
    with pytest.raises(FreesoundError, match=r"cannot start from .*teacher/fold_1/model.pt: its weights do not fit"):
        load_pretrained(create_training_model(wider, len(dataset.classes), "cpu"), wider, dataset.classes, work, 1)
    attention = experiment_from_dict({"model": {"params": {"base_size": 4}}, "pretrained": {"experiment": "teacher"}},
                                     name="attention")
    with pytest.raises(FreesoundError, match=r"other model \(simple_cnn there, aux_skip_attention here\)"):
        load_pretrained(create_training_model(attention, len(dataset.classes), "cpu"), attention,
                        dataset.classes, work, 1)
    with pytest.raises(FreesoundError, match="other classes"):
        load_pretrained(model, finetune, list(reversed(dataset.classes)), work, 1)


def test_training_starts_from_the_pretrained_fold_or_says_what_to_train(taught, tmp_path):
    dataset, work = taught
    finetune = tiny("finetune", pretrained={"experiment": "noisy_only"})
    with pytest.raises(FreesoundError, match=r"starts from 'noisy_only', whose fold 2 has no .*freesound train noisy_only"):
        train_fold(finetune, dataset, work, 2, progress=False, log=lambda line: None)
    # A refused fold leaves no folder behind: predict and build-kernel would count it as a fold.
    assert not fold_dir(work, "finetune", 2).exists()
    with pytest.raises(FreesoundError, match=r"'itself' names itself in \[pretrained\] experiment"):
        train_experiment(tiny("itself", pretrained={"experiment": "itself"}), dataset, work, progress=False,
                         log=lambda line: None)
    # Every fold is checked before the first one trains.
    with pytest.raises(FreesoundError, match=r"whose fold\(s\) 0, 1, 2 have no model.pt .*freesound train noisy_only"):
        train_experiment(finetune, dataset, work, progress=False, log=lambda line: None)


# -- freesound distill, end to end ------------------------------------------------------------

STUDENT_TOML = """
[model]
name = "aux_skip_attention"
params = { base_size = 2, ratio = 2 }

[train]
batch_size = 8
epoch_size = 16
max_epochs = 1
workers = 0

[targets]
weight = 0.7
"""


@pytest.mark.slow
def test_distill_from_an_ensemble_makes_a_student_the_kernel_bundles(taught, tmp_path):
    import shutil

    from freesound.config import load_config
    from freesound.ensembling.predictions import run_prediction
    from freesound.ensembling.specs import experiment_spec
    from freesound.kaggle import COMPETITION, run_kernel
    from kernel_build import build_kernels
    from kernel_build.manifest import build_manifest

    dataset, taught_work = taught
    work = tmp_path / "work"
    shutil.copytree(taught_work, work)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "ens.toml").write_text(tiny_ensemble_toml(["teacher"]))
    (experiments / "pupil.toml").write_text(STUDENT_TOML)
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    missing = run_cli("distill", "ens", "--student", "pupil", *common, expect=1)
    assert "run `freesound stack ens --data ...` first" in missing.output
    run_cli("stack", "ens", *common)

    result = run_cli("distill", "ens", "--student", "pupil", *common)
    assert re.search(r"out-of-fold lwlrap: student 0\.\d{4}, teacher 0\.\d{4}", result.output), result.output
    saved = load_checkpoint(checkpoint_path(work, "pupil", 2))
    assert saved["model_params"]["base_size"] == 2 and saved["experiment"] == "pupil"
    config = (work / "experiments" / "pupil" / "fold_0" / "config.toml").read_text()
    assert 'sources = ["curated", "corrected_noisy", "noisy"]' in config and "weight = 0.7" in config
    assert (predictions_dir(work, "ens") / NOISY_CACHE).is_file()
    assert (predictions_dir(work, "pupil") / "oof_scores.json").is_file()

    # The student is an ordinary experiment: the kernel bundles it and matches local predict.
    written = build_kernels(work, experiment="pupil", out_dir=tmp_path / "kernel", experiments_dir=experiments,
                            log=lambda line: None)
    assert "pupil/fold_2/model.pt" in written["kernel"].read_text()
    root = tmp_path / "kaggle"
    shutil.copytree(dataset.root / "test", root / "input" / COMPETITION / "test")
    shutil.copy(dataset.root / "sample_submission.csv", root / "input" / COMPETITION)
    shutil.copytree(work / "experiments" / "pupil", root / "input" / "weights" / "pupil")
    (root / "working").mkdir()
    manifest = build_manifest(experiment_spec("pupil", work), work / "experiments")
    summary = run_kernel(manifest, root, device="cpu", workers=0, log=lambda line: None)
    local = run_prediction(load_config("pupil", experiments), work, dataset=dataset, oof=False, progress=False,
                           log=lambda line: None).predictions
    submission = pd.read_csv(summary["submission"]).set_index("fname")
    assert list(submission.index) == list(local.index) and summary["clips"] == len(local)
    np.testing.assert_allclose(submission.to_numpy(), local.to_numpy(), atol=1e-5)
