"""Experiments as TOML, the sampling dataset, and the training loop (determinism, resume)."""

import dataclasses
import re
import tomllib

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO
from freesound.config import (
    ConfigError,
    Experiment,
    dump_experiment,
    experiment_from_dict,
    load_ensemble,
    load_experiment,
)
from freesound.models import load_checkpoint, load_model
from freesound.paths import train_state_path
from freesound.training.losses import lsoft
from freesound.training.oof import reported_metrics
from freesound.training.sampling import ClipSource, SamplingDataset
from freesound.training.resume_state import STATE_FORMAT, upgrade_state
from freesound.training.trainer import (
    LOG_COLUMNS,
    StaleTrainingStateError,
    build_loss,
    build_sources,
    changed_settings,
    check_experiment,
    create_training_model,
    resume_conflicts,
    train_fold,
)

EXPERIMENTS = REPO / "experiments"


def test_default_experiment_is_the_method():
    e = load_experiment("default", EXPERIMENTS)
    assert e.model.name == "aux_skip_attention"
    assert e.model.params == {"base_size": 64, "dropout": 0.4, "ratio": 16, "kernel_size": 7,
                              "last_filters": 8, "last_fc": 4}
    assert e.model.aux_weights == (1.0, 0.4, 0.2, 0.1)
    assert e.loss.curated == {"name": "bce"} and e.loss.noisy == {"name": "lsoft", "beta": 0.7}
    t = e.train
    assert (t.lr, t.batch_size, t.epoch_size, t.max_epochs) == (9e-4, 128, 128 * 256, 700)
    assert (t.plateau_patience, t.plateau_factor, t.early_stop_patience, t.amp) == (6, 0.6, 18, True)
    assert (e.sampling.curated, e.sampling.corrected_noisy, e.sampling.noisy) == (0.57, 0.42, 0.01)
    assert (e.transforms.crop, e.transforms.resized_crop_prob, e.transforms.spec_augment_prob) == (256, 0.33, 0.5)
    assert (e.mixers.prob, e.mixers.sigmoid_concat, e.mixers.add) == (0.8, 0.6, 0.4)
    # The file only restates the defaults.
    assert dataclasses.replace(e, source_dir="") == Experiment()


@pytest.mark.parametrize("name", ["small", "small_lq", "small_cnn", "default"])
def test_shipped_experiments_load_and_round_trip(name):
    e = load_experiment(name, EXPERIMENTS)
    again = experiment_from_dict(tomllib.loads(dump_experiment(e)), source_dir=e.source_dir)
    assert again == e


def test_unknown_keys_name_the_valid_ones(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert "learning_rate" in str(info.value) and "lr" in str(info.value) and "bad.toml" in str(info.value)
    path.write_text("[trian]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="trian.*valid keys are .*train"):
        load_experiment(path)
    path.write_text('[train]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match="lr: expected float"):
        load_experiment(path)
    with pytest.raises(ConfigError, match="unknown experiment 'nope'.*small"):
        load_experiment("nope", EXPERIMENTS)


# One test per table-valued setting: a table merges onto the method's defaults (freesound.config.merge_table).


def test_model_params_merge_onto_the_methods_defaults(tmp_path):
    path = tmp_path / "wide.toml"
    path.write_text("[model]\nparams = { base_size = 32 }\n")
    e = load_experiment(path)
    assert e.model.params == {"base_size": 32, "dropout": 0.4, "ratio": 16, "kernel_size": 7, "last_filters": 8,
                              "last_fc": 4}
    # What trains is the method's head, not the constructor's defaults (dropout 0.2, last_fc 2).
    model = create_training_model(e, num_classes=5, device="cpu")
    assert model.fc[0].p == 0.4 and model.fc[1].out_features == 32 * 4
    # Another model's params are its own: nothing of AuxSkipAttention's is added.
    path.write_text('[model]\nname = "simple_cnn"\nparams = { base_size = 8 }\naux_weights = [1.0]\n')
    assert load_experiment(path).model.params == {"base_size": 8}
    path.write_text("[model]\nparams = 3\n")
    with pytest.raises(ConfigError, match=r"\[model\] params: expected a table, got 3"):
        load_experiment(path)


def test_loss_curated_merges_onto_the_methods_default(tmp_path):
    path = tmp_path / "curated.toml"
    path.write_text("[loss]\ncurated = {}\n")
    assert load_experiment(path).loss.curated == {"name": "bce"}
    path.write_text('[loss]\ncurated = { name = "lq", q = 0.6 }\n')
    assert load_experiment(path).loss.curated == {"name": "lq", "q": 0.6}
    path.write_text("[loss]\ncurated = { beta = 0.5 }\n")  # BCE has no beta: said when the losses are built
    experiment = load_experiment(path)
    assert experiment.loss.curated == {"name": "bce", "beta": 0.5}
    with pytest.raises(ConfigError, match="beta"):
        check_experiment(experiment, num_classes=3)


def test_loss_noisy_merges_onto_the_methods_default(tmp_path):
    path = tmp_path / "noisy.toml"
    path.write_text("[loss]\nnoisy = { beta = 0.5 }\n")
    experiment = load_experiment(path)
    assert experiment.loss.noisy == {"name": "lsoft", "beta": 0.5}
    check_experiment(experiment, num_classes=3)  # builds: no missing 'name'
    noisy_loss = build_loss(experiment).base_loss.noisy_loss
    assert (noisy_loss.fn, noisy_loss.params) == (lsoft, {"beta": 0.5})
    path.write_text('[loss]\nnoisy = { name = "lq", q = 0.5 }\n')  # another loss: no beta carried over
    assert load_experiment(path).loss.noisy == {"name": "lq", "q": 0.5}


def test_ensemble_file():
    ensemble = load_ensemble("ensemble", EXPERIMENTS)
    assert ensemble.experiments == ("small", "small_lq")
    assert [s.name for s in ensemble.stackers] == ["fcnet"]
    assert ensemble.stacker_dir_name(ensemble.stackers[0]) == "ensemble_fcnet"


def sources(n=5):
    rng = np.random.default_rng(0)
    specs = [rng.normal(size=(128, int(w))).astype(np.float32) for w in rng.integers(20, 400, size=n)]
    targets = np.eye(n, dtype=np.float32)
    return [ClipSource("curated", specs, targets, False), ClipSource("noisy", specs[:2], targets[:2], True),
            ClipSource("empty", [], np.zeros((0, n), np.float32), False)]


def identity_transform(spec, rng):
    start = int(rng.integers(0, max(1, spec.shape[1] - 16)))
    return np.stack([spec[:, start:start + 16]] * 3)


def test_sampling_dataset_is_seeded_per_epoch_and_index():
    a = SamplingDataset(sources(), [0.5, 0.5, 0.3], size=12, transform=identity_transform, seed=3)
    b = SamplingDataset(sources(), [0.5, 0.5, 0.3], size=12, transform=identity_transform, seed=3)
    # The empty source is dropped and the rest renormalised.
    assert len(a.sources) == 2 and np.allclose(a.probs, [0.5, 0.5])
    items_a = [a[i] for i in range(12)]
    items_b = [b[i] for i in reversed(range(12))][::-1]
    for (xa, ya, na), (xb, yb, nb) in zip(items_a, items_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and bool(na) == bool(nb)
    assert {bool(n) for _, _, n in items_a} == {True, False}
    a.set_epoch(1)
    assert not all(torch.equal(a[i][0], items_a[i][0]) for i in range(12))
    with pytest.raises(ValueError, match="no training clips"):
        SamplingDataset(sources()[2:], [1.0], size=4, transform=identity_transform)


def tiny_experiment(**train):
    values = {
        "name": "tiny",
        "model": {"name": "simple_cnn", "params": {"base_size": 4}, "aux_weights": [1.0]},
        "train": {"batch_size": 8, "epoch_size": 16, "max_epochs": 2, "workers": 0, "lr": 3e-3, **train},
        "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3},
    }
    return experiment_from_dict(values)


def test_build_sources_splits_by_fold(tiny_data):
    dataset, work = tiny_data
    sources_, probs, (valid_specs, valid_targets, valid_fnames) = build_sources(tiny_experiment(), dataset, work, 1)
    folds = pd.read_csv(work / "folds.csv")
    assert sorted(valid_fnames) == sorted(folds.fname[folds.fold == 1])
    assert [s.name for s in sources_] == ["curated", "corrected_noisy", "noisy"]
    assert len(sources_[0]) + len(valid_specs) == len(dataset.curated)
    assert len(sources_[1]) == 0 and len(sources_[2]) == len(dataset.noisy)
    assert sources_[2].noisy and not sources_[0].noisy
    assert valid_targets.shape == (len(valid_fnames), len(dataset.classes))


def test_log_mels_past_the_memory_limit_are_read_on_access_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    """The real training set's log-mels (about 10.7 GB) are not held: each is read from the cache
    when drawn, and training gives the same weights as with the log-mels held."""
    import shutil

    from freesound.data import features

    dataset, work = tiny_data
    states = {}
    for mode, limit in (("held", features.HOLD_IN_MEMORY_BYTES), ("lazy", 0)):
        monkeypatch.setattr(features, "HOLD_IN_MEMORY_BYTES", limit)
        sources_, _, (valid_specs, _, _) = build_sources(tiny_experiment(), dataset, work, 0)
        assert all(isinstance(s.specs, features.LazyLogmels) == (mode == "lazy") for s in sources_)
        assert isinstance(valid_specs, features.LazyLogmels) == (mode == "lazy")
        np.testing.assert_array_equal(sources_[2].specs[3], features.load_features(
            dataset, work, "train_noisy", [dataset.noisy.fname[3]])[0])
        run_work = tmp_path / mode
        shutil.copytree(work, run_work)
        train_fold(tiny_experiment(max_epochs=1), dataset, run_work, 0, progress=False, log=lambda *_: None)
        states[mode] = torch.load(train_state_path(run_work, "tiny", 0), weights_only=True)["model"]
    for key, value in states["held"].items():
        assert torch.equal(value, states["lazy"][key]), key


def test_train_fold_writes_checkpoint_log_and_config(tiny_work):
    dataset, work = tiny_work
    result = train_fold(tiny_experiment(), dataset, work, 0, progress=False, log=lambda *_: None)
    out = work / "experiments" / "tiny" / "fold_0"
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == LOG_COLUMNS and list(log.epoch) == [1, 2]
    assert result.best_lwlrap == pytest.approx(log.val_lwlrap.max())
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["model_name"] == "simple_cnn" and checkpoint["classes"] == list(dataset.classes)
    assert checkpoint["epoch"] == result.best_epoch
    torch.load(out / "model.pt", weights_only=True)
    assert load_experiment(out / "config.toml").train.epoch_size == 16
    model = load_model(out / "model.pt")
    assert not model.training
    # The weights folder holds only what a kernel needs; the resumable state lives beside it.
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "log.csv", "model.pt"]
    assert train_state_path(work, "tiny", 0).is_file()


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """The training state of ``tiny`` trained on fold 0 for 3 epochs without a break: what a
    second run and every resumed run must give."""
    import shutil

    dataset, work = tiny_data
    run_work = tmp_path_factory.mktemp("straight") / "work"
    shutil.copytree(work, run_work)
    train_fold(tiny_experiment(max_epochs=3), dataset, run_work, 0, progress=False, log=lambda *_: None)
    return torch.load(train_state_path(run_work, "tiny", 0), weights_only=True)


def test_seeded_training_is_reproducible_and_resume_is_exact(tiny_data, tmp_path, straight_run):
    import shutil

    dataset, work = tiny_data
    runs = {"straight": straight_run}
    for run in ("again", "resumed"):
        run_work = tmp_path / run
        shutil.copytree(work, run_work)
        if run == "resumed":
            # Stop after one epoch, as an interrupted run would, then resume to the end.
            train_fold(tiny_experiment(max_epochs=1), dataset, run_work, 0, progress=False, log=lambda *_: None)
        experiment = tiny_experiment(max_epochs=3)
        train_fold(experiment, dataset, run_work, 0, resume=run == "resumed", progress=False, log=lambda *_: None)
        state = torch.load(train_state_path(run_work, "tiny", 0), weights_only=True)
        runs[run] = state
    for run in ("again", "resumed"):
        assert runs[run]["epoch"] == 3
        for key, value in runs["straight"]["model"].items():
            assert torch.equal(value, runs[run]["model"][key]), (run, key)
        # every epoch's row, all but its time (column 5, seconds)
        assert len(runs[run]["log"]) == len(runs["straight"]["log"]) == 3
        assert [row[:5] for row in runs[run]["log"]] == [row[:5] for row in runs["straight"]["log"]]


def test_a_state_without_a_format_number_resumes_exactly_through_the_upgrade(tiny_data, tmp_path, straight_run):
    """A state.pt from before the format number (format 1: no settings, device, AMP setting or
    per-process generators) resumes to the weights and log of an uninterrupted run."""
    import shutil

    dataset, work = tiny_data
    runs = {"straight": straight_run}
    run_work = tmp_path / "format-1"
    shutil.copytree(work, run_work)
    train_fold(tiny_experiment(max_epochs=1), dataset, run_work, 0, progress=False, log=lambda *_: None)
    path = train_state_path(run_work, "tiny", 0)
    state = torch.load(path, weights_only=True)
    assert state["format"] == STATE_FORMAT
    for key in ("format", "experiment", "device", "amp", "rank_rng", "world_size"):
        del state[key]
    torch.save(state, path)
    lines = []
    train_fold(tiny_experiment(max_epochs=3), dataset, run_work, 0, resume=True, progress=False, log=lines.append)
    runs["format-1"] = torch.load(train_state_path(run_work, "tiny", 0), weights_only=True)
    assert lines[0].startswith("fold 0: resuming after epoch 1") and not any("bit for bit" in line for line in lines)
    assert runs["format-1"]["format"] == STATE_FORMAT and runs["format-1"]["epoch"] == 3
    for key, value in runs["straight"]["model"].items():
        assert torch.equal(value, runs["format-1"]["model"][key]), key
    assert [row[:5] for row in runs["format-1"]["log"]] == [row[:5] for row in runs["straight"]["log"]]


def test_upgrade_state_fills_what_a_format_1_state_lacks():
    rng = torch.get_rng_state()
    old = {"rng": rng, "scaler": {"scale": 65536.0}, "epoch": 2}
    upgraded = upgrade_state(old, lambda: {"name": "from config.toml"})
    assert upgraded["format"] == STATE_FORMAT and upgraded["experiment"] == {"name": "from config.toml"}
    assert (upgraded["device"], upgraded["amp"], upgraded["world_size"]) == (None, True, 1)
    assert list(upgraded["rank_rng"][0]) == ["rng"] and torch.equal(upgraded["rank_rng"][0]["rng"], rng)
    assert "format" not in old  # the state read is left as it was
    current = {**upgraded, "experiment": {"name": "saved"}, "device": "cpu", "amp": False}
    assert upgrade_state(current, lambda: pytest.fail("read config.toml")) == current


def test_early_stopping_and_finished_state(tiny_work):
    dataset, work = tiny_work
    experiment = tiny_experiment(max_epochs=30, early_stop_patience=1, lr=1e-9)
    result = train_fold(experiment, dataset, work, 0, progress=False, log=lambda *_: None)
    assert result.epochs < 30
    state = torch.load(train_state_path(work, "tiny", 0), weights_only=True)
    assert state["finished"] and state["bad_epochs"] == 1
    # Resuming a finished fold does nothing more.
    again = train_fold(experiment, dataset, work, 0, resume=True, progress=False, log=lambda *_: None)
    assert again.epochs == result.epochs


def test_resume_refuses_a_fold_trained_with_other_settings(tiny_work):
    """Resuming under new settings would continue old weights under new rules: refused, with
    the changed keys named and the saved state untouched. A longer run may resume."""
    dataset, work = tiny_work
    quiet = dict(progress=False, log=lambda *_: None)
    train_fold(tiny_experiment(max_epochs=1), dataset, work, 0, **quiet)
    state = train_state_path(work, "tiny", 0)
    saved = state.read_bytes()
    changed = tiny_experiment(max_epochs=1, lr=1e-4, batch_size=4)
    assert resume_conflicts(changed, work, 0) == ["train.batch_size", "train.lr"]
    with pytest.raises(StaleTrainingStateError,
                       match=r"fold 0 of 'tiny' .*\(train\.batch_size, train\.lr changed\).*without --resume"):
        train_fold(changed, dataset, work, 0, resume=True, **quiet)
    assert state.read_bytes() == saved

    assert resume_conflicts(tiny_experiment(max_epochs=5, workers=1), work, 0) == []
    assert resume_conflicts(changed, work, 1) == []  # fold 1 has no saved state
    # States saved before they held their settings are checked against the fold's config.toml.
    legacy = torch.load(state, weights_only=True)
    del legacy["experiment"]
    torch.save(legacy, state)
    assert resume_conflicts(changed, work, 0) == ["train.batch_size", "train.lr"]

    # Training afresh replaces the state, which then resumes under the new settings.
    train_fold(changed, dataset, work, 0, **quiet)
    assert resume_conflicts(changed, work, 0) == []
    assert train_fold(changed, dataset, work, 0, resume=True, **quiet).epochs == 1


def test_a_state_whose_model_pt_is_gone_trains_the_fold_from_the_start(tiny_work):
    """model.pt holds the state's best epoch: resuming without it would finish with no model (a
    fold that looks trained and has no weights). The fold trains afresh and says why."""
    dataset, work = tiny_work
    lines = []
    train_fold(tiny_experiment(max_epochs=1), dataset, work, 0, progress=False, log=lambda *_: None)
    model = work / "experiments" / "tiny" / "fold_0" / "model.pt"
    model.unlink()
    result = train_fold(tiny_experiment(max_epochs=1), dataset, work, 0, resume=True, progress=False, log=lines.append)
    assert model.is_file() and result.epochs == 1
    assert any(line.startswith(f"fold 0: {train_state_path(work, 'tiny', 0)} was saved beside a model.pt that is gone")
               and line.endswith("training the fold from the start") for line in lines), lines


def test_changed_settings_compares_nested_keys():
    a = {"model": {"name": "x", "params": {"base_size": 8}}, "train": {"lr": 1.0, "max_epochs": 3}}
    b = {"model": {"name": "x", "params": {"base_size": 4, "ratio": 2}}, "train": {"lr": 1.0, "max_epochs": 9}}
    assert changed_settings(a, b) == ["model.params.base_size", "model.params.ratio"]
    assert changed_settings(a, a) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCudaMixedPrecision:
    """One AMP training step on the GPU: fp16 autocast, GradScaler active, finite loss."""

    def test_one_amp_step(self):
        from freesound.models import create_model
        from freesound.training.trainer import build_loss, train_epoch

        experiment = load_experiment("default", EXPERIMENTS)
        device = torch.device("cuda")
        model = create_model(experiment.model.name, num_classes=80, **experiment.model.params).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=experiment.train.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=True)
        batch = [(torch.randn(8, 3, 128, 256), (torch.rand(8, 80) > 0.95).float(), torch.rand(8) > 0.5)]
        before = [p.detach().clone() for p in model.parameters()]
        loss = train_epoch(model, batch, build_loss(experiment), optimizer, scaler, device, True,
                            desc="amp", progress=False)
        assert np.isfinite(loss)
        assert scaler.is_enabled() and scaler.get_scale() > 0
        assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


def test_folds_on_other_processes_refuse_an_epoch_hook(tiny_work):
    """``on_epoch`` runs in the training process: with one process per device it would never be
    called, so the entry says so instead of training without it."""
    from freesound.errors import FreesoundError
    from freesound.training.experiment_training import OnDevices, train_folds

    dataset, work = tiny_work
    with pytest.raises(FreesoundError, match="report no epochs to on_epoch"):
        train_folds(tiny_experiment(), dataset, work, [0], where=OnDevices(("cpu", "cpu")),
                    on_epoch=lambda fold, fit_state, row: None)
    assert not (work / "experiments" / "tiny").exists()


def test_train_metric_is_checked_and_left_out_of_configs_when_lwlrap():
    """The method's lwlrap is left out of the resolved config, which stays what it was before the
    key; another metric is a setting a resumed fold must not change."""
    assert "metric" not in Experiment().to_dict()["train"] and "metric" not in dump_experiment(Experiment())
    with pytest.raises(ConfigError, match=r"\[train\]: metric = 'auc' is not a metric; choose from lwlrap, "
                                          r"roc_auc, cmap"):
        experiment_from_dict({"train": {"metric": "auc"}}, where="exp.toml")
    assert changed_settings(tiny_experiment().to_dict(), tiny_experiment(metric="cmap").to_dict()) == ["train.metric"]
    cmap = tiny_experiment(metric="cmap")
    assert experiment_from_dict(tomllib.loads(dump_experiment(cmap))).train.metric == "cmap"
    # OOF scores report the chosen metric beside lwlrap.
    assert reported_metrics("lwlrap") == ("lwlrap",) and reported_metrics("cmap") == ("lwlrap", "cmap")


@pytest.mark.slow
def test_train_metric_chooses_the_val_score(tiny_work, monkeypatch):
    """``[train] metric`` keeps the best checkpoint by its score, logged beside val_lwlrap."""
    dataset, work = tiny_work
    lines = []
    result = train_fold(tiny_experiment(metric="roc_auc", max_epochs=2), dataset, work, 0, progress=False,
                        log=lines.append)
    out = work / "experiments" / "tiny" / "fold_0"
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == [*LOG_COLUMNS[:-1], "val_roc_auc", "seconds"]
    best = log.loc[log.val_roc_auc.idxmax()]
    assert (result.best_epoch, result.best_lwlrap) == (best.epoch, pytest.approx(best.val_roc_auc))
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["val_roc_auc"] == pytest.approx(best.val_roc_auc)
    assert checkpoint["val_lwlrap"] == pytest.approx(best.val_lwlrap)
    assert (0.0 <= log.val_roc_auc).all() and (log.val_roc_auc <= 1.0).all()
    assert lines[0].endswith(f"val lwlrap {log.val_lwlrap[0]:.4f}, val roc_auc {log.val_roc_auc[0]:.4f} *")
    assert 'metric = "roc_auc"' in (out / "config.toml").read_text()
    # A fold the metric cannot score (ROC-AUC of a class every validation clip has) stops in one sentence.
    import freesound.training.trainer as trainer

    def no_negative(truth, scores, classes):
        raise ValueError(f"ROC-AUC is undefined for 1 class(es) with no negative row (classes [{classes[2]!r}])")

    monkeypatch.setitem(trainer.METRICS, "roc_auc", no_negative)
    with pytest.raises(ConfigError, match=r"^experiment 'tiny', fold 0: \[train\] metric = 'roc_auc' cannot score the "
                                          r"fold's validation clips: ROC-AUC is undefined for 1 class\(es\) "
                                          rf"with no negative row \(classes \['{re.escape(dataset.classes[2])}'\]\)"):
        train_fold(tiny_experiment(metric="roc_auc", max_epochs=1), dataset, work, 0, progress=False,
                   log=lambda *_: None)
