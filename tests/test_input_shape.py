"""The input shape as an experiment setting: the tile length (``[input] tile_frames``) and the mel
bands (``[audio] n_mels``) are recorded in every checkpoint, and prediction tiles each model as it
was trained, also in ensembles (and kernels) that mix models of different shapes."""

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from freesound.config import AudioConfig, ConfigError, Experiment, InputConfig, experiment_from_dict, load_experiment
from freesound.ensembling.stack import stacked_oof
from freesound.errors import FreesoundError
from freesound.models import create_model, load_checkpoint, save_checkpoint
from freesound.paths import predictions_dir
from freesound.predict import EnsemblePredictor, Tagger, geometric_mean
from freesound.predict.tagger import checkpoint_input_config
from freesound.training.oof import OOFTiles, load_oof_tiles, save_oof_tiles

CLASSES = ["Bark", "Meow", "Church_bell", "Applause", "Drip"]
NARROW = AudioConfig(n_mels=64)
#: Clip lengths in seconds: shorter than a 64-frame tile (~1 s), between, and longer than 256 frames.
CLIP_SECONDS = {"a.wav": 0.3, "b.wav": 2.5, "c.wav": 5.0}


def expected_tiles(width: int, step: int, tile: int) -> int:
    """The method's tile count, written out: ``max(1, ceil((W - (T - s)) / s))``."""
    return max(1, math.ceil((width - (tile - step)) / step))


# ----------------------------------------------------------------------------- settings


def test_the_method_is_256_frames_of_128_mel_bands():
    experiment = Experiment()
    assert (experiment.input.tile_frames, experiment.audio.n_mels, experiment.transforms.crop) == (256, 128, 256)
    assert load_experiment("default").input.tile_frames == 256


def test_tile_frames_is_a_setting_the_training_crop_follows():
    experiment = experiment_from_dict({"input": {"tile_frames": 64}, "audio": {"n_mels": 64}})
    assert (experiment.input.tile_frames, experiment.transforms.crop, experiment.audio.n_mels) == (64, 64, 64)
    # Written back once, under [input]: the resolved config round-trips.
    values = experiment.to_dict()
    assert "crop" not in values["transforms"] and values["input"]["tile_frames"] == 64
    assert experiment_from_dict(values) == experiment


def test_crop_is_read_as_the_older_name_of_tile_frames():
    """Files and fold configs written before ``tile_frames`` state ``[transforms] crop``."""
    assert experiment_from_dict({"transforms": {"crop": 128}}).input.tile_frames == 128
    assert experiment_from_dict({"transforms": {"crop": 64}, "input": {"tile_frames": 64}}).transforms.crop == 64
    with pytest.raises(ConfigError) as error:
        experiment_from_dict({"transforms": {"crop": 128}, "input": {"tile_frames": 64}}, where="x.toml")
    assert str(error.value) == ("x.toml [transforms] crop = 128 and x.toml [input] tile_frames = 64 disagree: crop is "
                                "the older name of tile_frames, state tile_frames only")


@pytest.mark.parametrize("value", [8, 0, -64])
def test_a_tile_shorter_than_the_delta_filter_is_refused(value):
    with pytest.raises(ConfigError) as error:
        experiment_from_dict({"input": {"tile_frames": value}}, where="x.toml")
    assert str(error.value) == (f"x.toml [input]: tile_frames = {value} is out of range: a tile needs at least 9 "
                                "frames (the deltas' filter width)")


def test_an_old_checkpoint_without_tile_frames_loads_as_256():
    for recorded in ({"freq_channel": False}, None):
        checkpoint = {"model_params": {}, **({} if recorded is None else {"network_input": recorded})}
        assert checkpoint_input_config(checkpoint, "old.pt") == InputConfig(tile_frames=256)


# ----------------------------------------------------------------------------- prediction


def save_model(path, seed: int, n_mels: int, tile_frames: int):
    torch.manual_seed(seed)
    params = {"num_classes": len(CLASSES), "base_size": 4}
    model = create_model("simple_cnn", **params).eval()
    save_checkpoint(path, model, model_name="simple_cnn", model_params=params, classes=CLASSES,
                    audio_config=AudioConfig(n_mels=n_mels).to_dict(), network_input={"tile_frames": tile_frames})
    return path


def write_clips(folder):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (fname, seconds) in enumerate(CLIP_SECONDS.items()):
        t = np.arange(int(seconds * 44100)) / 44100
        clip = 0.3 * np.sin(2 * np.pi * (300 + 400 * index) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / fname, clip.astype(np.float32), 44100, subtype="PCM_16")
    return [folder / fname for fname in CLIP_SECONDS]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Two folds of a 128x256 experiment (``wide``) and two of a 64x64 one (``narrow``), and clips."""
    root = tmp_path_factory.mktemp("shapes")
    weights = root / "experiments"
    for fold in range(2):
        save_model(weights / f"wide/fold_{fold}/model.pt", fold, 128, 256)
        save_model(weights / f"narrow/fold_{fold}/model.pt", 10 + fold, 64, 64)
    spec = {"name": "mixed", "stackers": {},
            "experiments": {name: [f"{name}/fold_{k}/model.pt" for k in range(2)] for name in ("wide", "narrow")}}
    return {"root": root, "weights": weights, "spec": spec, "clips": write_clips(root / "clips")}


def test_the_checkpoint_shape_is_the_taggers(shapes):
    tagger = Tagger.from_experiment(shapes["weights"] / "narrow")
    assert (tagger.input_config.tile_frames, tagger.audio_config.n_mels) == (64, 64)
    assert load_checkpoint(shapes["weights"] / "narrow/fold_0/model.pt")["network_input"]["tile_frames"] == 64


def test_each_model_is_tiled_as_it_was_trained(shapes, monkeypatch):
    tagger = Tagger.from_experiment(shapes["weights"] / "narrow", tile_step=16)
    seen = []
    forward = tagger._forward
    monkeypatch.setattr(tagger, "_forward", lambda tiles: (seen.append(tiles.shape), forward(tiles))[1])
    widths = [90, 40, 300]
    logmels = [np.random.default_rng(w).normal(-40, 10, (64, w)).astype(np.float32) for w in widths]
    probs = tagger.tile_probabilities(logmels)
    assert [p.shape for p in probs] == [(2, expected_tiles(w, 16, 64), len(CLASSES)) for w in widths]
    assert [p.shape[1] for p in probs] == [3, 1, 16]
    assert {shape[1:] for shape in seen} == {(3, 64, 64)}
    assert sum(shape[0] for shape in seen) == 3 + 1 + 16


def test_a_step_longer_than_the_tile_is_refused(shapes):
    with pytest.raises(FreesoundError) as error:
        Tagger.from_experiment(shapes["weights"] / "narrow", tile_step=128)
    assert str(error.value) == ("tile step 128 must be between 1 and the models' tile length of 64 frames, or "
                                "frames between the tiles go unseen")
    # The kernel's budget plans take longer steps: for a short tile the step stops at the tile.
    assert Tagger.from_experiment(shapes["weights"] / "narrow").subset(tile_step=128).tile_step == 64


def mixed_predictor(shapes) -> EnsemblePredictor:
    return EnsemblePredictor.from_spec(shapes["spec"], lambda path: shapes["weights"] / path)


def test_an_ensemble_of_two_shapes_is_the_geometric_mean_of_each_alone(shapes):
    predictor = mixed_predictor(shapes)
    assert predictor.front_end == (AudioConfig(), NARROW)
    mixed = predictor.predict_files(shapes["clips"])
    alone = [Tagger.from_experiment(shapes["weights"] / name).predict_files(shapes["clips"])
             for name in ("wide", "narrow")]
    expected = geometric_mean(np.stack([frame.to_numpy() for frame in alone]))
    assert list(mixed.index) == list(CLIP_SECONDS) and list(mixed.columns) == CLASSES
    np.testing.assert_allclose(mixed.to_numpy(), expected, rtol=0, atol=1e-6)


def test_an_undecodable_file_is_predicted_from_silence_in_every_audio_config(shapes, tmp_path):
    from freesound.audio import silent_logmel
    from freesound.predict.files import silent_front_end

    broken = tmp_path / "broken.wav"
    broken.write_bytes(np.random.default_rng(0).bytes(600))
    predictor, failures = mixed_predictor(shapes), []
    frame = predictor.predict_files([shapes["clips"][0], broken], on_error="silence", failures=failures)
    assert [name for name, _ in failures] == ["broken.wav"]
    silent = silent_front_end(predictor.front_end)
    assert [logmel.shape[0] for logmel in silent] == [128, 64]
    np.testing.assert_array_equal(silent[1], silent_logmel(NARROW))
    np.testing.assert_allclose(frame.loc["broken.wav"].to_numpy(), predictor.predict_spectrograms([silent])[0],
                               rtol=0, atol=1e-6)


def test_mixed_audio_configs_need_a_log_mel_per_config(shapes):
    with pytest.raises(FreesoundError, match=r"^the ensemble's experiments use 2 audio configs: each clip must be a "
                                             r"tuple of one log-mel per config"):
        mixed_predictor(shapes).predict_spectrograms([np.zeros((128, 300), np.float32)])


# ----------------------------------------------------------------------------- stacking


def test_a_stacker_refuses_experiments_of_different_tile_lengths(tmp_path):
    probs = np.full((2, 5), 0.5, np.float32)
    for name, tile in (("wide", 256), ("narrow", 64)):
        path = predictions_dir(tmp_path, name) / "oof_tiles.npz"
        path.parent.mkdir(parents=True)
        save_oof_tiles(path, OOFTiles(np.array(["a.wav"]), np.array([0]), np.array([0, 2]), probs, tile))
    assert load_oof_tiles(predictions_dir(tmp_path, "narrow") / "oof_tiles.npz").tile_frames == 64
    with pytest.raises(FreesoundError) as error:
        stacked_oof(["wide", "narrow"], tmp_path)
    assert str(error.value) == ("experiments 'wide' (256-frame tiles) and 'narrow' (64-frame tiles) cannot share "
                                "a stacker: its tile subsets pair the experiments' tiles one to one, so stack "
                                "experiments of one tile length")


def test_oof_tiles_saved_before_tile_frames_load_as_256(tmp_path):
    path = tmp_path / "oof_tiles.npz"
    np.savez(path, fnames=np.array(["a.wav"]), folds=np.array([0]), offsets=np.array([0, 1]),
             probs=np.zeros((1, 5), np.float32))
    assert load_oof_tiles(path).tile_frames == 256


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_a_64_by_64_experiment_trains_records_its_shape_and_predicts_out_of_fold(tiny_work, one_torch_thread):
    from freesound.training.oof import predict_fold_tiles
    from freesound.training.trainer import train_fold

    dataset, work = tiny_work
    experiment = experiment_from_dict({
        "name": "small_tiles",
        "model": {"name": "simple_cnn", "params": {"base_size": 4}, "aux_weights": [1.0]},
        "train": {"batch_size": 8, "epoch_size": 16, "max_epochs": 1, "workers": 0, "lr": 3e-3},
        "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3},
        "input": {"tile_frames": 64}, "audio": {"n_mels": 64},
    })
    train_fold(experiment, dataset, work, 0, progress=False, log=lambda *_: None)
    fold_dir = work / "experiments" / "small_tiles" / "fold_0"
    checkpoint = torch.load(fold_dir / "model.pt", weights_only=True)
    assert checkpoint["network_input"]["tile_frames"] == 64 and checkpoint["audio_config"]["n_mels"] == 64
    assert load_experiment(fold_dir / "config.toml").input.tile_frames == 64

    oof = predict_fold_tiles("small_tiles", dataset, work, folds=[0], progress=False, log=lambda *_: None)
    assert oof.tile_frames == 64
    from freesound.data.features import load_features

    logmels = load_features(dataset, work, "train_curated", list(oof.fnames), NARROW)
    assert {logmel.shape[0] for logmel in logmels} == {64}
    assert list(np.diff(oof.offsets)) == [expected_tiles(logmel.shape[1], 64, 64) for logmel in logmels]


# ----------------------------------------------------------------------------- kernel


@pytest.mark.slow
def test_the_ensemble_kernel_of_two_shapes_equals_local_prediction(shapes, tmp_path):
    """The simulated Kaggle tree of ``tests/test_kernel.py``, with the 128x256 and 64x64
    experiments: the kernel tiles each as it was trained, as local prediction does."""
    import shutil

    from freesound.kaggle import COMPETITION
    from kernel_build import build_kernels
    from test_kernel import run_script

    weights = shapes["weights"]
    written = build_kernels(weights.parent, ensemble=shapes["spec"], out_dir=tmp_path / "kernel",
                            dataset_id="tester/freesound-weights", log=lambda *_: None)
    root = tmp_path / "kaggle"
    competition = root / "input" / COMPETITION
    shutil.copytree(shapes["root"] / "clips", competition / "test")
    pd.DataFrame(0.0, index=pd.Index(list(CLIP_SECONDS), name="fname"), columns=CLASSES).reset_index().to_csv(
        competition / "sample_submission.csv", index=False)
    shutil.copytree(weights, root / "input" / "freesound-weights" / "experiments")
    (root / "working").mkdir()

    result = run_script(written["ensemble_kernel"], root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout + result.stderr
    submission = pd.read_csv(root / "working" / "submission.csv")
    expected = mixed_predictor(shapes).predict_files(shapes["clips"])
    assert list(submission["fname"]) == list(CLIP_SECONDS)
    np.testing.assert_allclose(submission[CLASSES].to_numpy(), expected[CLASSES].to_numpy(), rtol=0, atol=1e-5)


def test_a_tile_too_small_for_the_model_is_refused_before_training():
    from freesound.training.fold_parts import check_experiment

    small = experiment_from_dict({"name": "tiny_tiles", "model": {"name": "simple_cnn", "params": {"base_size": 4},
                                                                   "aux_weights": [1.0]},
                                  "input": {"tile_frames": 12}, "audio": {"n_mels": 64}})
    with pytest.raises(ConfigError, match=r"^experiment 'tiny_tiles': the model simple_cnn cannot take tiles of 64 mel "
                                          r"bands x 12 frames \(\[audio\] n_mels, \[input\] tile_frames\): \S"):
        check_experiment(small, len(CLASSES))
    check_experiment(experiment_from_dict({**small.to_dict(), "input": {"tile_frames": 64}}), len(CLASSES))


def test_the_kernel_budget_counts_each_experiment_in_its_own_tiles():
    from freesound.kaggle.budget import Plan, mean_tiles, plan_units

    widths = [100, 1000]
    # 256-frame tiles at step 64: 1 and 13 tiles; 64-frame tiles: 2 and 16, at any step from 64 up
    # (the Tagger's step stops at its tile).
    assert [expected_tiles(w, 64, 64) for w in widths] == [2, 16]
    assert mean_tiles(widths, 64, 64) == 9.0 and mean_tiles(widths, 256, 64) == 9.0
    plan = Plan(64, (("wide", 2), ("narrow", 1)), False)
    assert plan_units(plan, widths) == {"wide": 14.0, "narrow": 7.0}
    assert plan_units(plan, widths, {"narrow": InputConfig(tile_frames=64)}) == {"wide": 14.0, "narrow": 9.0}


def test_a_fold_config_written_before_tile_frames_has_todays_settings(tmp_path):
    """Resuming compares a fold's config.toml with the experiment: the older ``crop`` is the same
    setting, so an interrupted fold of before resumes."""
    from freesound.config import dump_toml
    from freesound.paths import fold_dir
    from freesound.training.resume_state import fold_config_settings

    written = Experiment(name="old").to_dict()
    written["transforms"] = {"crop": 256, **written["transforms"]}
    del written["input"]["tile_frames"]
    path = fold_dir(tmp_path, "old", 0) / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(dump_toml(written))
    assert fold_config_settings(tmp_path, "old", 0) == Experiment(name="old").to_dict()


def test_a_tile_shorter_than_the_method_s_step_steps_by_its_tile(tmp_path):
    """The default step is the method's 64 frames, or the tile where that is shorter: a 32-frame
    model predicts (every frame in a tile) instead of refusing its own default."""
    model = create_model("simple_cnn", num_classes=len(CLASSES), base_size=4).eval()
    tagger = Tagger([model], CLASSES, input_config=InputConfig(tile_frames=32))
    assert tagger.tile_step == 32
    probs = tagger.tile_probabilities([np.zeros((128, 100), np.float32)])
    assert probs[0].shape == (1, expected_tiles(100, 32, 32), len(CLASSES))
    assert Tagger([model], CLASSES).tile_step == 64
