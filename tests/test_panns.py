"""PANNs (CNN14/CNN10/CNN6), the ``[audio] preset``, ``[input] whole_clip`` and ``import-weights``,
without the released files: tiny random models saved in the released format, and the published
formulas (librosa's STFT and mel filters, the layer layout as functional ops) computed here on
their own as the reference.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, tiny_ensemble_toml, tiny_experiment_toml
from freesound.audio import read_audio, to_log_mel
from freesound.config import (
    _ADDED_AUDIO_DEFAULTS,
    AudioConfig,
    ConfigError,
    InputConfig,
    audio_preset,
    experiment_from_dict,
)
from freesound.errors import FreesoundWarning
from freesound.models import CheckpointError, create_model, load_checkpoint, load_model
from freesound.models.panns import FRONT_END_KEYS, convert_checkpoint
from freesound.predict import Tagger
from freesound.predict.runtimes import runtime_usable
from freesound.predict.tiles import whole_clip_input

FSDD = Path("/work/shared/data/fsdd/recordings")
#: A real recording where the machine has FSDD, else a synthetic one (see ``clip_path``).
FSDD_CLIP = FSDD / "3_lucas_7.wav"  # 1.3 s at 8 kHz
#: The method's front end's cache key on main before any field was added: it must never change.
METHOD_AUDIO_KEY = "df091d80fc3d"


# -- the released format, made here ---------------------------------------------------------------


def stft_weights(n_fft: int = 1024) -> tuple:
    """torchlibrosa's STFT convolutions as the released files hold them: row k is cos / -sin of
    2 pi k n / n_fft times the periodic Hann window, shape (n_fft // 2 + 1, 1, n_fft)."""
    n = np.arange(n_fft)
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    angles = 2 * np.pi * np.outer(np.arange(n_fft // 2 + 1), n) / n_fft
    return (torch.tensor((np.cos(angles) * window)[:, None, :], dtype=torch.float32),
            torch.tensor((-np.sin(angles) * window)[:, None, :], dtype=torch.float32))


def released_state(name="panns_cnn14", base_width=4, num_classes=527, seed=0, sample_rate=32000, n_fft=1024) -> dict:
    """A random model's state dict in the released layout: our keys (they are the original's) with
    non-trivial batch-norm statistics, plus the front end's weights for ``sample_rate``/``n_fft``."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, base_width=base_width)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    model.bn0.running_mean.uniform_(-60, -20)  # the dB scale of the log-mel it normalises
    model.bn0.running_var.uniform_(100, 400)
    state = dict(model.state_dict())
    state[FRONT_END_KEYS[0]], state[FRONT_END_KEYS[1]] = stft_weights(n_fft)
    state[FRONT_END_KEYS[2]] = torch.tensor(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=64, fmin=50,
                                                                fmax=min(14000, sample_rate // 2)).T)
    return state


def reference_probabilities(state: dict, logmel_db: np.ndarray, blocks: int = 6) -> np.ndarray:
    """The original CNN14's clip output, written from the paper's layout as functional ops on the
    state dict: (frames, mel) -> bn0 over the mel bands -> conv blocks (2x2 average pools but the
    last) -> mean over frequency -> max + mean over time -> fc1, ReLU -> fc_audioset, sigmoid."""
    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)

    x = torch.tensor(logmel_db.T, dtype=torch.float32)[None, None]  # (1, 1, T, mel)
    x = bn(x.transpose(1, 3), "bn0").transpose(1, 3)
    for k in range(1, blocks + 1):
        p = f"conv_block{k}"
        x = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], padding=1), f"{p}.bn1"))
        x = F.relu(bn(F.conv2d(x, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2"))
        x = F.avg_pool2d(x, 2) if k < blocks else x
    x = x.mean(dim=3)
    x = x.max(dim=2)[0] + x.mean(dim=2)
    x = F.relu(F.linear(x, state["fc1.weight"], state["fc1.bias"]))
    return torch.sigmoid(F.linear(x, state["fc_audioset.weight"], state["fc_audioset.bias"]))[0].numpy()


def reference_log_mel(y: np.ndarray) -> np.ndarray:
    """The PANNs front end from its published numbers, with librosa directly: (64, frames) dB."""
    power = np.abs(librosa.stft(y.astype(np.float64), n_fft=1024, hop_length=320, window="hann", center=True,
                                pad_mode="reflect")) ** 2
    mel = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000) @ power
    return 10 * np.log10(np.maximum(mel, 1e-10))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """A real FSDD recording (8 kHz speech) where the machine has them; else a chirp at 22.05 kHz."""
    if FSDD_CLIP.is_file():
        return FSDD_CLIP
    import soundfile

    path = tmp_path_factory.mktemp("clip") / "chirp.wav"
    t = np.arange(int(1.3 * 22050)) / 22050
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * (200 + 2000 * t) * t), 22050)
    return path


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    """A tiny CNN14 (width 4) saved as the released files are: ``{"model": state_dict}``."""
    path = tmp_path_factory.mktemp("released") / "Cnn14_tiny.pth"
    state = released_state()
    torch.save({"model": state}, path)
    return path, state


# -- config: the contract shared with other front ends ------------------------------------------


def test_the_method_front_end_keeps_its_cache_key_and_record():
    assert AudioConfig().key() == METHOD_AUDIO_KEY
    assert list(AudioConfig().to_dict()) == ["sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax",
                                             "trim_top_db", "min_seconds", "ref", "amin", "top_db", "pad_mode",
                                             "max_seconds"]
    # Every added field is listed with the default the dataclass gives it.
    defaults = {f.name: f.default for f in dataclasses.fields(AudioConfig)}
    assert all(defaults[name] == value for name, value in _ADDED_AUDIO_DEFAULTS.items())
    assert InputConfig().to_dict() == {"freq_channel": False}
    assert InputConfig(whole_clip=True).to_dict() == {"freq_channel": False, "whole_clip": True}


def test_the_panns_preset_expands_and_explicit_fields_override_it():
    experiment = experiment_from_dict({"audio": {"preset": "panns", "max_seconds": 30.0}})
    assert experiment.audio == dataclasses.replace(audio_preset("panns"), max_seconds=30.0)
    assert (experiment.audio.sample_rate, experiment.audio.n_mels, experiment.audio.fmax) == (32000, 64, 14000.0)
    assert experiment.audio.top_db == experiment.audio.trim_top_db == float("inf")
    assert experiment.audio.key() not in (METHOD_AUDIO_KEY, audio_preset("panns").key())
    with pytest.raises(ConfigError, match=r"x\.toml \[audio\] preset = 'pan' is not an audio preset; presets are efficientat, panns"):
        experiment_from_dict({"audio": {"preset": "pan"}}, where="x.toml")
    with pytest.raises(ConfigError, match="experiment and weights both name where the folds start"):
        experiment_from_dict({"pretrained": {"experiment": "a", "weights": "b.pth"}})


def test_the_panns_front_end_is_librosas_formulas_on_a_real_clip(clip_path):
    config = audio_preset("panns")
    y = read_audio(clip_path, config)
    decoded = librosa.load(clip_path, sr=None)[0]
    assert abs(len(y) / 32000 - len(decoded) / librosa.get_samplerate(clip_path)) < 1e-3  # nothing trimmed
    logmel = to_log_mel(y, config)
    reference = reference_log_mel(y)
    assert logmel.shape == reference.shape == (64, 1 + len(y) // 320)
    np.testing.assert_allclose(logmel, reference, rtol=0, atol=2e-3)
    assert logmel.min() < reference.max() - 80  # no top_db floor


def test_the_panns_front_end_trims_no_silence():
    from freesound.audio import trim_to_min_length

    y = np.concatenate([np.zeros(16000), 0.5 * np.random.default_rng(0).standard_normal(8000)]).astype(np.float32)
    np.testing.assert_array_equal(trim_to_min_length(y, audio_preset("panns")), y)
    assert len(trim_to_min_length(y, AudioConfig())) < len(y)  # the method's front end trims the silence


def test_a_whole_clip_experiments_one_tile_stands_for_each_tile_of_the_others(tiny_work):
    from conftest import fake_oof_predictions
    from freesound.ensembling.stack import stacked_oof
    from freesound.paths import predictions_dir
    from freesound.training.oof import OOFTiles, load_oof_tiles, save_oof_tiles

    dataset, work = tiny_work
    fake_oof_predictions(dataset, work, ["tiled"])
    tiled = load_oof_tiles(predictions_dir(work, "tiled") / "oof_tiles.npz")
    n = len(tiled.fnames)
    whole = OOFTiles(tiled.fnames[::-1], tiled.folds[::-1], np.arange(n + 1),
                     np.random.default_rng(1).random((n, 6)).astype(np.float32), tile_frames=64)
    save_oof_tiles(predictions_dir(work, "whole") / "oof_tiles.npz", whole)
    for order in (["tiled", "whole"], ["whole", "tiled"]):
        stacked = stacked_oof(order, work)
        assert list(stacked.fnames) == list((tiled if order[0] == "tiled" else whole).fnames)
        assert stacked.probs.shape == (2 * n, 12) and np.diff(stacked.offsets).tolist() == [2] * n
        i = list(stacked.fnames).index(tiled.fnames[0])
        columns = slice(6, 12) if order[0] == "tiled" else slice(0, 6)
        np.testing.assert_array_equal(stacked.clip(i)[:, columns], np.repeat(whole.probs[-1:], 2, axis=0))


# -- the models -----------------------------------------------------------------------------------


def test_cnn14_has_the_released_models_parameter_count():
    counts = {name: sum(p.numel() for p in create_model(name, num_classes=527).parameters())
              for name in ("panns_cnn14", "panns_cnn10", "panns_cnn6")}
    assert counts == {"panns_cnn14": 80_753_615, "panns_cnn10": 5_219_279, "panns_cnn6": 4_837_455}


@pytest.mark.parametrize("name, frames", [("panns_cnn14", 32), ("panns_cnn10", 16), ("panns_cnn6", 16)])
def test_each_family_takes_the_network_input_and_returns_one_head(name, frames):
    model = create_model(name, num_classes=5, base_width=2, in_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, 64, frames))
    assert len(out) == model.output_heads == 1 and out[0].shape == (2, 5)


# -- import ------------------------------------------------------------------------------------------


def test_the_converter_reads_the_released_layout_and_refuses_a_misfit(released_file):
    path, state = released_file
    name, params, converted = convert_checkpoint(torch.load(path, weights_only=True))
    assert (name, params) == ("panns_cnn14", {"num_classes": 527, "n_mels": 64, "base_width": 4})
    assert not set(FRONT_END_KEYS) & set(converted)
    broken = {k: v for k, v in state.items() if k not in ("fc1.bias", "conv_block2.bn1.weight")}
    broken["fc1.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"do not fit panns_cnn14\(base_width=4, n_mels=64, num_classes=527\): "
                                              r"2 missing key\(s\) \(conv_block2\.bn1\.weight, fc1\.bias\); "
                                              r"1 unexpected key\(s\) \(fc1\.extra\)"):
        convert_checkpoint({"model": broken})
    # PANNs' 16 kHz models (n_fft 512) feed another front end: refused, not fed this one's input.
    other = released_state(sample_rate=16000, n_fft=512)
    with pytest.raises(CheckpointError, match=r"front end is not the 'panns' preset's \(spectrogram_extractor\.stft"
                                              r"\.conv_real\.weight is 257x1x512 against 513x1x1024 here\)"):
        convert_checkpoint({"model": other})
    with pytest.raises(CheckpointError, match="not a PANNs checkpoint: expected"):
        convert_checkpoint({"iteration": 3})


def test_import_weights_tags_a_file_as_the_original_model(released_file, clip_path, tmp_path):
    path, state = released_file
    experiments = tmp_path / "experiments"
    out = run_cli("import-weights", path, "--format", "panns", "--name", "as14", "--work", tmp_path / "work",
                  "--experiments", experiments).output
    assert "imported -> " in out and (experiments / "as14.toml").is_file()
    checkpoint = load_checkpoint(tmp_path / "work/experiments/as14/fold_0/model.pt")
    assert checkpoint["classes"][:2] == ["Speech", "Male speech, man speaking"] and len(checkpoint["classes"]) == 527
    assert checkpoint["network_input"] == {"freq_channel": False, "tile_frames": 32, "whole_clip": True}
    assert AudioConfig.from_dict(checkpoint["audio_config"]) == audio_preset("panns")

    tagger = Tagger.from_experiment(tmp_path / "work/experiments/as14")
    frame = tagger.predict_files([clip_path])
    y = read_audio(clip_path, audio_preset("panns"))
    expected = reference_probabilities(state, reference_log_mel(y))
    assert list(frame.columns) == checkpoint["classes"]
    np.testing.assert_allclose(frame.to_numpy()[0], expected, rtol=0, atol=1e-4)
    # The experiment file names the model, the preset and the whole-clip input.
    text = (experiments / "as14.toml").read_text()
    assert 'preset = "panns"' in text and "whole_clip = true" in text and 'name = "panns_cnn14"' in text

    bad = run_cli("import-weights", path, "--format", "pan", "--name", "x", "--work", tmp_path / "work",
                  "--experiments", experiments, expect=1).output
    assert bad.strip() == "error: unknown weights format 'pan'; formats are efficientat, panns"
    torch.save({"model": {"bn0.weight": torch.ones(3)}}, tmp_path / "odd.pth")
    bad = run_cli("import-weights", tmp_path / "odd.pth", "--format", "panns", "--name", "x", "--work",
                  tmp_path / "work", "--experiments", experiments, expect=1).output
    assert re.fullmatch(r"error: \S+odd\.pth: not a PANNs CNN14, CNN10 or CNN6 state dict \(0 conv blocks; first "
                        r"keys bn0\.weight\)", bad.strip()), bad


def test_a_file_without_front_end_weights_is_imported_with_a_warning_naming_it(released_file, tmp_path):
    path, state = released_file
    common = ("--format", "panns", "--work", tmp_path / "work", "--experiments", tmp_path / "experiments")
    released = run_cli("import-weights", path, "--name", "released", *common)
    assert released.stderr == ""  # its front end is checked, nothing to say
    resaved = tmp_path / "resaved.pth"  # a re-saved state dict: the network's weights only
    torch.save({"model": {k: v for k, v in state.items() if k not in FRONT_END_KEYS}}, resaved)
    result = run_cli("import-weights", resaved, "--name", "resaved", *common)
    assert result.stderr.splitlines() == [
        f"warning: {resaved}: the checkpoint lacks 3 of the 3 front-end weights ({', '.join(FRONT_END_KEYS)}), so its "
        "STFT and mel filterbank could not be verified; it is taken to be a 32 kHz PANNs model (a 16 kHz one would "
        "be fed wrong input)"]
    imported = load_checkpoint(tmp_path / "work/experiments/resaved/fold_0/model.pt")
    assert AudioConfig.from_dict(imported["audio_config"]) == audio_preset("panns")
    original = load_checkpoint(tmp_path / "work/experiments/released/fold_0/model.pt")["state_dict"]
    assert all(torch.equal(imported["state_dict"][key], value) for key, value in original.items())
    # One buffer gone: the others are still checked, the missing one is named.
    partial = {k: v for k, v in state.items() if k != FRONT_END_KEYS[2]}
    with pytest.warns(FreesoundWarning, match=r"lacks 1 of the 3 front-end weights \(logmel_extractor\.melW\)"):
        convert_checkpoint({"model": partial})


def test_a_file_saved_without_batch_norm_counters_converts_with_them_at_zero(released_file):
    _, state = released_file
    older = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    assert len(older) < len(state)
    _, _, converted = convert_checkpoint({"model": older})
    counters = [key for key in converted if key.endswith("num_batches_tracked")]
    assert counters and all(converted[key].item() == 0 for key in counters)
    assert all(torch.equal(converted[key], state[key]) for key in converted if key in older)


def test_whole_clip_input_pads_a_short_clip_to_the_tile_and_keeps_a_long_one():
    short = np.arange(64 * 20, dtype=np.float32).reshape(64, 20)
    image = whole_clip_input(short, 32)
    assert image.shape == (1, 3, 64, 32)
    np.testing.assert_array_equal(image[0, 0, :, 6:26], short / np.float32(100))  # 12 frames of padding, 6 left
    assert (image[0, 0, :, :6] == short.min()).all() and (image[0, 0, :, 26:] == short.min()).all()
    assert whole_clip_input(np.zeros((64, 500), np.float32), 32).shape == (1, 3, 64, 500)


@pytest.mark.skipif(not runtime_usable("onnxruntime"), reason="onnxruntime or onnx not installed (.venv-timm)")
def test_a_whole_clip_model_exported_to_onnx_agrees_with_torch_on_clips_of_any_length(released_file):
    _, state = released_file
    name, params, converted = convert_checkpoint({"model": state})
    model = create_model(name, **params).eval()
    model.load_state_dict(converted)
    rng = np.random.default_rng(0)
    logmels = [rng.uniform(-90, -10, (64, frames)).astype(np.float32) for frames in (40, 301, 77)]
    config = InputConfig(tile_frames=32, whole_clip=True)
    classes = [str(i) for i in range(527)]
    torch_probs = Tagger([model], classes, input_config=config).predict_spectrograms(logmels)
    onnx_tagger = Tagger([model], classes, input_config=config, runtime="onnxruntime")
    np.testing.assert_allclose(onnx_tagger.predict_spectrograms(logmels), torch_probs, rtol=0, atol=1e-5)
    assert len([key for key in onnx_tagger._inference_models if key[0] == "compiled"]) == 1  # one export


def test_a_fine_tuned_model_starts_from_the_released_file_with_a_new_head(released_file, tmp_path):
    path, state = released_file
    model = create_model("panns_cnn14", num_classes=6, base_width=4, pretrained=str(path))
    torch.testing.assert_close(model.state_dict()["conv_block3.conv2.weight"], state["conv_block3.conv2.weight"])
    assert model.fc_audioset.weight.shape == (6, 128)
    with pytest.raises(CheckpointError, match=r"is a panns_cnn14\(base_width=4, n_mels=64\), which does not fit this "
                                              r"panns_cnn14: \d+ key\(s\) of another shape"):
        create_model("panns_cnn14", num_classes=6, base_width=8, pretrained=str(path))


# -- the pipeline ----------------------------------------------------------------------------------


def panns_experiment_toml(weights: str) -> str:
    """A tiny CNN14 fine-tuned from ``weights`` on the PANNs front end, predicting whole clips."""
    return (tiny_experiment_toml("panns_cnn14", epoch_size=16, max_epochs=1).replace("base_size = 4", "base_width = 4")
            + f'\n[audio]\npreset = "panns"\n\n[input]\ntile_frames = 64\nwhole_clip = true\n\n'
              f'[pretrained]\nweights = "{weights}"\n')


@pytest.fixture(scope="module")
def fine_tuned(tiny_data, tmp_path_factory, released_file, one_torch_thread):
    """tiny_panns (fine-tuned from the released-format file on every fold) beside tiny_asa, stacked
    as an ensemble and predicted, both kernels built; then the released file is deleted."""
    dataset, base_work = tiny_data
    root = tmp_path_factory.mktemp("panns_pipeline")
    work = root / "work"
    shutil.copytree(base_work, work)
    experiments = root / "experiments"
    experiments.mkdir()
    shutil.copy(released_file[0], experiments / "start.pth")
    (experiments / "tiny_panns.toml").write_text(panns_experiment_toml("start.pth"))
    (experiments / "tiny_asa.toml").write_text(tiny_experiment_toml("aux_skip_attention", epoch_size=16, max_epochs=1))
    (experiments / "ens.toml").write_text(tiny_ensemble_toml(["tiny_panns", "tiny_asa"]))
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    run_cli("features", "--data", dataset.root, "--work", work, "--experiment", "tiny_panns",
            "--experiments", experiments)
    outputs = {name: run_cli("train", name, *common).output for name in ("tiny_panns", "tiny_asa")}
    outputs["stack"] = run_cli("stack", "ens", *common).output
    for name in ("ens", "tiny_panns"):
        run_cli("predict", name, *common, "--no-oof", "--runtime", "auto")
    run_cli("build-kernel", "--experiment", "tiny_panns", "--ensemble", "ens", "--work", work,
            "--experiments", experiments, "--out", root / "kernel")
    (experiments / "start.pth").unlink()
    return {"dataset": dataset, "work": work, "root": root, "outputs": outputs}


@pytest.mark.slow
def test_a_fine_tuned_panns_model_stacks_beside_the_method_and_its_kernel_equals_local(fine_tuned, tmp_path):
    import test_kernel
    from freesound.kaggle import COMPETITION

    work, outputs = fine_tuned["work"], fine_tuned["outputs"]
    assert re.search(r"OOF lwlrap \d\.\d{4}", outputs["tiny_panns"]), outputs["tiny_panns"]
    checkpoint = load_checkpoint(work / "experiments/tiny_panns/fold_0/model.pt")
    assert checkpoint["model_params"]["pretrained"].endswith("start.pth")  # a record only
    assert checkpoint["network_input"] == {"freq_channel": False, "tile_frames": 64, "whole_clip": True}
    assert checkpoint["audio_config"]["sample_rate"] == 32000
    assert load_model(work / "experiments/tiny_panns/fold_0/model.pt").fc_audioset.out_features == 6
    # One OOF probability per clip (whole clips) stacked beside the method's tiles.
    oof = np.load(work / "predictions/tiny_panns/oof_tiles.npz")
    assert (np.diff(oof["offsets"]) == 1).all()
    assert "blend" in outputs["stack"]

    root = tmp_path / "kaggle"  # the competition's test clips, the weights one level deeper
    shutil.copytree(fine_tuned["dataset"].root / "test", root / "input" / COMPETITION / "test")
    shutil.copy(fine_tuned["dataset"].root / "sample_submission.csv", root / "input" / COMPETITION)
    shutil.copytree(work / "experiments", root / "input/freesound-weights/experiments")
    (root / "working").mkdir()
    result = test_kernel.run_script(fine_tuned["root"] / "kernel" / "ensemble_kernel.py", root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    classes = list(fine_tuned["dataset"].classes)
    submission = pd.read_csv(root / "working/submission.csv").set_index("fname")
    expected = pd.read_csv(work / "predictions/ens/test.csv").set_index("fname")
    np.testing.assert_allclose(submission.loc[expected.index, classes].to_numpy(), expected[classes].to_numpy(),
                               rtol=0, atol=1e-5)
    # The single-experiment kernel: the fine-tuned model's folds alone, equal to local predict.
    (root / "working" / "submission.csv").unlink()
    result = test_kernel.run_script(fine_tuned["root"] / "kernel" / "kernel.py", root, tmp_path / "tmp1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = pd.read_csv(root / "working/submission.csv").set_index("fname")
    expected = pd.read_csv(work / "predictions/tiny_panns/test.csv").set_index("fname")
    np.testing.assert_allclose(submission.loc[expected.index, classes].to_numpy(), expected[classes].to_numpy(),
                               rtol=0, atol=1e-5)
