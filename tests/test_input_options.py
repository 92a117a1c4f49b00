"""The input options of the other top FAT2019 solutions: the frequency-position plane
(``[input] freq_channel``), SpecMix (``[mixers] specmix``) and frequency warping
(``[transforms] freq_warp_prob``). Each is off by default, and the method then draws and builds
exactly what it did before they existed."""

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_cli, tiny_experiment_toml
from freesound.audio.network_input import freq_positions, to_network_input, to_network_input_batch, with_freq_channel
from freesound.config import ConfigError, Experiment, experiment_from_dict
from freesound.errors import FreesoundError
from freesound.models import create_model, load_checkpoint, save_checkpoint
from freesound.predict import Tagger, make_tiles
from freesound.training.augment import FrequencyWarp, train_transform, valid_transform, warp_bands, warp_positions
from freesound.training.mixers import RandomMixer, SpecMixMixer, UseMixerWithProb, method_mixer
from freesound.training.sampling import ClipSource, SamplingDataset
from freesound.training.trainer import changed_settings, check_experiment, model_params, training_set

GOLDEN = REPO / "tests" / "data" / "default_pipeline_golden.json"


def clip_sources():
    rng = np.random.default_rng(11)
    specs = [rng.uniform(-80, 0, (128, int(rng.integers(20, 700)))).astype(np.float32) for _ in range(12)]
    targets = (rng.random((12, 6)) < 0.3).astype(np.float32)
    return [ClipSource("curated", specs[:8], targets[:8], False), ClipSource("corrected_noisy", [], targets[:0], False),
            ClipSource("noisy", specs[8:], targets[8:], True)]


#: Samples compared (the golden file holds 24; each depends on its index alone).
ITEMS = 12


def default_pipeline_digest() -> dict:
    """The default experiment's training samples (both paths) for a fixed seed, as plain numbers."""
    out = {}
    for on_device in (False, True):
        experiment = experiment_from_dict({})
        experiment = dataclasses.replace(experiment, train=dataclasses.replace(
            experiment.train, augment_on_device=on_device, epoch_size=24, batch_size=24))  # one batch of 24
        dataset = training_set(experiment, clip_sources(), [0.57, 0.42, 0.01], seed=5)
        dataset.set_epoch(3)
        items = [dataset[i] for i in range(ITEMS)]
        if on_device:
            out["dev_masks"] = [item[1].numpy().tolist() for item in items]
            out["dev_weights_sum"] = [float(item[2].double().sum()) for item in items]
            out["dev_windows_sum"] = [float(item[0].double().sum()) for item in items]
            out["dev_targets"] = [item[-2].numpy().tolist() for item in items]
        else:
            out["cpu_image_sum"] = [float(item[0].double().sum()) for item in items]
            out["cpu_image_abs"] = [float(item[0].double().abs().sum()) for item in items]
            out["cpu_targets"] = [item[1].numpy().tolist() for item in items]
    return out


def test_the_default_experiment_samples_what_it_sampled_before_the_options():
    """The golden file was written by the code before these options existed: the same windows,
    masks, mixing weights, targets and images for the same seed, on both paths."""
    golden, now = json.loads(GOLDEN.read_text()), default_pipeline_digest()
    for key in ("dev_masks", "dev_targets", "cpu_targets"):
        assert now[key] == golden[key][:ITEMS], key
    for key in ("dev_weights_sum", "dev_windows_sum", "cpu_image_sum", "cpu_image_abs"):
        assert now[key] == pytest.approx(golden[key][:ITEMS], rel=1e-6), key


def test_the_options_are_off_by_default_and_read_from_toml():
    default = Experiment()
    assert (default.input.freq_channel, default.mixers.specmix, default.transforms.freq_warp_prob) == (False, 0.0, 0.0)
    on = experiment_from_dict({"input": {"freq_channel": True}, "transforms": {"freq_warp_prob": 0.5},
                               "mixers": {"sigmoid_concat": 0.3, "add": 0.2, "specmix": 0.5}})
    assert on.input.channels == 4 and on.transforms.freq_warp_max == 0.2 and on.mixers.specmix == 0.5
    with pytest.raises(ConfigError, match=r"input: unknown key\(s\) freq; valid keys are freq_channel"):
        experiment_from_dict({"input": {"freq": True}})


def test_a_state_saved_before_a_setting_existed_still_resumes():
    saved = Experiment().to_dict()
    del saved["input"], saved["mixers"]["specmix"], saved["transforms"]["freq_warp_prob"]
    assert changed_settings(saved, Experiment().to_dict()) == []
    on = experiment_from_dict({"input": {"freq_channel": True}}).to_dict()
    assert changed_settings(saved, on) == ["input.freq_channel"]


def test_the_experiment_wires_the_options_into_both_training_paths():
    values = {"input": {"freq_channel": True}, "transforms": {"freq_warp_prob": 0.5, "freq_warp_max": 0.1},
              "mixers": {"sigmoid_concat": 0.3, "add": 0.2, "specmix": 0.5}}
    for on_device in (False, True):
        experiment = experiment_from_dict({**values, "train": {"augment_on_device": on_device}})
        dataset = training_set(experiment, clip_sources(), [0.5, 0.0, 0.5], seed=0)
        steps = (dataset.transform.window if on_device else dataset.transform).transforms
        assert [step.transform.max_warp for step in steps if isinstance(getattr(step, "transform", None), FrequencyWarp)
                ] == [0.1]
        assert isinstance(dataset.mixer.mixer.mixers[2], SpecMixMixer)
        assert dataset.mixer.mixer.probs.tolist() == [0.3, 0.2, 0.5]
        assert dataset.freq_channel == (not on_device)  # on the device path BatchAugment appends it


# -- the frequency-position plane ---------------------------------------------------------------


def test_freq_positions_run_linearly_from_minus_one_to_one():
    positions = freq_positions(128)
    assert positions.dtype == np.float32 and positions.shape == (128,)
    np.testing.assert_allclose(positions, 2 * np.arange(128) / 127 - 1, atol=1e-7)
    assert (positions[0], positions[-1]) == (-1.0, 1.0)


def test_the_network_input_gains_the_plane_and_keeps_the_other_three():
    window = np.random.default_rng(0).uniform(-80, 0, (128, 256)).astype(np.float32)
    plain, with_plane = to_network_input(window), to_network_input(window, freq_channel=True)
    assert plain.shape == (3, 128, 256) and with_plane.shape == (4, 128, 256)
    assert np.array_equal(with_plane[:3], plain)
    assert np.array_equal(with_plane[3], np.repeat(freq_positions(128)[:, None], 256, axis=1))
    batch = to_network_input_batch(np.stack([window, window[::-1]]), freq_channel=True)
    assert batch.shape == (2, 4, 128, 256) and np.array_equal(batch[1, 3], with_plane[3])
    assert np.abs(batch[0] - with_plane).max() < 1e-6
    assert np.array_equal(with_freq_channel(plain[None])[0], with_plane)


def test_tiles_and_validation_inputs_carry_the_plane():
    logmel = np.random.default_rng(1).uniform(-80, 0, (128, 300)).astype(np.float32)
    tiles, plain = make_tiles(logmel, 64, freq_channel=True), make_tiles(logmel, 64)
    assert tiles.shape == (plain.shape[0], 4, 128, 256) and np.array_equal(tiles[:, :3], plain)
    assert np.array_equal(tiles[:, 3], np.broadcast_to(freq_positions(128)[:, None], (len(tiles), 128, 256)))
    valid = valid_transform(256, freq_channel=True)(logmel)
    assert valid.shape == (4, 128, 256) and np.array_equal(valid[3], tiles[0, 3])


def test_no_augmentation_alters_the_plane():
    """Every augmentation at probability 1 (resized crop, frequency warp, SpecAugment, each mixer):
    the plane is appended after them, so it is exact in every sample."""
    transform = train_transform(256, resize_prob=1.0, spec_prob=1.0, freq_warp_prob=1.0)
    expected = np.broadcast_to(freq_positions(128)[:, None], (128, 256))
    for probs in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]):
        dataset = SamplingDataset(clip_sources(), [0.5, 0.0, 0.5], 16, transform, method_mixer(1.0, *probs),
                                  seed=1, freq_channel=True)
        for index in range(8):
            image = dataset[index][0].numpy()
            assert image.shape == (4, 128, 256) and np.array_equal(image[3], expected)


def test_the_models_take_the_planes_and_the_default_keeps_its_parameter_count():
    params = dict(num_classes=80, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8, last_fc=4)
    count = sum(p.numel() for p in create_model("aux_skip_attention", **params).parameters())
    assert count == 17_326_950
    four = create_model("aux_skip_attention", **params, in_channels=4)
    assert sum(p.numel() for p in four.parameters()) == count + 64 * 3 * 3  # one more input plane of conv1
    assert four.conv1.conv1[0].weight.shape == (64, 4, 3, 3)
    small = create_model("simple_cnn", num_classes=5, base_size=4, in_channels=4).eval()
    assert small(torch.zeros(2, 4, 32, 32))[0].shape == (2, 5)


def test_model_params_follow_the_input_and_refuse_a_contradiction():
    default = Experiment()
    assert model_params(default, 80) == {"num_classes": 80, **default.model.params}
    on = experiment_from_dict({"input": {"freq_channel": True}})
    assert model_params(on, 80)["in_channels"] == 4
    bad = experiment_from_dict({"input": {"freq_channel": True}, "model": {"params": {"in_channels": 3}}}, name="bad")
    with pytest.raises(ConfigError, match=r"^experiment 'bad': \[model\] params in_channels = 3 but the network "
                                          r"input has 4 planes"):
        check_experiment(bad, 80)


def save_tiny(path, in_channels, network_input, seed=0):
    torch.manual_seed(seed)
    params = {"num_classes": 3, "base_size": 4, **({"in_channels": in_channels} if in_channels != 3 else {})}
    model = create_model("simple_cnn", **params).eval()
    extra = {} if network_input is None else {"network_input": network_input}
    save_checkpoint(path, model, model_name="simple_cnn", model_params=params, classes=["a", "b", "c"],
                    audio_config={}, **extra)
    return model


def test_the_tagger_builds_the_input_its_checkpoints_record(tmp_path):
    model = save_tiny(tmp_path / "on.pt", 4, {"freq_channel": True})
    tagger = Tagger.from_checkpoints([tmp_path / "on.pt"], batch_size=4)
    assert tagger.input_config.freq_channel
    logmel = np.random.default_rng(2).uniform(-80, 0, (128, 400)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(make_tiles(logmel, 64, freq_channel=True)))[0]).mean(0)
    np.testing.assert_allclose(tagger.predict_spectrograms([logmel])[0], expected.numpy(), atol=1e-5)

    save_tiny(tmp_path / "old.pt", 3, None)  # a checkpoint from before the setting: 3 planes
    assert not Tagger.from_checkpoints([tmp_path / "old.pt"]).input_config.freq_channel
    with pytest.raises(FreesoundError, match=r"old.pt was trained on another network input than .*on.pt"):
        Tagger.from_checkpoints([tmp_path / "on.pt", tmp_path / "old.pt"])
    save_tiny(tmp_path / "bad.pt", 3, {"freq_channel": True})
    with pytest.raises(FreesoundError, match=r"bad.pt: the model takes 3 input planes but its network input has 4"):
        Tagger.from_checkpoints([tmp_path / "bad.pt"])


def test_the_argus_importer_refuses_weights_that_read_other_planes(tmp_path):
    from test_argus_import import AUX_KWARGS, argus_state_dict, random_model, write_argus_checkpoint

    from freesound.tools.argus_import import ArgusImportError, import_argus

    state = argus_state_dict(random_model("aux_skip_attention", {**AUX_KWARGS, "in_channels": 4}, seed=0))
    write_argus_checkpoint(tmp_path / "src" / "fold_0" / "model-001-0.500000.pth", "AuxSkipAttention", AUX_KWARGS, state)
    with pytest.raises(ArgusImportError) as error:
        import_argus(tmp_path / "src", "four", tmp_path / "work")
    message = str(error.value)
    assert "\n" not in message and re.search(r"conv1\.conv1\.0\.weight reads 4 input planes, but the original "
                                             r"models and their import read 3", message)
    assert not (tmp_path / "work" / "experiments" / "four").exists()


# -- SpecMix --------------------------------------------------------------------------------------


def test_specmix_replaces_bands_and_spans_and_mixes_labels_by_the_area():
    image = np.zeros((3, 10, 20), dtype=np.float32)
    other = np.ones((3, 10, 20), dtype=np.float32)
    target, other_target = np.array([1, 0, 0], np.float32), np.array([0, 1, 1], np.float32)
    mixer = SpecMixMixer()
    for seed in range(20):
        weights = mixer.mix_weights((10, 20), np.random.default_rng(seed))
        mixed, mixed_target = mixer(image, target, lambda: (other, other_target), np.random.default_rng(seed))
        # The image is the replaced area itself: 1 on marked bands or frames, 0 elsewhere.
        mask = weights[2][:, None] | (weights[1] > 0)[None, :]
        assert np.array_equal(mixed, np.broadcast_to(mask, (3, 10, 20)).astype(np.float32))
        lam = mask.mean()
        np.testing.assert_allclose(mixed_target, [1 - lam, lam, lam], rtol=1e-6)
        assert np.array_equal(weights[0] + weights[1], np.ones(20, np.float32))
    # The formula on a hand-made mask: bands 2-3 and frames 5-9 of a 10x20 image.
    bands, frames = np.zeros(10, bool), np.zeros(20, np.float32)
    bands[2:4], frames[5:10] = True, 1.0
    assert SpecMixMixer.replaced_fraction((1 - frames, frames, bands)) == pytest.approx((2 * 20 + 5 * 10 - 2 * 5) / 200)


def test_specmix_draws_band_counts_and_widths_in_range():
    mixer = SpecMixMixer(num_bands=(1, 3), freq_fraction=0.15, num_spans=(1, 3), time_fraction=0.2)
    for seed in range(200):
        _, frames, bands = mixer.mix_weights((128, 256), np.random.default_rng(seed))
        band_runs = np.flatnonzero(np.diff(np.concatenate([[0], bands.astype(int), [0]])) == 1)
        span_runs = np.flatnonzero(np.diff(np.concatenate([[0], frames.astype(int), [0]])) == 1)
        assert len(band_runs) <= 3 and len(span_runs) <= 3
        assert bands.sum() <= 3 * int(0.15 * 128) and frames.sum() <= 3 * int(0.2 * 256)


def test_method_mixer_without_specmix_is_the_two_mixer_choice_and_refuses_bad_sums():
    plain = method_mixer(0.8, 0.6, 0.4)
    assert isinstance(plain, UseMixerWithProb) and isinstance(plain.mixer, RandomMixer)
    assert len(plain.mixer.mixers) == 2 and plain.mixer.probs.tolist() == [0.6, 0.4]
    assert isinstance(method_mixer(0.8, 0.3, 0.2, 0.5).mixer.mixers[2], SpecMixMixer)
    # The natural slip, specmix raised alone, names the three shares and their sum.
    with pytest.raises(ConfigError, match=r"mixers: the mixers' shares sigmoid_concat \+ add \+ specmix must be "
                                          r"non-negative and sum to 1, got 0.6 \+ 0.4 \+ 0.5 = 1.5"):
        experiment_from_dict({"mixers": {"specmix": 0.5}}, name="bad")


# -- frequency warping ----------------------------------------------------------------------------


def test_warp_positions_are_a_piecewise_linear_map_that_keeps_both_ends():
    assert np.array_equal(warp_positions(128, 1.0), np.arange(128.0))
    for factor in (0.8, 0.9, 1.1, 1.2):
        positions = warp_positions(128, factor, boundary=0.8)
        knee = 0.8 * 127 * min(factor, 1.0)
        assert positions[0] == 0 and positions[-1] == 127 and np.all(np.diff(positions) > 0)
        below = np.arange(128) <= knee
        np.testing.assert_allclose(positions[below], np.arange(128)[below] / factor)
        above = np.arange(128) >= knee
        slope = (127 - knee / factor) / (127 - knee)
        np.testing.assert_allclose(np.diff(positions[above]), slope)


def test_frequency_warp_moves_a_peak_by_the_factor_and_keeps_the_range():
    spec = np.full((128, 8), -80.0, dtype=np.float32)
    spec[40] = 0.0
    for factor in (0.85, 1.2):
        warped = warp_bands(spec, warp_positions(128, factor))
        assert warped.dtype == np.float32 and warped.min() >= -80 and warped.max() <= 0
        assert abs(int(np.argmax(warped[:, 0])) - 40 * factor) <= 1
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    out = FrequencyWarp(0.2)(spec, rng)
    factor = reference.uniform(0.8, 1.2)  # one draw: U(1 - max_warp, 1 + max_warp)
    assert np.array_equal(out, warp_bands(spec, warp_positions(128, factor))) and rng.random() == reference.random()


def test_frequency_warp_off_draws_nothing_and_on_changes_the_window():
    spec = np.random.default_rng(4).uniform(-80, 0, (128, 300)).astype(np.float32)
    plain = train_transform(256)(spec, np.random.default_rng(9))
    off = train_transform(256, freq_warp_prob=0.0)(spec, np.random.default_rng(9))
    assert np.array_equal(plain, off)
    on = [train_transform(256, freq_warp_prob=1.0)(spec, np.random.default_rng(seed)) for seed in range(3)]
    assert all(image.shape == (3, 128, 256) for image in on)
    assert not np.array_equal(on[0], train_transform(256)(spec, np.random.default_rng(0)))


# -- end to end -----------------------------------------------------------------------------------

OPTIONS_TOML = """
[input]
freq_channel = true

[transforms]
freq_warp_prob = 0.5

[mixers]
sigmoid_concat = 0.3
add = 0.2
specmix = 0.5
"""


@pytest.mark.slow
def test_the_options_train_and_predict_through_the_cli(tiny_work, tmp_path):
    """All three options on: every fold trains, the checkpoints record the 4-plane input, and the
    out-of-fold and test predictions are built from it. (The kernels: tests/test_kernel.py's
    exp_b reads the plane.)"""
    dataset, work = tiny_work
    classes = list(dataset.classes)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "opts.toml").write_text(tiny_experiment_toml(epoch_size=16) + OPTIONS_TOML)
    out = run_cli("train", experiments / "opts.toml", "--data", dataset.root, "--work", work, "--device", "cpu").output
    checkpoint = load_checkpoint(work / "experiments" / "opts" / "fold_0" / "model.pt")
    assert checkpoint["network_input"] == {"freq_channel": True} and checkpoint["model_params"]["in_channels"] == 4
    assert checkpoint["state_dict"]["conv.0.conv1.0.weight"].shape[1] == 4
    assert re.search(r"OOF lwlrap \d\.\d{4}", out), out
    scores = json.loads((work / "predictions" / "opts" / "oof_scores.json").read_text())
    assert 0.0 < scores["lwlrap"] <= 1.0 and set(scores["per_fold"]) == {"0", "1", "2"}
    csv = tmp_path / "test.csv"
    run_cli("predict", experiments / "opts.toml", "--data", dataset.root, "--work", work, "--out", csv,
            "--device", "cpu", "--no-oof")
    predictions = pd.read_csv(csv)
    assert list(predictions.columns) == ["fname", *classes] and len(predictions) == 18
    probs = predictions[classes].to_numpy()
    assert probs.min() > 0 and probs.max() < 1
