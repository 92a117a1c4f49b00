"""EfficientAT (Schmid et al. 2023): its MobileNetV3 (``efficientat_mn``), the converter of its
released state dicts, and its front end (``EFFICIENTAT_AUDIO``) against the published formulas
computed here independently (torch.stft, a conv1d pre-emphasis, Kaldi's banks from their formula).

The AudioSet checkpoints are not downloaded: the converter is tested on random weights in the
original key layout. The end-to-end chain (train, OOF, stack beside AuxSkipAttention, predict, the
ensemble kernel in a simulated Kaggle tree) is one slow test.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, tiny_ensemble_toml, tiny_experiment_toml
from freesound.audio import read_audio, to_log_mel
from freesound.audio.efficientat_frontend import frame_window, kaldi_mel_filterbank, preemphasize, uses_added_steps
from freesound.config import (
    _ADDED_AUDIO_DEFAULTS,
    DEFAULT_AUDIO_CONFIG,
    EFFICIENTAT_AUDIO,
    AudioConfig,
    Experiment,
    experiment_from_dict,
)
from freesound.kaggle import COMPETITION
from freesound.models import CheckpointError, create_model, load_checkpoint, load_model, save_checkpoint
from freesound.models.efficientat import convert_efficientat_checkpoint, efficientat_head_keys
from freesound.predict import runtimes

#: Tiny models gain nothing from two torch threads, and lose much on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FSDD = Path("/work/shared/data/fsdd/recordings")
EAT_CONFIG = AudioConfig(**EFFICIENTAT_AUDIO)


def random_eat(width=0.1, classes=6, head="mlp", seed=0):
    """A small EfficientAT MobileNetV3 in eval mode, random weights, whose outputs spread.

    Fresh batch norms in eval mode are identities, and 15 blocks of them (with 8 squeeze-excitations
    halving) shrink the activations to about 1e-9, every probability 0.5: here each batch norm takes
    the statistics of one random batch and a random affine, and the mlp head's class layer is scaled up.
    """
    torch.manual_seed(seed)
    model = create_model("efficientat_mn", num_classes=classes, width_mult=width, head=head)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: one batch sets the statistics
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 96) * 0.02)
        if head == "mlp":  # EfficientAT's N(0, 0.01) class layer
            model.classifier[5].weight.mul_(30.0)
        if head == "sed":  # Kaiming-initialised frame logits of up to ~25: probabilities of 0 and 1 only
            model.head.classifier.weight.mul_(0.1)
    return model.eval()


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, params", [
    # EfficientAT's README: 0.983M, 1.43M, 4.88M, 17.91M, 39.09M, 68.43M with 527 classes.
    (0.4, 983_599), (0.5, 1_431_239), (1.0, 4_876_831), (2.0, 17_909_287), (3.0, 39_086_367), (4.0, 68_427_303),
])
def test_parameter_counts_are_the_published_ones(width, params):
    with torch.device("meta"):
        model = create_model("efficientat_mn", num_classes=527, width_mult=width)
    assert sum(p.numel() for p in model.parameters()) == params


def test_mn10_has_the_released_state_dict_keys_and_shapes():
    with torch.device("meta"):
        state = create_model("efficientat_mn", num_classes=527).state_dict()
    # 312 entries: 15 blocks, the stem, the last convolution, 8 squeeze-excitations, the mlp head.
    assert len(state) == 312
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["features.0.0.weight"] == (16, 1, 3, 3)  # one input plane
    assert shapes["features.1.block.0.0.weight"] == (16, 1, 3, 3)  # no expansion: depthwise first
    assert shapes["features.4.block.0.0.weight"] == (72, 24, 1, 1)
    assert shapes["features.4.block.1.0.weight"] == (72, 1, 5, 5)
    assert shapes["features.4.block.2.conc_se_layers.0.fc1.weight"] == (24, 72)
    assert shapes["features.4.block.3.1.running_var"] == (40,)
    assert shapes["features.16.0.weight"] == (960, 160, 1, 1)
    assert shapes["classifier.2.weight"] == (1280, 960) and shapes["classifier.5.weight"] == (527, 1280)
    assert efficientat_head_keys() == ("classifier.5.",) and efficientat_head_keys("sed") == ("head.",)


@pytest.mark.parametrize("head", ["mlp", "pooled", "sed"])
def test_outputs_and_frame_logits(head):
    model = random_eat(head=head)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        (logits,) = model(x)
        frames = model.framewise(x)
    assert logits.shape == (2, 6) and frames.shape == (2, 3, 6)  # 96 frames / 32
    if head == "pooled":  # the mean of linear frame logits is the clip's
        torch.testing.assert_close(frames.mean(1), logits, rtol=0, atol=1e-5)
    if head == "mlp":  # one frame: the frame logits are the clip's
        torch.testing.assert_close(model.framewise(x[..., :32])[:, 0], model(x[..., :32])[0], rtol=0, atol=1e-5)


def test_reads_the_log_mel_plane_undoing_the_network_inputs_scale():
    model = random_eat()
    x = torch.randn(2, 3, 64, 64)
    noisy_deltas = x.clone()
    noisy_deltas[:, 1:] = torch.randn(2, 2, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x)[0], model(noisy_deltas)[0])
        torch.testing.assert_close(model.feature_map(x), model.features(x[:, :1] * 100), rtol=0, atol=0)
    three = create_model("efficientat_mn", num_classes=6, width_mult=0.1, input_planes=3, in_channels=3)
    assert three.features[0][0].weight.shape[1] == 3


@pytest.mark.parametrize("params, message", [
    ({"head": "attention"}, "unknown head 'attention'; choose one of mlp, pooled, sed"),
    ({"width_mult": 0}, "width_mult = 0 is out of range"),
    ({"input_planes": 4}, "input_planes = 4 is out of range: the network input has 3 planes"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("efficientat_mn", num_classes=3, **params)


# --- the converter --------------------------------------------------------------------------------


def test_a_saved_original_state_dict_converts_and_predicts_the_same(tmp_path):
    model = random_eat(width=0.2, classes=9, seed=3)
    # The original layout as a file: a plain state dict (here without the batch-norm counters).
    original = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(original, tmp_path / "mn02_as.pt")
    name, params, state = convert_efficientat_checkpoint(torch.load(tmp_path / "mn02_as.pt", weights_only=True))
    assert (name, params) == ("efficientat_mn", {"num_classes": 9, "width_mult": 0.2})
    converted = create_model(name, **params).eval()
    converted.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 100) * 0.02
    with torch.inference_mode():
        expected = model(x)[0]
        assert expected.std() > 0.5
        torch.testing.assert_close(converted(x)[0], expected, rtol=0, atol=0)
    # A width EfficientAT did not release is found from the channel counts too.
    odd = create_model("efficientat_mn", num_classes=4, width_mult=0.75).state_dict()
    name, params, state = convert_efficientat_checkpoint({"state_dict": odd})
    assert {k: v.shape for k, v in create_model(name, **params).state_dict().items()} == {k: v.shape for k, v in state.items()}


@pytest.mark.parametrize("head", ["mlp", "sed"])
def test_fine_tuning_starts_from_a_released_file_with_a_new_head(tmp_path, head):
    released = random_eat(width=0.2, classes=527, seed=5)
    torch.save(released.state_dict(), tmp_path / "mn02_as.pt")
    model = create_model("efficientat_mn", num_classes=4, width_mult=0.2, head=head,
                         pretrained=str(tmp_path / "mn02_as.pt")).eval()
    ours, theirs = model.state_dict(), released.state_dict()
    carried = [key for key in ours if key in theirs and torch.equal(ours[key], theirs[key])]
    assert len(carried) == len([k for k in ours if k.startswith("features.")]) + (2 if head == "mlp" else 0)
    assert all(key in carried for key in theirs if key.startswith("features."))
    assert not any(key.startswith(efficientat_head_keys(head)) for key in carried)
    with pytest.raises(CheckpointError, match=r"is EfficientAT's MobileNetV3 at width 0.2 reading one input plane, "
                                              r"which does not fit this one at width 0.4 reading 1: "):
        create_model("efficientat_mn", num_classes=4, width_mult=0.4, pretrained=str(tmp_path / "mn02_as.pt"))
    with pytest.raises(CheckpointError, match=r"mn10\.pt for efficientat_mn not found"):
        create_model("efficientat_mn", num_classes=4, pretrained=str(tmp_path / "mn10.pt"))


def test_a_state_dict_that_does_not_fit_is_one_sentence():
    state = random_eat(width=0.4, classes=5).state_dict()
    del state["features.3.block.1.0.weight"]
    state["features.4.block.2.conc_se_layers.0.fc1.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        convert_efficientat_checkpoint(state)
    assert str(info.value) == (
        "the state dict does not fit EfficientAT's MobileNetV3 at width 0.4 with 5 classes: 1 missing key(s) "
        "(features.3.block.1.0.weight); 1 unexpected key(s) (extra.weight); 1 key(s) of another shape "
        "(features.4.block.2.conc_se_layers.0.fc1.weight 3x3 in the file against 8x32 here)")
    with pytest.raises(CheckpointError, match=r"^not an EfficientAT MobileNetV3 with the mlp head: .*head found: "
                                              r"fully convolutional"):
        convert_efficientat_checkpoint({"features.0.0.weight": torch.zeros(1), "classifier.1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="expected a dict of tensors, got list"):
        convert_efficientat_checkpoint([1, 2])
    wide = random_eat(width=0.4, classes=5).state_dict()
    wide["features.0.0.weight"] = torch.zeros(200, 1, 3, 3)
    with pytest.raises(CheckpointError, match=r"channel counts \(stem 200, block outputs 8, 16, .*\) are those of "
                                              r"no EfficientAT MobileNetV3 width"):
        convert_efficientat_checkpoint(wide)


# --- the front end --------------------------------------------------------------------------------


def test_added_audio_fields_leave_the_methods_keys_as_they_were():
    # main's key of the method's front end before the fields were added (f48443c).
    assert DEFAULT_AUDIO_CONFIG.key() == "df091d80fc3d"
    assert set(DEFAULT_AUDIO_CONFIG.to_dict()).isdisjoint(_ADDED_AUDIO_DEFAULTS)
    assert "preemphasis" not in Experiment().to_dict()["audio"]
    fields = dataclasses.fields(AudioConfig)
    assert {f.name: f.default for f in fields[-len(_ADDED_AUDIO_DEFAULTS):]} == _ADDED_AUDIO_DEFAULTS
    assert not uses_added_steps(DEFAULT_AUDIO_CONFIG) and uses_added_steps(EAT_CONFIG)
    # The preset's values round-trip through a checkpoint's and an experiment file's dict.
    assert AudioConfig.from_dict(EAT_CONFIG.to_dict()) == EAT_CONFIG
    assert experiment_from_dict({"audio": EFFICIENTAT_AUDIO}).audio == EAT_CONFIG
    assert EAT_CONFIG.key() != DEFAULT_AUDIO_CONFIG.key()


def test_checkpoints_record_only_the_added_fields_that_are_set(tmp_path):
    model = random_eat(classes=2)
    for config in (DEFAULT_AUDIO_CONFIG, EAT_CONFIG):
        save_checkpoint(tmp_path / "m.pt", model, model_name="efficientat_mn",
                        model_params={"num_classes": 2, "width_mult": 0.1}, classes=["a", "b"], audio_config=config)
        assert load_checkpoint(tmp_path / "m.pt")["audio_config"] == config.to_dict()
    assert load_checkpoint(tmp_path / "m.pt")["audio_config"]["mel_scale"] == "kaldi"


@pytest.mark.parametrize("values, message", [
    ({"mel_scale": "htk"}, "audio mel_scale = 'htk' is not one of 'slaney', 'kaldi'"),
    ({"log": "ln"}, "audio log = 'ln' is not one of 'db', 'offset'"),
    ({"win_length": 4096}, "audio win_length = 4096 is out of range: it must be from 1 to n_fft (2560), or 0 for n_fft"),
    ({"preemphasis": 1.0}, "audio preemphasis = 1.0 is out of range"),
    ({"norm_scale": 0}, "audio norm_scale must be positive, got 0"),
])
def test_bad_added_audio_settings_are_named(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AudioConfig(**values)


def kaldi_banks_by_formula(sample_rate, n_fft, n_mels, fmin, fmax) -> np.ndarray:
    """Kaldi's mel banks element by element from their definition, plus the zero Nyquist column."""
    def mel(hz):
        return 1127.0 * np.log(1.0 + hz / 700.0)

    delta = (mel(fmax) - mel(fmin)) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        left, centre, right = (mel(fmin) + (i + j) * delta for j in range(3))
        for k in range(n_fft // 2):
            m = mel(k * sample_rate / n_fft)
            banks[i, k] = max(0.0, min((m - left) / (centre - left), (right - m) / (right - centre)))
    return banks


def reference_log_mel(y: np.ndarray, banks: np.ndarray) -> np.ndarray:
    """EfficientAT's ``AugmentMelSTFT`` in eval mode, step by step in torch."""
    x = torch.from_numpy(y)[None, None]
    x = torch.nn.functional.conv1d(x, torch.tensor([[[-0.97, 1.0]]]))[:, 0]
    spectrum = torch.stft(x, 1024, hop_length=320, win_length=800, window=torch.hann_window(800, periodic=False),
                          center=True, pad_mode="reflect", normalized=False, return_complex=True)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = torch.from_numpy(banks.astype(np.float32)) @ power[0]
    return (((mel + 1e-5).log() + 4.5) / 5).numpy()


def test_the_steps_match_their_definitions():
    np.testing.assert_allclose(kaldi_mel_filterbank(16000, 64, 6, 100.0, 7000.0),
                               kaldi_banks_by_formula(16000, 64, 6, 100.0, 7000.0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(frame_window(1024, 800, periodic=False)[112:912],
                               torch.hann_window(800, periodic=False).numpy(), rtol=0, atol=1e-6)
    assert not frame_window(1024, 800, periodic=False)[:112].any() and not frame_window(1024, 800, False)[912:].any()
    np.testing.assert_allclose(frame_window(64, 0, periodic=True), torch.hann_window(64).numpy(), atol=1e-6)
    np.testing.assert_array_equal(preemphasize(np.array([1, 2, 4], np.float32), 0.5), [1.5, 3.0])


@pytest.mark.skipif(not FSDD.is_dir(), reason="the FSDD recordings are not on this machine")
def test_the_efficientat_front_end_equals_the_published_steps_on_real_clips():
    banks = kaldi_banks_by_formula(32000, 1024, 128, 0.0, 15000.0)
    for name in ("0_george_0.wav", "3_jackson_12.wav", "7_theo_40.wav"):
        y = read_audio(FSDD / name, EAT_CONFIG)
        logmel = to_log_mel(y, EAT_CONFIG)
        expected = reference_log_mel(y, banks)
        assert logmel.dtype == np.float32 and logmel.shape == expected.shape == (128, 1 + (len(y) - 1) // 320)
        # float64 FFT here, float32 in torch; BLAS sums in either order: far inside 1e-4.
        np.testing.assert_allclose(logmel, expected, rtol=0, atol=1e-4)


def test_no_trimming_keeps_the_silence(tmp_path):
    import soundfile

    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 32000)
    soundfile.write(tmp_path / "quiet_start.wav", np.concatenate([np.zeros(32000), tone]), 32000)
    assert len(read_audio(tmp_path / "quiet_start.wav", EAT_CONFIG)) == 64000
    assert len(read_audio(tmp_path / "quiet_start.wav", dataclasses.replace(EAT_CONFIG, trim_top_db=60.0))) < 40000


# --- ONNX -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not runtimes.runtime_usable("onnxruntime"), reason="onnxruntime or onnx not installed")
@pytest.mark.parametrize("head", ["mlp", "sed"])
def test_onnx_runtime_agrees_with_torch(head):
    model = random_eat(head=head)
    tiles = np.random.default_rng(0).normal(0, 0.02, (3, 3, 128, 64)).astype(np.float32)
    exported = runtimes.export_onnx(model, tile_shape=(3, 128, 64))
    probabilities = runtimes.CompiledModel(exported, "onnxruntime")(tiles)
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(tiles))[0]).numpy()
    assert expected.std() > 0.05  # probabilities that differ, or the comparison says nothing
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


# --- through the pipeline -------------------------------------------------------------------------


def eat_front_end_toml() -> str:
    """The efficientat front end at 64 mels and 64-frame tiles (a stacker pairs the tiles of
    experiments with one front end and tile length)."""
    audio = "\n".join(f"{key} = {value!r}".replace("'", '"').replace("False", "false")
                      for key, value in {**EFFICIENTAT_AUDIO, "n_mels": 64}.items())  # inf is TOML's too
    return f"\n[audio]\n{audio}\n\n[input]\ntile_frames = 64\n"


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory, one_torch_thread):
    """tiny_eat (EfficientAT, fine-tuned from a released-layout file) and tiny_asa (AuxSkipAttention)
    trained on every fold, stacked,
    the ensemble and tiny_eat predicted and both kernels built."""
    dataset, base_work = tiny_data
    root = tmp_path_factory.mktemp("efficientat_pipeline")
    work, experiments = root / "work", root / "experiments"
    shutil.copytree(base_work, work)
    experiments.mkdir()
    # Fine-tuned from a file in the released layout (527 AudioSet classes), with a new head.
    torch.save(random_eat(width=0.1, classes=527, seed=11).state_dict(), experiments / "mn01_as.pt")
    (experiments / "tiny_eat.toml").write_text(tiny_experiment_toml("efficientat_mn", epoch_size=16, max_epochs=1)
                                               .replace("base_size = 4", "width_mult = 0.1") + eat_front_end_toml()
                                               + '\n[pretrained]\nweights = "mn01_as.pt"\n')
    (experiments / "tiny_asa.toml").write_text(tiny_experiment_toml("aux_skip_attention", epoch_size=16, max_epochs=1)
                                               + eat_front_end_toml())
    (experiments / "ens.toml").write_text(tiny_ensemble_toml(["tiny_eat", "tiny_asa"]))
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    outputs = {name: run_cli("train", name, *common).output for name in ("tiny_eat", "tiny_asa")}
    outputs["stack"] = run_cli("stack", "ens", *common).output
    for name in ("ens", "tiny_eat"):
        run_cli("predict", name, *common, "--no-oof", "--runtime", "auto")
    run_cli("build-kernel", "--experiment", "tiny_eat", "--ensemble", "ens", "--work", work, "--experiments", experiments,
            "--out", root / "kernel")
    (experiments / "mn01_as.pt").unlink()  # neither load_model nor the kernels need the start file
    return {"dataset": dataset, "work": work, "root": root, "outputs": outputs}


@pytest.mark.slow
def test_an_efficientat_experiment_trains_stacks_and_its_kernel_equals_local_prediction(trained, tmp_path):
    from test_kernel import run_script

    work, outputs, dataset = trained["work"], trained["outputs"], trained["dataset"]
    assert re.search(r"OOF lwlrap \d\.\d{4}", outputs["tiny_eat"]), outputs["tiny_eat"]
    checkpoint = load_checkpoint(work / "experiments" / "tiny_eat" / "fold_0" / "model.pt")
    assert checkpoint["model_name"] == "efficientat_mn" and checkpoint["model_params"]["width_mult"] == 0.1
    assert checkpoint["model_params"]["pretrained"].endswith("mn01_as.pt")  # a record only
    assert load_model(work / "experiments" / "tiny_eat" / "fold_0" / "model.pt").classifier[5].out_features == 6
    assert checkpoint["audio_config"]["mel_scale"] == "kaldi" and checkpoint["audio_config"]["n_mels"] == 64
    assert "blend" in outputs["stack"]
    # A simulated Kaggle tree: the test clips as the competition data, the weights one level deeper.
    root = tmp_path / "kaggle"
    shutil.copytree(dataset.root / "test", root / "input" / COMPETITION / "test")
    shutil.copy(dataset.root / "sample_submission.csv", root / "input" / COMPETITION)
    shutil.copytree(work / "experiments", root / "input" / "freesound-weights" / "experiments")
    classes = list(dataset.classes)
    # Both kernels: the ensemble's blend and tiny_eat's folds alone must equal local prediction.
    (root / "working").mkdir()
    result = run_script(trained["root"] / "kernel" / "ensemble_kernel.py", root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = pd.read_csv(root / "working" / "submission.csv").set_index("fname")
    expected = pd.read_csv(work / "predictions" / "ens" / "test.csv").set_index("fname")
    assert list(submission.columns) == classes and len(submission) == len(expected) == len(pd.read_csv(dataset.root / "sample_submission.csv"))
    np.testing.assert_allclose(submission.loc[expected.index, classes].to_numpy(), expected[classes].to_numpy(),
                               rtol=0, atol=1e-5)
    (root / "working" / "submission.csv").unlink()
    result = run_script(trained["root"] / "kernel" / "kernel.py", root, tmp_path / "tmp1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = pd.read_csv(root / "working" / "submission.csv").set_index("fname")
    expected = pd.read_csv(work / "predictions" / "tiny_eat" / "test.csv").set_index("fname")
    np.testing.assert_allclose(submission.loc[expected.index, classes].to_numpy(), expected[classes].to_numpy(),
                               rtol=0, atol=1e-5)


def test_import_weights_tags_a_file_with_audioset_classes_as_the_original_model(tmp_path):
    import soundfile

    from freesound.predict import Tagger

    released = random_eat(width=0.2, classes=527, seed=7)
    torch.save({k: v for k, v in released.state_dict().items() if not k.endswith("num_batches_tracked")},
               tmp_path / "mn02_as.pt")
    out = run_cli("import-weights", tmp_path / "mn02_as.pt", "--format", "efficientat", "--name", "mn02",
                  "--work", tmp_path / "work", "--experiments", tmp_path / "experiments").output
    assert "imported -> " in out
    checkpoint = load_checkpoint(tmp_path / "work/experiments/mn02/fold_0/model.pt")
    assert checkpoint["classes"][0] == "Speech" and len(checkpoint["classes"]) == 527
    assert AudioConfig.from_dict(checkpoint["audio_config"]) == EAT_CONFIG
    assert 'preset = "efficientat"' in (tmp_path / "experiments/mn02.toml").read_text()

    rng = np.random.default_rng(0)
    t = np.arange(24000) / 32000
    soundfile.write(tmp_path / "chirp.wav", (0.3 * np.sin(2 * np.pi * (300 + 2000 * t) * t)
                                             + 0.01 * rng.standard_normal(t.size)).astype(np.float32), 32000)
    probs = Tagger.from_experiment(tmp_path / "work/experiments/mn02").predict_files([tmp_path / "chirp.wav"])
    # The original: its front end by the published steps, the whole clip in one pass, the sigmoid.
    y = read_audio(tmp_path / "chirp.wav", EAT_CONFIG)
    logmel = torch.from_numpy(reference_log_mel(y, kaldi_banks_by_formula(32000, 1024, 128, 0.0, 15000.0)))
    with torch.inference_mode():
        expected = torch.sigmoid(released(logmel[None, None].repeat(1, 3, 1, 1) / 100)[0])[0].numpy()
    assert list(probs.columns) == checkpoint["classes"]
    np.testing.assert_allclose(probs.to_numpy()[0], expected, rtol=0, atol=1e-4)
    # A work folder with folds.csv (folds 0 and 1) still tags with the one imported fold.
    (tmp_path / "work" / "folds.csv").write_text("fname,fold\na.wav,0\nb.wav,1\n")
    out = run_cli("tag", tmp_path / "chirp.wav", "--experiment", "mn02", "--work", tmp_path / "work").output
    top = probs.iloc[0].sort_values(ascending=False).index[0]
    assert top in out, out
    # A file torch cannot read is named once, with the reason.
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    bad = run_cli("import-weights", tmp_path / "junk.pt", "--format", "efficientat", "--name", "junk",
                  "--work", tmp_path / "work", "--experiments", tmp_path / "experiments", expect=1).output
    assert bad.count("junk.pt") == 1 and "not a readable efficientat checkpoint" in bad, bad


def test_an_unreadable_pretrained_file_is_named_once(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as info:
        create_model("efficientat_mn", num_classes=3, width_mult=0.1, pretrained=str(tmp_path / "junk.pt"))
    assert str(info.value).count("junk.pt") == 1 and "not a readable EfficientAT state dict" in str(info.value)
    with pytest.raises(CheckpointError, match=r"pretrained weights file \S+gone\.pt for efficientat_mn not found"):
        create_model("efficientat_mn", num_classes=3, width_mult=0.1, pretrained=str(tmp_path / "gone.pt"))
