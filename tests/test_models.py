"""The model registry, the architectures' exact shapes, and the checkpoint format."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from freesound.models import (
    CheckpointError,
    create_model,
    list_models,
    load_checkpoint,
    load_model,
    register_model,
    save_checkpoint,
)
from freesound.models.aux_skip_attention import AuxSkipAttention
from freesound.models.fcnet import FCNet

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "argus_checkpoint_format.md"
#: The same format for tiny configurations, written by tests/data/make_fixtures.py (runs everywhere).
TINY_LISTING = Path(__file__).resolve().parent / "data" / "argus_keys_tiny.md"

FULL_AUX_SKIP_ATTENTION = dict(
    num_classes=80, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8, last_fc=4
)
FULL_FCNET = dict(in_channels=560, num_classes=80, base_size=512, reduction_scale=1)
SMALL_AUX = dict(num_classes=10, base_size=8, dropout=0.2, ratio=4, kernel_size=7, last_filters=8, last_fc=2)


def make_fixtures():
    """tests/data/make_fixtures.py as a module."""
    spec = importlib.util.spec_from_file_location("make_fixtures", TINY_LISTING.parent / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_listings(path=REFERENCE) -> dict[str, tuple[dict, list[tuple[str, tuple[int, ...]]]]]:
    """Architecture name -> (kwargs from the section title, [(key, shape), ...]) from a listing in
    the format of the original's ``argus_checkpoint_format.md``."""
    if not path.is_file():
        pytest.skip(f"the original state-dict listing {path} is not available in this checkout")
    return parse_listings(path.read_text())


def parse_listings(text: str) -> dict:
    sections = re.findall(r"^## (\w+)\(([^)]*)\)\s*\n+```\n(.*?)```", text, re.M | re.S)
    listings = {}
    for arch, args, body in sections:
        kwargs = {k: (float(v) if "." in v else int(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", args)}
        keys = []
        for line in body.strip().splitlines():
            key, shape = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip()).groups()
            keys.append((key, tuple(int(n) for n in shape.replace(",", " ").split())))
        listings[arch] = (kwargs, keys)
    return listings


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- exact architecture -------------------------------------------------------------------------


def test_aux_skip_attention_full_config_parameter_count():
    assert n_parameters(create_model("aux_skip_attention", **FULL_AUX_SKIP_ATTENTION)) == 17_326_950


def test_fcnet_full_config_parameter_count():
    assert n_parameters(create_model("fcnet", **FULL_FCNET)) == 1_768_626


@pytest.mark.parametrize("arch", ["AuxSkipAttention", "FCNet"])
def test_state_dict_keys_and_shapes_equal_the_original(arch):
    listings = reference_listings()
    assert arch in listings, f"no {arch} listing found in {REFERENCE}"
    kwargs, expected = listings[arch]
    model = create_model(arch, **kwargs)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected


@pytest.mark.parametrize("arch", ["AuxSkipAttention", "FCNet"])
def test_state_dict_keys_and_shapes_equal_the_original_in_tiny_configurations(arch):
    """The same check on the shipped fixture (the original's naming for tiny configurations), so
    a renamed module fails in every checkout, with or without the reference file."""
    kwargs, expected = parse_listings(TINY_LISTING.read_text())[arch]
    assert len(expected) == {"AuxSkipAttention": 115, "FCNet": 12}[arch]
    model = create_model(arch, **kwargs)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected


def test_fixtures_are_what_their_script_writes():
    for name, text in make_fixtures().fixtures().items():
        assert (TINY_LISTING.parent / name).read_text() == text, f"rerun tests/data/make_fixtures.py ({name})"


def test_fixture_key_generator_reproduces_the_original_listing():
    """The fixture's generator, given the full configurations, writes the reference file's listing
    exactly: the tiny fixture follows the original's naming."""
    listings = reference_listings()
    generator = make_fixtures()
    for arch, (kwargs, expected) in listings.items():
        assert generator.original_keys(arch, kwargs) == expected, arch


def test_aliases_build_the_same_classes():
    assert isinstance(create_model("AuxSkipAttention", **SMALL_AUX), AuxSkipAttention)
    assert isinstance(create_model("FCNet", in_channels=20, num_classes=10), FCNet)


def test_conv_blocks_start_kaiming_normal_and_batch_norm_at_identity():
    model = create_model("aux_skip_attention", **SMALL_AUX)
    bn = model.conv2.conv1[1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # Kaiming normal (fan_in, gain sqrt(2)): std sqrt(2 / fan_in); 8*16*9 weights is plenty to tell.
    weight = model.conv3.conv1[0].weight
    fan_in = weight[0].numel()
    assert weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)


# --- forward --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 128, 256), (3, 3, 128, 16), (2, 3, 64, 100)])
def test_aux_skip_attention_returns_four_heads(shape):
    model = create_model("aux_skip_attention", **SMALL_AUX).eval()
    with torch.no_grad():
        outputs = model(torch.randn(shape))
    assert isinstance(outputs, tuple) and len(outputs) == 4
    assert all(out.shape == (shape[0], 10) for out in outputs)


def test_simple_cnn_returns_a_one_tuple():
    model = create_model("simple_cnn", num_classes=7, base_size=8).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 128, 64))
    assert isinstance(outputs, tuple) and len(outputs) == 1 and outputs[0].shape == (2, 7)


def test_fcnet_returns_a_tensor():
    model = create_model("fcnet", in_channels=40, num_classes=10, base_size=16).eval()
    with torch.no_grad():
        out = model(torch.rand(5, 40))
    assert isinstance(out, torch.Tensor) and out.shape == (5, 10)


@pytest.mark.parametrize(
    "name, params, shape",
    [
        ("aux_skip_attention", SMALL_AUX, (2, 3, 128, 64)),
        ("simple_cnn", dict(num_classes=10, base_size=8), (2, 3, 128, 64)),
        ("fcnet", dict(in_channels=40, num_classes=10, base_size=16), (2, 40)),
    ],
)
def test_eval_mode_is_deterministic(name, params, shape):
    torch.manual_seed(0)
    model = create_model(name, **params).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        first, second = model(x), model(x)
    for a, b in zip(_as_tuple(first), _as_tuple(second)):
        assert torch.equal(a, b)


def test_train_mode_runs_backward_through_every_head():
    model = create_model("aux_skip_attention", **SMALL_AUX).train()
    loss = sum(out.sum() for out in model(torch.randn(2, 3, 64, 64)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


# --- registry -------------------------------------------------------------------------------------


def test_list_models():
    assert list_models() == ["aux_skip_attention", "efficientat_mn", "fcnet", "panns_cnn10", "panns_cnn14", "panns_cnn6",
                             "simple_cnn", "timm"]
    assert {"AuxSkipAttention", "FCNet"} <= set(list_models(aliases=True))


def test_unknown_model_lists_the_registered_names():
    with pytest.raises(KeyError) as info:
        create_model("resnet50", num_classes=3)
    for name in list_models():
        assert name in str(info.value)


def test_bad_params_are_named():
    with pytest.raises(TypeError, match="base_szie") as info:
        create_model("aux_skip_attention", num_classes=3, base_szie=8, nonsense=1)
    assert "nonsense" in str(info.value)
    with pytest.raises(TypeError, match="num_classes"):
        create_model("fcnet", in_channels=8)


def test_a_name_cannot_be_taken_twice():
    class Impostor(nn.Module):
        pass

    before = list_models(aliases=True)
    with pytest.raises(ValueError, match="fcnet"):
        register_model("brand_new_name", aliases=("fcnet",))(Impostor)
    assert list_models(aliases=True) == before


# --- checkpoints ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    sample_rate: int = 44100
    n_mels: int = 128


def _trained_small_model():
    torch.manual_seed(1)
    model = create_model("aux_skip_attention", **SMALL_AUX)
    # Move the batch-norm statistics off their defaults so that a lost buffer would show.
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    return model.eval()


def test_save_load_roundtrip_gives_identical_outputs(tmp_path):
    model = _trained_small_model()
    classes = [f"class_{i}" for i in range(10)]
    path = save_checkpoint(
        tmp_path / "fold_0" / "model.pt",
        model,
        model_name="AuxSkipAttention",
        model_params=SMALL_AUX,
        classes=classes,
        audio_config=_Config(),
        epoch=12,
        score=0.75,
    )
    loaded = load_model(path)
    assert not loaded.training
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)

    raw = torch.load(path, weights_only=True)
    assert raw["model_name"] == "aux_skip_attention"  # aliases are stored by their canonical name
    assert raw["model_params"] == SMALL_AUX
    assert raw["classes"] == classes
    assert raw["audio_config"] == {"sample_rate": 44100, "n_mels": 128}
    assert (raw["epoch"], raw["score"]) == (12, 0.75)
    assert raw.keys() == load_checkpoint(path).keys()


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path, monkeypatch):
    model = create_model("fcnet", in_channels=20, num_classes=10, base_size=8)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, model_name="fcnet", model_params={}, classes=[], audio_config={}, tag="old")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]

    def interrupted(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, model_name="fcnet", model_params={}, classes=[], audio_config={}, tag="new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert load_checkpoint(path)["tag"] == "old"


def test_save_refuses_values_weights_only_cannot_read(tmp_path):
    model = create_model("fcnet", in_channels=20, num_classes=10, base_size=8)
    with pytest.raises(TypeError, match="Path"):
        save_checkpoint(
            tmp_path / "model.pt", model, model_name="fcnet", model_params={}, classes=[], audio_config={"d": Path()}
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_and_bad_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_model(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_model(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt.*model_name"):
        load_checkpoint(foreign)


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    model = create_model("fcnet", in_channels=20, num_classes=10, base_size=8)
    path = save_checkpoint(
        tmp_path / "model.pt",
        model,
        model_name="fcnet",
        model_params=dict(in_channels=20, num_classes=10, base_size=16),  # not what was saved
        classes=[],
        audio_config={},
    )
    with pytest.raises(CheckpointError, match=r"(?s)model\.pt.*linear1\.weight"):
        load_model(path)


# --- heads (freesound.models.heads) and the timm family without timm ---------------------------


def test_the_timm_model_without_timm_is_one_sentence(monkeypatch):
    import sys

    from freesound.errors import FreesoundError

    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, installed or not
    with pytest.raises(FreesoundError) as info:
        create_model("timm", num_classes=3, backbone="efficientnet_b0")
    assert str(info.value) == "the timm model needs timm: pip install 'freesound[timm]'"


def sed_by_hand(head, features):
    """The SED head's clip logits from its weights, written out: mean over mel bands, 3-frame max +
    average smoothing, ReLU(1x1 conv), then the softmax over frames of tanh(attention conv) weighting
    the frame logits (eval mode: no dropout)."""
    import torch.nn.functional as F

    x = features.mean(2)
    x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
    x = torch.relu(torch.einsum("oc,bct->bot", head.fc.weight[..., 0], x) + head.fc.bias[:, None])
    frames = torch.einsum("kc,bct->bkt", head.classifier.weight[..., 0], x) + head.classifier.bias[:, None]
    scores = torch.tanh(torch.einsum("kc,bct->bkt", head.attention.weight[..., 0], x) + head.attention.bias[:, None])
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    return (frames * weights).sum(-1), frames, weights


def test_aux_skip_attention_with_the_sed_head():
    torch.manual_seed(0)
    model = create_model("aux_skip_attention", **SMALL_AUX, head="sed").eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        out = model(x)
        features = model._features(x)[0]  # the merged map (B, 8b, 64/16, 128/16)
        clip, frames, weights = sed_by_hand(model.fc, features)
        framewise = model.framewise(x)
    assert len(out) == 4 and all(o.shape == (2, 10) for o in out)
    assert features.shape == (2, 64, 4, 8) and framewise.shape == (2, 8, 10)
    torch.testing.assert_close(out[0], clip, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(framewise, frames.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 10))
    # The clip logits lie between the smallest and largest frame logits of their class.
    assert torch.all(out[0] >= framewise.amin(1) - 1e-5) and torch.all(out[0] <= framewise.amax(1) + 1e-5)
    # SED head: a C -> C frame projection, then attention and classifier convs C -> K.
    sed = sum(p.numel() for p in model.fc.parameters())
    assert sed == (64 * 64 + 64) + 2 * (64 * 10 + 10)
    assert [key for key in model.state_dict() if key.startswith("fc.")] == [
        "fc.fc.weight", "fc.fc.bias", "fc.attention.weight", "fc.attention.bias", "fc.classifier.weight",
        "fc.classifier.bias"]


def test_aux_skip_attention_with_the_pooled_head():
    torch.manual_seed(0)
    model = create_model("aux_skip_attention", **SMALL_AUX, head="pooled").eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        main, *aux = model(x)
        features = model._features(x)[0]
        framewise = model.framewise(x)
    torch.testing.assert_close(main, features.mean((2, 3)) @ model.fc.fc.weight.T + model.fc.fc.bias)
    # The frame logits average to the clip logits (the mean commutes with the linear layer).
    assert framewise.shape == (2, 8, 10)
    torch.testing.assert_close(framewise.mean(1), main, atol=1e-5, rtol=1e-5)
    assert len(aux) == 3 and sum(p.numel() for p in model.fc.parameters()) == 64 * 10 + 10


def test_the_methods_head_stays_the_default_and_has_no_frames():
    torch.manual_seed(0)
    default = create_model("aux_skip_attention", **SMALL_AUX).eval()
    torch.manual_seed(0)
    named = create_model("aux_skip_attention", **SMALL_AUX, head="mlp").eval()
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(default(x), named(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'the method\'s head \(head = "mlp"\) has no frame-wise output'):
        default.framewise(x)
    with pytest.raises(ValueError, match="unknown head 'attention'; choose one of mlp, pooled, sed"):
        create_model("aux_skip_attention", **SMALL_AUX, head="attention")


def test_load_model_never_reads_a_pretrained_file(tmp_path):
    """A checkpoint keeps its ``pretrained`` parameter as a record; the rebuild leaves it out."""
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, base_size=4).eval()
    path = save_checkpoint(tmp_path / "model.pt", model, model_name="simple_cnn",
                           model_params={"num_classes": 3, "base_size": 4, "pretrained": str(tmp_path / "gone.pth")},
                           classes=["a", "b", "c"], audio_config={})
    assert load_checkpoint(path)["model_params"]["pretrained"] == str(tmp_path / "gone.pth")
    loaded = load_model(path)  # simple_cnn has no `pretrained` parameter: it must not reach it
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
