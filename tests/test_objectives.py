"""The other top FAT2019 solutions' training options, each off by default: the LSEP ranking loss,
a separate noisy-label head, and weight averaging (SWA, EMA). Formulas against brute force, the
options through ``train_fold`` (resume included) and the command line, and the method's default
run unchanged."""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_experiment_toml

from freesound.cli import main as cli
from freesound.config import AveragingConfig, ConfigError, experiment_from_dict
from freesound.models import create_model, load_checkpoint, load_model
from freesound.paths import train_state_path
from freesound.predict import Tagger
from freesound.predict.runtimes import runtime_usable
from freesound.training.averaging import WeightAverage
from freesound.training.engine import Hooks, fit
from freesound.training.losses import AuxLoss, NoisyCuratedLoss, NoisyHeadLoss, bce, lsep, lsoft, make_loss
from freesound.training.trainer import build_loss, check_experiment, train_fold

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "default_run_golden.json"
QUIET = dict(progress=False, log=lambda *_: None)


# ----------------------------------------------------------------------------------------- LSEP


def lsep_brute_force(logits: np.ndarray, target: np.ndarray) -> float:
    """The documented rule, pair by pair: per sample log(1 + sum_{u,v} max(0, y_u - y_v)
    exp(f_v - f_u)), averaged over every sample."""
    losses = []
    for f, y in zip(logits.astype(np.float64), target.astype(np.float64)):
        total = 0.0
        for u, v in itertools.product(range(len(f)), repeat=2):
            total += max(0.0, y[u] - y[v]) * np.exp(f[v] - f[u])
        losses.append(np.log1p(total))
    return float(np.mean(losses))


def test_lsep_matches_the_pairwise_formula_for_hard_and_soft_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (7, 6)).astype(np.float32)
    hard = (rng.random((7, 6)) < 0.4).astype(np.float32)
    hard[0], hard[1] = 0.0, 1.0  # no positive; no negative
    soft = np.where(rng.random((7, 6)) < 0.5, rng.random((7, 6)), 0.0).astype(np.float32)
    for target in (hard, soft):
        value = lsep(torch.from_numpy(logits), torch.from_numpy(target)).item()
        assert value == pytest.approx(lsep_brute_force(logits, target), rel=1e-5)
    # Hard labels: the paper's loss, log(1 + sum over (negative v, positive u) of exp(f_v - f_u)).
    f, y = logits[2], hard[2]
    paper = np.log1p(sum(np.exp(f[v] - f[u]) for u in np.flatnonzero(y) for v in np.flatnonzero(1 - y)))
    assert lsep(torch.from_numpy(logits[2:3]), torch.from_numpy(hard[2:3])).item() == pytest.approx(paper, rel=1e-5)


def test_lsep_soft_target_rule_and_samples_without_pairs():
    # target (0.7, 0.2, 0): pairs (0 over 1) weight 0.5, (0 over 2) 0.7, (1 over 2) 0.2
    f = torch.tensor([[0.5, -1.0, 2.0]])
    expected = np.log1p(0.5 * np.exp(-1.0 - 0.5) + 0.7 * np.exp(2.0 - 0.5) + 0.2 * np.exp(2.0 + 1.0))
    assert lsep(f, torch.tensor([[0.7, 0.2, 0.0]])).item() == pytest.approx(expected, rel=1e-6)
    # equal targets are not compared: a mix at 0.5 / 0.5 has no pair
    logits = torch.tensor([[3.0, -2.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    loss = lsep(logits, target)
    loss.backward()
    # the first sample adds 0 and counts in the mean over 2 samples
    assert loss.item() == pytest.approx(np.log1p(np.exp(1.0) + np.exp(2.0)) / 2, rel=1e-6)
    assert torch.equal(logits.grad[0], torch.zeros(3)) and torch.isfinite(logits.grad).all()


def test_lsep_is_stable_for_large_logit_gaps():
    logits = torch.tensor([[-3000.0, 3000.0], [3000.0, -3000.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = lsep(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(6000.0 / 2, rel=1e-6)  # softplus(6000) = 6000, and 0
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0].tolist() == pytest.approx([-0.5, 0.5])
    half = lsep(logits.detach().half(), target.half())
    assert half.dtype == torch.float32


def test_lsep_through_make_loss_and_the_experiment():
    assert make_loss("lsep")(torch.zeros(2, 3), torch.eye(3)[:2]).item() == pytest.approx(np.log1p(2.0))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for loss 'lsep'"):
        make_loss("lsep", beta=0.7)
    experiment = experiment_from_dict({"loss": {"curated": {"name": "lsep"}, "noisy": {"name": "lsep"}}})
    assert experiment.loss.curated == {"name": "lsep"}  # another name: the table stands on its own
    loss = build_loss(experiment)
    rng = np.random.default_rng(1)
    heads = tuple(torch.from_numpy(rng.normal(size=(4, 5)).astype(np.float32)) for _ in range(4))
    target = torch.from_numpy((rng.random((4, 5)) < 0.5).astype(np.float32))
    noisy = torch.tensor([False, True, False, True])
    expected = sum(w * lsep(h, target) for w, h in zip((1.0, 0.4, 0.2, 0.1), heads))  # lsep on both parts
    assert loss(heads, target, noisy).item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------------------ noisy-label head

FULL = dict(num_classes=80, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8, last_fc=4)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_noisy_head_adds_one_head_and_nothing_when_off():
    plain = create_model("aux_skip_attention", **FULL)
    assert n_parameters(plain) == 17_326_950
    assert n_parameters(create_model("aux_skip_attention", **FULL, noisy_head=False)) == 17_326_950
    # Dropout, Linear(512 -> 256), PReLU, BatchNorm1d(256), Dropout, Linear(256 -> 80)
    assert n_parameters(create_model("aux_skip_attention", **FULL, noisy_head=True)) == (
        17_326_950 + (512 * 256 + 256) + 1 + 2 * 256 + (256 * 80 + 80))
    assert "noisy_fc.5.weight" not in plain.state_dict()


@pytest.mark.parametrize("name, params", [("aux_skip_attention", {"base_size": 4, "ratio": 4}),
                                          ("simple_cnn", {"base_size": 4})])
def test_noisy_head_is_trained_only_and_ignored_at_prediction(name, params):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, noisy_head=True, **params)
    x = torch.randn(3, 3, 32, 48)
    heads = 4 if name == "aux_skip_attention" else 1
    assert len(model.train()(x)) == heads + 1
    plain = create_model(name, num_classes=5, **params)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("noisy_fc.")}, strict=True)
    model.eval(), plain.eval()
    outputs, plain_outputs = model(x), plain(x)
    assert len(outputs) == heads
    for a, b in zip(outputs, plain_outputs):
        assert torch.equal(a, b)
    logmels = [np.random.default_rng(0).uniform(-80, 0, (32, 300)).astype(np.float32)]
    np.testing.assert_array_equal(Tagger([model], [f"c{i}" for i in range(5)]).predict_spectrograms(logmels),
                                  Tagger([plain], [f"c{i}" for i in range(5)]).predict_spectrograms(logmels))


@pytest.mark.skipif(not runtime_usable("onnxruntime"),
                    reason="onnx or onnxruntime not installed (pip install 'freesound[onnx]')")
def test_noisy_head_model_exports_its_main_head_to_onnx():
    torch.manual_seed(0)
    model = create_model("aux_skip_attention", num_classes=5, base_size=4, ratio=4, noisy_head=True).eval()
    logmels = [np.random.default_rng(0).uniform(-80, 0, (128, width)).astype(np.float32) for width in (40, 300)]
    classes = [f"c{i}" for i in range(5)]
    np.testing.assert_allclose(Tagger([model], classes, runtime="onnxruntime").predict_spectrograms(logmels),
                               Tagger([model], classes, runtime="torch").predict_spectrograms(logmels), atol=1e-5)


def test_noisy_head_loss_splits_the_batch_between_the_heads():
    rng = np.random.default_rng(2)
    outputs = tuple(torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32)).requires_grad_() for _ in range(5))
    target = torch.from_numpy((rng.random((5, 4)) < 0.5).astype(np.float32))
    noisy = torch.tensor([True, False, False, True, False])
    loss_fn = NoisyHeadLoss(make_loss("bce"), make_loss("lsoft", beta=0.7), weights=(1.0, 0.4, 0.2, 0.1))
    loss = loss_fn(outputs, target, noisy)
    trusted = ~noisy
    expected = (3 / 5) * sum(w * bce(h[trusted], target[trusted]) for w, h in zip((1.0, 0.4, 0.2, 0.1), outputs))
    expected = expected + (2 / 5) * lsoft(outputs[4][noisy], target[noisy], beta=0.7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    for head in outputs[:4]:  # the main and aux heads never see a noisy label
        assert torch.equal(head.grad[noisy], torch.zeros(2, 4)) and head.grad[trusted].abs().sum() > 0
    assert torch.equal(outputs[4].grad[trusted], torch.zeros(3, 4)) and outputs[4].grad[noisy].abs().sum() > 0
    # A batch without noisy samples: the noisy head still gets a (zero) gradient, as DDP needs.
    head = torch.zeros(2, 4, requires_grad=True)
    main = torch.zeros(2, 4, requires_grad=True)
    value = NoisyHeadLoss(make_loss("bce"), make_loss("bce"), weights=(1.0,))((main, head), target[:2],
                                                                            torch.tensor([False, False]))
    value.backward()
    assert value.item() == pytest.approx(np.log(2.0)) and torch.equal(head.grad, torch.zeros(2, 4))


def test_build_loss_uses_the_noisy_head_split_only_when_asked():
    default = experiment_from_dict({})
    assert isinstance(build_loss(default), AuxLoss) and isinstance(build_loss(default).base_loss, NoisyCuratedLoss)
    on = experiment_from_dict({"model": {"params": {"noisy_head": True}}})
    assert on.model.params["base_size"] == 64 and on.model.params["noisy_head"] is True
    assert isinstance(build_loss(on), NoisyHeadLoss)
    check_experiment(on, 80)


# ------------------------------------------------------------------------------ weight averaging


def test_averaging_config_is_checked():
    assert experiment_from_dict({}).averaging == AveragingConfig(method="none")
    for bad, match in (({"method": "polyak"}, "method must be one of none, swa, ema"),
                       ({"swa_start": 0}, "swa_start must be an epoch number"),
                       ({"ema_decay": 1.0}, "ema_decay must be between 0 and 1"),
                       ({"bn_batches": -1}, "bn_batches must be 0"),
                       ({"decay": 0.9}, "unknown key")):
        with pytest.raises(ConfigError, match=match):
            experiment_from_dict({"averaging": bad}, where="x.toml")


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 2, 1))


def test_ema_averages_weights_and_batch_norm_statistics_step_by_step():
    model = tiny_net()
    average = WeightAverage(model, AveragingConfig(method="ema", ema_decay=0.9))
    hook = average.step_hook(model)
    expected = None
    for step in range(3):
        with torch.no_grad():
            model.train()(torch.randn(4, 3, 5, 5) * (step + 1))  # moves the running statistics
            model[1].weight.add_(0.5 * step + 0.1)
        hook()
        now = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        expected = now if expected is None else {k: 0.9 * expected[k] + 0.1 * now[k] for k in now}
    kept = average.current(model)
    assert kept is average.averaged.module
    for key, value in expected.items():
        torch.testing.assert_close(kept.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    assert WeightAverage(model, AveragingConfig(method="swa")).step_hook(model) is None


def test_swa_averages_epochs_from_its_start_and_recomputes_batch_norm_over_bn_batches():
    model = tiny_net()
    average = WeightAverage(model, AveragingConfig(method="swa", swa_start=2, bn_batches=2))
    batches = [(torch.randn(4, 3, 2, 2) + i, torch.zeros(4)) for i in range(4)]
    snapshots = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model[1].weight.add_(float(epoch))
        average.end_epoch(model, epoch, lambda: iter(batches), "cpu")
        if epoch == 1:
            assert average.current(model) is model  # nothing averaged yet
        else:
            snapshots.append(model[1].weight.detach().clone())
    kept = average.current(model)
    torch.testing.assert_close(kept[1].weight, (snapshots[0] + snapshots[1]) / 2)
    # batch norm over the first two batches (a cumulative mean of the batch means, like update_bn's)
    means = [batch[0].mean((0, 2, 3)) for batch in batches[:2]]
    torch.testing.assert_close(kept[0].running_mean, (means[0] + means[1]) / 2)
    assert average.restarts_best(2) and not average.restarts_best(3)


def test_fit_restarts_the_best_when_asked():
    saved = []

    def run(restart):
        scores = iter([0.9, 0.5, 0.6, 0.55])
        hooks = Hooks(lambda epoch: {}, lambda: (next(scores), {}), lambda epoch, score: saved.append(epoch),
                      restart_best=restart)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max")
        return fit(hooks, optimizer, scheduler, max_epochs=4, early_stop_patience=5, log_path=None,
                   columns=["epoch", "val_lwlrap"])

    progress = run(None)
    assert (progress.best_epoch, progress.bad_epochs, saved) == (1, 3, [1])
    saved.clear()
    progress = run(lambda epoch: epoch == 2)
    assert (progress.best_epoch, progress.best_score, progress.bad_epochs, saved) == (3, 0.6, 1, [1, 2, 3])


def test_states_saved_before_the_averaging_section_existed_still_resume(tiny_work):
    from freesound.training.trainer import resume_conflicts

    dataset, work = tiny_work
    train_fold(averaging_experiment({}, max_epochs=1), dataset, work, 0, **QUIET)
    path = train_state_path(work, "tiny", 0)
    state = torch.load(path, weights_only=True)
    del state["experiment"]["averaging"]  # as saved before [averaging] existed
    torch.save(state, path)
    assert resume_conflicts(averaging_experiment({}, max_epochs=2), work, 0) == []
    assert resume_conflicts(averaging_experiment({"method": "ema"}), work, 0) == ["averaging.method"]


def averaging_experiment(averaging, max_epochs=3, **model_params):
    return experiment_from_dict({
        "name": "tiny",
        "model": {"name": "aux_skip_attention", "params": {"base_size": 4, "ratio": 4, **model_params}},
        "train": {"batch_size": 8, "epoch_size": 16, "max_epochs": max_epochs, "workers": 0, "lr": 3e-3},
        "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3},
        "averaging": averaging,
    })


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [{"method": "ema", "ema_decay": 0.5},
                                       {"method": "swa", "swa_start": 2, "bn_batches": 1}])
def test_averaged_training_checkpoints_the_average_and_resumes_exactly(tiny_data, tmp_path, averaging,
                                                                       one_torch_thread):
    """3 epochs straight against 3 epochs stopped twice (after epoch 1, before SWA starts, and
    after epoch 2, with one model averaged) and resumed: the same weights, average and log; and
    model.pt holds the average of its epoch (SWA: one averaged from swa_start on)."""
    dataset, work = tiny_data
    straight_work, resumed_work = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(work, straight_work), shutil.copytree(work, resumed_work)
    train_fold(averaging_experiment(averaging, noisy_head=True), dataset, straight_work, 0, **QUIET)
    averages = {}
    for epochs in (1, 2, 3):
        train_fold(averaging_experiment(averaging, max_epochs=epochs, noisy_head=True), dataset, resumed_work, 0,
                   resume=True, **QUIET)
        state = torch.load(train_state_path(resumed_work, "tiny", 0), weights_only=True)
        averages[epochs] = {key[len("module."):]: value for key, value in state["averaged"].items()
                            if key.startswith("module.")}
    straight, resumed = (torch.load(train_state_path(w, "tiny", 0), weights_only=True)
                         for w in (straight_work, resumed_work))
    for part in ("model", "averaged"):
        assert straight[part].keys() == resumed[part].keys()
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert [row[:5] for row in straight["log"]] == [row[:5] for row in resumed["log"]]

    path = straight_work / "experiments" / "tiny" / "fold_0" / "model.pt"
    checkpoint = load_checkpoint(path)
    assert checkpoint["averaging"] == averaging["method"] and checkpoint["model_params"]["noisy_head"] is True
    if averaging["method"] == "swa":
        assert checkpoint["epoch"] >= 2  # only averaged models compete
        assert int(straight["averaged"]["n_averaged"]) == 2
    kept = averages[checkpoint["epoch"]]
    assert checkpoint["state_dict"].keys() == kept.keys()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(value, kept[key]), key
    assert not torch.equal(straight["model"]["fc.5.weight"], averages[3]["fc.5.weight"])  # not the raw weights
    assert isinstance(load_model(path), torch.nn.Module)


# ---------------------------------------------------------------- the default run, before and after


def default_run_fingerprint(dataset, work, max_epochs: int = 3) -> dict:
    """A seeded run (3 epochs unless told) of the tiny AuxSkipAttention with every new option at its default:
    its log (epoch, lr, train loss, val loss, val lwlrap) and the sum of each final weight."""
    experiment = experiment_from_dict({
        "name": "golden", "model": {"name": "aux_skip_attention", "params": {"base_size": 4, "ratio": 4}},
        "train": {"batch_size": 8, "epoch_size": 32, "max_epochs": max_epochs, "workers": 0, "lr": 3e-3},
        "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3}})
    train_fold(experiment, dataset, work, 0, **QUIET)
    state = torch.load(train_state_path(work, "golden", 0), weights_only=True)
    return {"log": [row[:5] for row in state["log"]],
            "weight_sums": {k: float(v.double().sum()) for k, v in state["model"].items()}}


def recording_isa_environment() -> dict:
    """Environment variables that hold torch (ATen's vector kernels and oneDNN), OpenBLAS and
    numpy's SIMD dispatch to AVX2, the instruction set of the CPU that recorded the golden run.

    Each library picks its kernels by the CPU it runs on, and their AVX-512 kernels round
    differently: on an AVX-512 machine the native run leaves the recording after two epochs (a
    validation rank flips; measured on an AMD EPYC, 2026-12-06). Under this environment the same
    machine repeats the recording bit for bit.
    """
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as umath
    beyond_avx2 = [target for target in umath.__cpu_dispatch__ if target.startswith(("AVX512", "X86_V4"))]
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
            "NPY_DISABLE_CPU_FEATURES": " ".join(beyond_avx2)}


def recorded_run_in_a_child(out: Path) -> dict:
    """``default_run_fingerprint`` on the tiny dataset, made afresh in a child process that runs
    under ``recording_isa_environment`` (the settings take effect only when the libraries load)."""
    env = {**os.environ, **recording_isa_environment(), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the golden run was recorded with AVX2 kernels, which this CPU lacks")
def test_the_default_run_is_unchanged_by_the_new_options(tmp_path):
    """The exact check. The golden figures were recorded by this file's ``__main__`` from main at
    15b99e5, before any of these options existed (torch 2.13.0 CPU, one thread, an AVX2-only CPU,
    2026-12-01): a seeded 3-epoch run's log and the sum of every final weight. It is replayed
    here with every library held to AVX2 kernels, so it runs on any AVX2 or AVX-512 CPU and must
    match to the last bit."""
    golden = json.loads(GOLDEN.read_text())
    if golden["torch"] != torch.__version__:
        pytest.skip(f"golden run recorded under torch {golden['torch']}, this is {torch.__version__}")
    now = recorded_run_in_a_child(tmp_path / "fingerprint.json")
    assert now["cpu_capability"] == golden["cpu_capability"] == "AVX2"
    assert now["log"] == golden["log"]
    assert now["weight_sums"] == golden["weight_sums"]


@pytest.mark.slow
def test_the_default_runs_first_epoch_is_unchanged_on_this_cpu(tiny_work, one_torch_thread):
    """The check that holds on any CPU, with its native kernels: the first epoch of the golden run
    (before other instruction sets' rounding compounds). Between the AVX2 recording and an AVX-512
    machine the train and validation losses differed by 1e-5 and 5e-5 (relative) and the val
    lwlrap not at all; a changed sampler, model or loss moves them by far more than rtol 1e-3."""
    golden = json.loads(GOLDEN.read_text())
    now = default_run_fingerprint(*tiny_work, max_epochs=1)
    (epoch, lr, train_loss, val_loss, val_lwlrap), = now["log"]
    g_epoch, g_lr, g_train_loss, g_val_loss, g_val_lwlrap = golden["log"][0]
    assert (epoch, lr) == (g_epoch, g_lr)
    assert train_loss == pytest.approx(g_train_loss, rel=1e-3)
    assert val_loss == pytest.approx(g_val_loss, rel=1e-3)
    assert val_lwlrap == pytest.approx(g_val_lwlrap, abs=0.01)  # one rank flip on 20 clips moves it 0.004


# ------------------------------------------------------------------------- through the commands


@pytest.mark.slow
def test_options_train_and_predict_through_the_commands(tiny_work, tmp_path):
    dataset, work = tiny_work
    toml = tiny_experiment_toml("aux_skip_attention", epoch_size=16, max_epochs=2,
                                extra_params=", ratio = 4, noisy_head = true")
    toml = toml.replace("[train]", '[loss]\ncurated = { name = "lsep" }\nnoisy = { name = "lsep" }\n\n'
                                   '[averaging]\nmethod = "swa"\nswa_start = 2\nbn_batches = 1\n\n[train]')
    experiment = tmp_path / "options.toml"
    experiment.write_text(toml)
    runner = CliRunner()
    common = ["--data", str(dataset.root), "--work", str(work)]
    result = runner.invoke(cli, ["train", str(experiment), *common, "--fold", "0", "--fold", "1", "--fold", "2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "test.csv"
    result = runner.invoke(cli, ["predict", str(experiment), *common, "--out", str(out)])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["fname", *dataset.classes] and len(predictions) == len(dataset.test_fnames)
    assert predictions[list(dataset.classes)].to_numpy().min() >= 0
    checkpoint = load_checkpoint(work / "experiments" / "options" / "fold_0" / "model.pt")
    assert checkpoint["averaging"] == "swa" and checkpoint["epoch"] == 2


@pytest.mark.slow
def test_noisy_head_and_swa_under_torchrun(tiny_data, tmp_path):
    """2 gloo processes (DDP) with the noisy head and SWA: every parameter gets a gradient each step
    even in a process's slice without noisy samples, and the logged val lwlrap of the saved epoch
    is that of the saved averaged weights on the whole fold (every process validated process 0's
    averaged model, batch-norm statistics included)."""
    from test_distributed import freesound_command, train_args, whole_fold_lwlrap

    from freesound.config import load_experiment

    dataset, work = tiny_data
    toml = tiny_experiment_toml("aux_skip_attention", epoch_size=32, max_epochs=1,
                                extra_params=", ratio = 4, noisy_head = true")
    toml = toml.replace("noisy = 0.3", "noisy = 0.1") + '\n[averaging]\nmethod = "swa"\nbn_batches = 2\n'
    experiment_path = tmp_path / "tiny.toml"
    experiment_path.write_text(toml)
    run = tmp_path / "run"
    shutil.copytree(work, run)
    done = freesound_command(train_args(dataset.root, run, experiment_path, "--fold", "0"), tmp_path, True)
    assert done.returncode == 0, done.stderr[-3000:]
    fold_dir = run / "experiments" / "tiny" / "fold_0"
    log = pd.read_csv(fold_dir / "log.csv")
    checkpoint = load_checkpoint(fold_dir / "model.pt")
    assert checkpoint["averaging"] == "swa" and list(log.epoch) == [1]
    recomputed = whole_fold_lwlrap(fold_dir / "model.pt", load_experiment(experiment_path, tmp_path), dataset, run)
    assert recomputed == pytest.approx(log.val_lwlrap[log.epoch == checkpoint["epoch"]].item(), abs=1e-6)


if __name__ == "__main__":
    # `python tests/test_objectives.py OUT` writes the default run's fingerprint to OUT (the exact
    # check's child); with no argument it records tests/data/default_run_golden.json again, under
    # the recording machine's instruction set (recording_isa_environment).
    import tempfile

    if len(sys.argv) == 1:
        with tempfile.TemporaryDirectory() as folder:
            fingerprint = recorded_run_in_a_child(Path(folder) / "fingerprint.json")
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, **fingerprint}, indent=1) + "\n")
        sys.exit(0)

    from freesound.data.dataset import load_dataset
    from freesound.data.features import cache_features
    from freesound.data.folds import make_folds, write_folds
    from freesound.data.synth import synthesize_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)  # the tiny_data fixture's dataset, made the same way
        synthesize_dataset(root / "data", num_classes=6, num_curated=60, num_noisy=30, num_test=18, seed=7,
                           progress=False)
        data = load_dataset(root / "data")
        cache_features(data, root / "work", workers=2, progress=False)
        write_folds(root / "work", make_folds(data.curated.fname, n_folds=3, seed=42))
        fingerprint = default_run_fingerprint(data, root / "work")
    Path(sys.argv[1]).write_text(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                             **fingerprint}))
