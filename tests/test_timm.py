"""timm backbones as first-level models (``[model] name = "timm"``), their heads and pretrained
weights from files. Every test needs timm (``pip install 'freesound[timm]'``; the suite's second
environment): without it the module is skipped.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from conftest import REPO  # noqa: E402
from freesound.config import ConfigError, experiment_from_dict, load_experiment  # noqa: E402
from freesound.errors import FreesoundError  # noqa: E402
from freesound.models import CheckpointError, create_model, load_checkpoint, load_model  # noqa: E402
from freesound.models.timm_family import TimmModel  # noqa: E402
from freesound.training.fold_parts import check_experiment, model_params  # noqa: E402

pytestmark = [pytest.mark.timm, pytest.mark.filterwarnings("ignore::FutureWarning")]

#: timm's tiny test networks (about 0.1M parameters): fast enough to train in a test.
TINY = "test_efficientnet"
TIMM_TINY = {
    "model": {"name": "timm", "params": {"backbone": TINY, "head": "sed"}, "aux_weights": [1.0]},
    "train": {"batch_size": 8, "epoch_size": 16, "max_epochs": 1, "workers": 0, "lr": 3e-3},
    "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3},
}


def tiny_model(head="pooled", **params):
    torch.manual_seed(0)
    return create_model("timm", num_classes=5, backbone=TINY, head=head, **params).eval()


# -- the family -------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["pooled", "sed"])
@pytest.mark.parametrize("in_channels", [3, 4])
def test_a_timm_backbone_returns_the_clip_logits_first_and_frames_on_request(head, in_channels):
    model = tiny_model(head, in_channels=in_channels)
    x = torch.randn(2, in_channels, 64, 128)
    with torch.no_grad():
        out = model(x)
        framewise = model.framewise(x)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (2, 5)
    assert model.backbone.conv_stem.weight.shape[1] == in_channels
    assert framewise.shape == (2, 128 // 32, 5)  # the backbone's stride is 32
    if head == "pooled":  # the frame logits average to the clip logits
        torch.testing.assert_close(framewise.mean(1), out[0], atol=1e-5, rtol=1e-5)
    else:  # the clip logits are a weighted mean of the frame logits
        assert torch.all(out[0] >= framewise.amin(1) - 1e-5) and torch.all(out[0] <= framewise.amax(1) + 1e-5)


@pytest.mark.slow
def test_efficientnet_b0_on_the_network_input():
    model = create_model("timm", num_classes=80, backbone="efficientnet_b0").eval()
    assert model.backbone.num_features == 1280
    assert sum(p.numel() for p in model.parameters()) == 4_007_548 + 1280 * 80 + 80
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64))[0].shape == (2, 80)


def test_drop_path_where_the_backbone_has_it():
    from timm.layers import DropPath

    rates = [m.drop_prob for m in tiny_model(drop_path=0.2).modules() if isinstance(m, DropPath)]
    assert rates and max(rates) > 0
    assert not [m for m in tiny_model().modules() if isinstance(m, DropPath) and m.drop_prob > 0]
    with pytest.raises(ValueError, match="timm backbone 'vgg11' has no stochastic depth; leave drop_path at 0"):
        create_model("timm", num_classes=5, backbone="vgg11", drop_path=0.1)


def test_bad_backbones_and_heads_are_named():
    with pytest.raises(ValueError, match=r"unknown timm backbone 'efficentnet_b0'; did you mean efficientnet_b0"):
        create_model("timm", num_classes=5, backbone="efficentnet_b0")
    with pytest.raises(ValueError, match="unknown head 'max'; choose one of pooled, sed"):
        create_model("timm", num_classes=5, backbone=TINY, head="max")
    with pytest.raises(ValueError, match=r"timm backbone 'test_vit' gives \(1, \d+, \d+\) for "
                                         r"features, not a \(B, \d+, F, T\) map; the timm model takes CNN backbones"):
        create_model("timm", num_classes=5, backbone="test_vit")


def test_the_experiment_names_one_loss_weight_for_the_one_head():
    good = experiment_from_dict(TIMM_TINY, name="t")
    check_experiment(good, 6)
    bad = dataclasses.replace(good, model=dataclasses.replace(good.model, aux_weights=(1.0, 0.4, 0.2, 0.1)))
    with pytest.raises(ConfigError, match=r"experiment 't': \[model\] aux_weights has 4 weight\(s\) \[1\.0, 0\.4, "
                                          r"0\.2, 0\.1\] but the timm model returns 1 head\(s\); set aux_weights = \[1\.0\]"):
        check_experiment(bad, 6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm_efficientnet_b0", "timm_efficientnet_b0_sed"])
def test_the_shipped_timm_experiments_build(name):
    experiment = load_experiment(name, REPO / "experiments")
    check_experiment(experiment, 80)
    model = create_model("timm", **model_params(experiment, 80))
    assert model.backbone_name == "efficientnet_b0"
    assert type(model.head).__name__ == ("SEDHead" if name.endswith("sed") else "PooledHead")


# -- pretrained weights from files --------------------------------------------------------------


def source_backbone(name=TINY, seed=1):
    """A timm network with its classifier (1000 classes) and random weights, as a file would hold."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False)


def save_weights(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("form", ["pth", "safetensors", "timm_checkpoint"])
@pytest.mark.parametrize("in_channels", [3, 4])
def test_pretrained_weights_load_with_the_first_conv_adapted_and_a_new_head(tmp_path, form, in_channels):
    from timm.models import adapt_input_conv

    saved = source_backbone().state_dict()
    if form == "timm_checkpoint":  # what timm's train.py writes
        path = save_weights({"state_dict": {f"module.{k}": v for k, v in saved.items()}, "epoch": 3,
                             "arch": TINY}, tmp_path / "checkpoint.pth.tar")
    else:
        path = save_weights(saved, tmp_path / f"weights.{form}")
    torch.manual_seed(2)
    model = create_model("timm", num_classes=7, backbone=TINY, pretrained=str(path), in_channels=in_channels)
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(saved) - {"classifier.weight", "classifier.bias"}
    for key, value in loaded.items():
        expected = adapt_input_conv(in_channels, saved[key]) if key == "conv_stem.weight" else saved[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    assert loaded["conv_stem.weight"].shape[1] == in_channels
    # The classifier is the head's own, for 7 classes, not the file's 1000.
    assert model.head.fc.weight.shape == (7, model.backbone.num_features)


def test_a_timm_checkpoint_gives_its_ema_weights(tmp_path):
    plain, ema = source_backbone(seed=1).state_dict(), source_backbone(seed=2).state_dict()
    path = save_weights({"state_dict": plain, "state_dict_ema": ema}, tmp_path / "checkpoint.pth.tar")
    model = create_model("timm", num_classes=3, backbone=TINY, pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv_stem.weight, ema["conv_stem.weight"], rtol=0, atol=0)


def test_a_missing_unreadable_or_foreign_weights_file_is_one_sentence(tmp_path):
    with pytest.raises(CheckpointError) as info:
        create_model("timm", num_classes=3, backbone=TINY, pretrained=str(tmp_path / "nope.pth"))
    assert str(info.value) == f"pretrained weights file {tmp_path / 'nope.pth'} for timm backbone '{TINY}' not found"

    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match=rf"pretrained weights file {text} is not a readable state dict"):
        create_model("timm", num_classes=3, backbone=TINY, pretrained=str(text))

    resnet = save_weights(source_backbone("test_resnet").state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError) as info:
        create_model("timm", num_classes=3, backbone=TINY, pretrained=str(resnet))
    message = str(info.value)
    assert message.startswith(f"pretrained weights file {resnet} does not fit timm backbone '{TINY}' (weights of "
                              f"another architecture?): ")
    assert re.search(r": \d+ missing key\(s\) \(conv_stem\.weight, blocks\.0\.0\.conv\.weight, blocks\.0\.0\.bn1\."
                     r"weight, \.\.\.\); \d+ unexpected key\(s\) \(conv1\.0\.weight, conv1\.1\.bias, conv1\.1\."
                     r"num_batches_tracked, \.\.\.\); 4 key\(s\) of another shape \(bn1\.weight 32 in the file "
                     r"against 24 here, ", message), message
    assert "\n" not in message

    # A file of the same architecture with one tensor of another shape names it.
    saved = source_backbone().state_dict()
    saved["bn1.weight"] = saved["bn1.weight"][:-1]
    misshapen = save_weights(saved, tmp_path / "misshapen.pth")
    with pytest.raises(CheckpointError, match=r": 1 key\(s\) of another shape \(bn1\.weight 23 in the file against 24 here\)$"):
        create_model("timm", num_classes=3, backbone=TINY, pretrained=str(misshapen))


def test_pretrained_true_offline_says_how_to_pass_a_file(tmp_path, monkeypatch):
    """Never a download in a test: the hub is switched off (HF_HUB_OFFLINE) with an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    try:
        import huggingface_hub.constants as hub_constants

        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    except ImportError:
        pass
    with pytest.raises(FreesoundError) as info:
        create_model("timm", num_classes=3, backbone="efficientnet_b0", pretrained=True)
    message = str(info.value)
    assert message.startswith("pretrained = true fetches the weights of 'efficientnet_b0' from the Hugging Face hub, "
                              "which failed here (")
    assert message.endswith("download them elsewhere and pass the file: "
                            "pretrained = \"path/to/efficientnet_b0.safetensors\"")


def test_a_relative_pretrained_path_is_the_experiment_files_folders(tmp_path):
    folder = tmp_path / "exps"
    experiment = experiment_from_dict({"model": {"name": "timm", "params": {"backbone": TINY,
                                                                              "pretrained": "weights/b.pth"}}},
                                      name="x", source_dir=str(folder))
    assert model_params(experiment, 3)["pretrained"] == str(folder / "weights" / "b.pth")
    with pytest.raises(ConfigError, match=rf"experiment 'x': pretrained weights file {folder / 'weights' / 'b.pth'}"
                                          rf" for timm backbone '{TINY}' not found"):
        check_experiment(dataclasses.replace(experiment, model=dataclasses.replace(experiment.model,
                                                                                    aux_weights=(1.0,))), 3)




# -- through the pipeline: train, load without the pretrained file, ONNX, distill, search -------


CLASSES = [f"c{i}" for i in range(6)]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory, one_torch_thread):
    """A tiny timm SED experiment started from a weights file, and a tiny AuxSkipAttention, both
    trained on every fold and predicted out of fold (teachers for ``distill``), in a private work
    copy; the weights file is deleted once trained."""
    import shutil

    from freesound.training.oof import predict_oof
    from freesound.training.trainer import train_experiment

    dataset, work = tiny_data
    root = tmp_path_factory.mktemp("timm")
    copy = root / "work"
    shutil.copytree(work, copy)
    (root / "experiments").mkdir()
    weights = save_weights(source_backbone().state_dict(), root / "experiments" / "start.safetensors")
    params = {**TIMM_TINY["model"]["params"], "pretrained": "start.safetensors"}
    timmy = experiment_from_dict({**TIMM_TINY, "model": {**TIMM_TINY["model"], "params": params}}, name="timmy",
                                 source_dir=str(root / "experiments"))
    auxy = experiment_from_dict({**TIMM_TINY, "model": {"name": "aux_skip_attention",
                                                        "params": {"base_size": 2, "ratio": 2}}}, name="auxy")
    for experiment in (timmy, auxy):
        train_experiment(experiment, dataset, copy, progress=False, log=lambda line: None)
        predict_oof(experiment.name, dataset, copy, progress=False, log=lambda line: None)
    weights.unlink()
    return dataset, copy, weights, {"timmy": timmy, "auxy": auxy}


@pytest.mark.slow
def test_a_trained_timm_model_loads_and_predicts_without_its_pretrained_file(trained):
    from freesound.data.features import load_features
    from freesound.paths import checkpoint_path
    from freesound.predict import Tagger

    dataset, work, weights, _ = trained
    assert not weights.exists()
    path = checkpoint_path(work, "timmy", 0)
    saved = load_checkpoint(path)
    assert saved["model_name"] == "timm" and saved["model_params"]["pretrained"] == str(weights)  # a record
    model = load_model(path)
    assert isinstance(model, TimmModel) and type(model.head).__name__ == "SEDHead"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][key], rtol=0, atol=0)
    tagger = Tagger.from_experiment(work / "experiments" / "timmy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs unfused": the model traces for batch-norm folding
        probs = tagger.predict_spectrograms(load_features(dataset, work, "train_curated", dataset.curated.fname[:4]))
    assert probs.shape == (4, 6) and np.all((probs > 0) & (probs < 1))


def test_onnx_export_agrees_with_torch_for_timm_models_and_the_sed_head():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from freesound.predict import Tagger

    rng = np.random.default_rng(0)
    logmels = [rng.uniform(-80, 0, (128, width)).astype(np.float32) for width in (40, 300, 700)]
    models = [create_model("timm", num_classes=6, backbone=TINY, head=head).eval() for head in ("sed", "pooled")]
    torch_probs = Tagger(models, CLASSES, runtime="torch", batch_size=8).predict_spectrograms(logmels)
    tagger = Tagger(models, CLASSES, runtime="onnxruntime", batch_size=8)
    probs = tagger.predict_spectrograms(logmels)
    assert tagger.runtime == "onnxruntime" and probs.shape == (3, 6)
    np.testing.assert_allclose(probs, torch_probs, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("teacher, student_model", [
    ("auxy", {"name": "timm", "params": {"backbone": TINY, "head": "sed"}, "aux_weights": [1.0]}),
    ("timmy", {"name": "aux_skip_attention", "params": {"base_size": 2, "ratio": 2}}),
])
def test_distill_between_timm_and_aux_skip_attention(trained, teacher, student_model):
    from freesound.paths import checkpoint_path, predictions_dir
    from freesound.tools.distill import distill
    from freesound.training.teacher import NOISY_CACHE

    dataset, work, _, _ = trained
    student = experiment_from_dict({**TIMM_TINY, "model": student_model, "targets": {"weight": 0.7}},
                                   name=f"pupil_of_{teacher}")
    report = distill(teacher, student, dataset, work, folds=[0], experiments_dir=work / "none")
    saved = load_checkpoint(checkpoint_path(work, student.name, 0))
    assert saved["model_name"] == student_model["name"]
    assert report.student.targets.teacher == teacher and report.student.targets.weight == 0.7
    assert (predictions_dir(work, teacher) / NOISY_CACHE).is_file()
    config = (work / "experiments" / student.name / "fold_0" / "config.toml").read_text()
    assert f'teacher = "{teacher}"' in config


def test_the_backbone_is_searchable(tmp_path):
    import tomllib

    from freesound.tools.search import ExperimentTarget, SearchSpaceError, parse_space

    target = ExperimentTarget(experiment_from_dict(TIMM_TINY, name="t"))
    space = parse_space(tomllib.loads('"model.params.backbone" = { choice = ["test_efficientnet", "test_resnet"] }\n'
                                      '"model.params.head" = { choice = ["pooled", "sed"] }\n'), target)
    assert space.params["model.params.backbone"].kind == "choice"
    trial = target.config({"model.params.backbone": "test_resnet", "model.params.head": "pooled"}, "t-trial0")
    assert trial.model.params == {"backbone": "test_resnet", "head": "pooled"}
    with pytest.raises(SearchSpaceError, match=r"'model.params.backbone' = 'resnet5': .*unknown timm backbone 'resnet5'"):
        parse_space({"model.params.backbone": {"choice": ["test_resnet", "resnet5"]}}, target)


@pytest.mark.slow
def test_a_search_over_backbones_trains_each_and_writes_the_best(tiny_work, tmp_path, one_torch_thread):
    import tomllib

    from conftest import run_cli

    dataset, work = tiny_work
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tt.toml").write_text(f"""
[model]
name = "timm"
params = {{ backbone = "{TINY}", head = "sed" }}
aux_weights = [1.0]

[train]
batch_size = 8
epoch_size = 16
max_epochs = 1
workers = 0
""")
    (experiments / "space.toml").write_text('"model.params.backbone" = { choice = ["test_efficientnet", "test_resnet"] }\n')
    result = run_cli("search", "tt", "--data", dataset.root, "--work", work, "--experiments", experiments,
                     "--device", "cpu", "--trials", "2", "--fold", "0", "--sampler", "grid", "--no-prune",
                     "--space", experiments / "space.toml")
    assert "best of 2 trials" in result.output
    trained = {load_checkpoint(work / "experiments" / f"tt-trial{i}" / "fold_0" / "model.pt")["model_params"]["backbone"]
               for i in range(2)}
    assert trained == {"test_efficientnet", "test_resnet"}
    best = tomllib.loads((experiments / "tt-best.toml").read_text())
    assert best["model"]["name"] == "timm" and best["model"]["params"]["backbone"] in trained
