"""Importing the original team's argus checkpoints: best-file choice, exact outputs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from freesound.data.dataset import FSD2019_CLASSES
from freesound.models import create_model, load_checkpoint, load_model
from freesound.tools.argus_import import ArgusImportError, import_argus

AUX_KWARGS = dict(num_classes=80, base_size=8, dropout=0.4, ratio=4, kernel_size=7, last_filters=8, last_fc=4)
FCNET_KWARGS = dict(in_channels=160, num_classes=80, base_size=32, reduction_scale=2, p_dropout=0.17)


def random_model(arch: str, kwargs: dict, seed: int) -> nn.Module:
    """A model whose every weight and batch-norm statistic is random, so each one matters."""
    torch.manual_seed(seed)
    model = create_model(arch, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
            else:
                for param in module.parameters(recurse=False):
                    param.normal_(0.0, 0.1)
    return model.eval()


def argus_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` as apex O2 stored it: float16 except batch norm."""
    batch_norm = {name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return {
        key: value.clone() if key.rpartition(".")[0] in batch_norm else value.half()
        for key, value in model.state_dict().items()
    }


def write_argus_checkpoint(path, arch: str, kwargs: dict, state_dict: dict) -> None:
    """A file laid out like the pytorch-argus files the winners released."""
    params = {"nn_module": (arch, dict(kwargs)), "loss": ("BCEWithLogitsLoss", {}), "device": "cuda"}
    params["optimizer"] = ("Adam", {"lr": 0.0009})
    if arch == "FCNet":
        model_name = "StackingModel"
    else:
        model_name = "FreesoundModel"
        params["aux"] = {"weights": [1.0, 0.4, 0.2, 0.1]}
        params["amp"] = {"opt_level": "O2", "keep_batchnorm_fp32": True, "loss_scale": "dynamic"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_name": model_name, "params": params, "nn_state_dict": state_dict}, path)


def fp16_rounded(model: nn.Module) -> nn.Module:
    """The source model evaluated with the weights the argus file actually holds."""
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in argus_state_dict(model).items()})
    return model.eval()


def make_experiment(root, arch, kwargs, scores_per_fold):
    """Write ``fold_<k>/model-<epoch>-<score>.pth`` files; return the best model of each fold."""
    best = {}
    for fold, scores in enumerate(scores_per_fold):
        for seed, (epoch, score) in enumerate(scores):
            model = random_model(arch, kwargs, seed=100 * fold + seed)
            write_argus_checkpoint(
                root / f"fold_{fold}" / f"model-{epoch:03d}-{score:.6f}.pth", arch, kwargs, argus_state_dict(model)
            )
            if fold not in best or score > best[fold][1]:
                best[fold] = (epoch, score, model)
    return best


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def test_import_first_level_experiment(tmp_path):
    src = tmp_path / "corr_noisy_007"
    scores = [[(3, 0.51), (17, 0.812345), (21, 0.79)], [(40, 0.83), (9, 0.6)]]
    best = make_experiment(src, "AuxSkipAttention", AUX_KWARGS, scores)

    written = import_argus(src, "argus_asa", tmp_path / "work")

    out_dir = tmp_path / "work" / "experiments" / "argus_asa"
    assert written == [out_dir / "fold_0" / "model.pt", out_dir / "fold_1" / "model.pt"]
    x = torch.randn(3, 3, 128, 256)
    for fold, path in enumerate(written):
        imported = load_model(path)
        assert not imported.training
        reference = fp16_rounded(best[fold][2])
        with torch.no_grad():
            expected, got = reference(x), imported(x)
        assert len(got) == 4
        for e, g in zip(expected, got):
            assert torch.allclose(e, g, rtol=0, atol=1e-5)
        assert all(v.dtype in (torch.float32, torch.int64) for v in imported.state_dict().values())

        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["model_name"] == "aux_skip_attention"
        assert checkpoint["model_params"] == AUX_KWARGS
        assert checkpoint["classes"] == list(FSD2019_CLASSES)
        assert checkpoint["audio_config"] == {}

    provenance = json.loads((out_dir / "imported.json").read_text())
    assert provenance["arch"] == "AuxSkipAttention"
    assert provenance["kwargs"] == AUX_KWARGS
    assert provenance["argus_model_name"] == "FreesoundModel"
    chosen = [(f["fold"], f["epoch"], f["score"]) for f in provenance["folds"]]
    assert chosen == [(0, 17, 0.812345), (1, 40, 0.83)]
    assert provenance["folds"][0]["file"].endswith("fold_0/model-017-0.812345.pth")
    assert len(provenance["folds"][0]["sha256"]) == 64


def test_import_passes_classes_and_audio_config(tmp_path):
    kwargs = dict(AUX_KWARGS, num_classes=3)
    make_experiment(tmp_path / "src", "AuxSkipAttention", kwargs, [[(1, 0.5)]])
    classes = ["a", "b", "c"]
    [path] = import_argus(tmp_path / "src", "x", tmp_path / "work", classes=classes, audio_config={"n_mels": 128})
    checkpoint = load_checkpoint(path)
    assert checkpoint["classes"] == classes and checkpoint["audio_config"] == {"n_mels": 128}


def test_import_stacker(tmp_path):
    src = tmp_path / "stacking_008_fcnet"
    best = make_experiment(src, "FCNet", FCNET_KWARGS, [[(5, 0.9), (8, 0.91), (2, 0.85)]])

    [path] = import_argus(src, "argus_stacker", tmp_path / "work", stacker=True)

    imported = load_model(path)
    x = torch.rand(6, 160)
    with torch.no_grad():
        expected, got = fp16_rounded(best[0][2])(x), imported(x)
    assert isinstance(got, torch.Tensor)
    assert torch.allclose(expected, got, rtol=0, atol=1e-5)
    provenance = json.loads((path.parents[1] / "imported.json").read_text())
    assert (provenance["arch"], provenance["folds"][0]["epoch"], provenance["stacker"]) == ("FCNet", 8, True)


def test_first_level_and_stacker_weights_are_not_confused(tmp_path):
    make_experiment(tmp_path / "fc", "FCNet", FCNET_KWARGS, [[(1, 0.5)]])
    with pytest.raises(ArgusImportError, match="stacker=True"):
        import_argus(tmp_path / "fc", "x", tmp_path / "work")
    make_experiment(tmp_path / "asa", "AuxSkipAttention", AUX_KWARGS, [[(1, 0.5)]])
    with pytest.raises(ArgusImportError, match="stacker=False"):
        import_argus(tmp_path / "asa", "x", tmp_path / "work", stacker=True)


def test_mismatched_keys_and_shapes_are_all_listed_and_nothing_is_written(tmp_path):
    src = tmp_path / "src"
    good = argus_state_dict(random_model("AuxSkipAttention", AUX_KWARGS, seed=0))
    write_argus_checkpoint(src / "fold_0" / "model-001-0.5.pth", "AuxSkipAttention", AUX_KWARGS, good)
    bad = dict(good)
    del bad["attention.sa.conv1.weight"]
    del bad["aux2.fc.3.running_var"]
    bad["head.weight"] = torch.zeros(3)
    bad["fc.5.weight"] = torch.zeros(81, 32, dtype=torch.float16)
    write_argus_checkpoint(src / "fold_1" / "model-001-0.5.pth", "AuxSkipAttention", AUX_KWARGS, bad)

    with pytest.raises(ArgusImportError) as info:
        import_argus(src, "x", tmp_path / "work")
    message = str(info.value)
    assert "fold_1" in message
    for expected in [
        "missing key attention.sa.conv1.weight",
        "missing key aux2.fc.3.running_var",
        "unexpected key head.weight",
        "fc.5.weight (81, 32) != (80, 32)",
    ]:
        assert expected in message
    assert not (tmp_path / "work").exists()  # fold_0 was fine, but no partial import


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    write_argus_checkpoint(tmp_path / "src" / "fold_0" / "model-001-0.5.pth", "SimpleKaggle", {"num_classes": 80}, {})
    with pytest.raises(ArgusImportError, match="SimpleKaggle.*AuxSkipAttention, FCNet"):
        import_argus(tmp_path / "src", "x", tmp_path / "work")


def test_folds_must_share_their_architecture(tmp_path):
    make_experiment(tmp_path / "src", "AuxSkipAttention", AUX_KWARGS, [[(1, 0.5)]])
    other = dict(AUX_KWARGS, last_fc=2)
    state = argus_state_dict(random_model("AuxSkipAttention", other, seed=1))
    write_argus_checkpoint(tmp_path / "src" / "fold_1" / "model-001-0.5.pth", "AuxSkipAttention", other, state)
    with pytest.raises(ArgusImportError, match="share their architecture"):
        import_argus(tmp_path / "src", "x", tmp_path / "work")


def test_class_count_must_match(tmp_path):
    make_experiment(tmp_path / "src", "AuxSkipAttention", AUX_KWARGS, [[(1, 0.5)]])
    with pytest.raises(ArgusImportError, match="80 classes but 3"):
        import_argus(tmp_path / "src", "x", tmp_path / "work", classes=["a", "b", "c"])


def test_misshapen_sources_name_the_path(tmp_path):
    with pytest.raises(ArgusImportError, match="nowhere"):
        import_argus(tmp_path / "nowhere", "x", tmp_path / "work")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArgusImportError, match=r"empty.*fold_<k>"):
        import_argus(empty, "x", tmp_path / "work")

    (empty / "fold_0").mkdir()
    with pytest.raises(ArgusImportError, match="fold_0.*no model-"):
        import_argus(empty, "x", tmp_path / "work")

    (empty / "fold_0" / "best.pth").write_bytes(b"")
    with pytest.raises(ArgusImportError, match="best.pth"):
        import_argus(empty, "x", tmp_path / "work")

    (empty / "fold_0" / "best.pth").unlink()
    (empty / "fold_0" / "model-001-0.5.pth").write_bytes(b"not a torch file")
    with pytest.raises(ArgusImportError, match="model-001-0.5.pth.*not a readable"):
        import_argus(empty, "x", tmp_path / "work")

    many = tmp_path / "many"
    for experiment in ("exp_a", "exp_b"):
        (many / experiment / "fold_0").mkdir(parents=True)
    with pytest.raises(ArgusImportError, match="exp_a, exp_b"):
        import_argus(many, "x", tmp_path / "work")

    with pytest.raises(ArgusImportError, match="plain folder name"):
        import_argus(many / "exp_a", "../escape", tmp_path / "work")


TINY_LISTING = Path(__file__).resolve().parent / "data" / "argus_keys_tiny.md"


def listing_state_dict(arch: str) -> tuple[dict, dict]:
    """(kwargs, argus state dict) for the fixture's tiny ``arch``: the original's key names and
    shapes as listed (not taken from this project's models), random values, float16 except the
    batch norms, as apex O2 stored them."""
    from test_models import parse_listings

    kwargs, keys = parse_listings(TINY_LISTING.read_text())[arch]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            value = torch.randn(shape, generator=generator) * 0.1
            state[key] = value if _is_batch_norm(key) else value.half()
    return kwargs, state


def _is_batch_norm(key: str) -> bool:
    """Batch-norm tensors in the original's naming: ``conv<k>.conv<j>.1``, ``*.bn``, ``*fc.3``."""
    module = key.rpartition(".")[0]
    return module.endswith((".bn", "fc.3")) or (module.rsplit(".", 1)[-1] == "1" and ".conv" in module)


@pytest.mark.parametrize("arch,stacker", [("AuxSkipAttention", False), ("FCNet", True)])
def test_import_a_checkpoint_built_from_the_original_key_listing(tmp_path, arch, stacker):
    """An argus file whose keys come from the shipped listing of the original's names imports, and
    the imported model holds exactly its values: the key mapping holds in every checkout."""
    kwargs, state = listing_state_dict(arch)
    write_argus_checkpoint(tmp_path / "src" / "fold_0" / "model-003-0.500000.pth", arch, kwargs, state)
    [path] = import_argus(tmp_path / "src", "tiny", tmp_path / "work", stacker=stacker, classes=["a", "b", "c"])
    imported = load_model(path).state_dict()
    assert list(imported) == list(state)
    for key, value in state.items():
        assert imported[key].dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float32), key
        assert torch.equal(imported[key], value.float() if value.is_floating_point() else value), key
