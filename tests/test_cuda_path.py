"""Where the code behaves differently on CUDA: resuming across devices and AMP settings, the
generators a resume restores, deterministic training, where a Tagger's models run and in what
precision, the device probe, and the training device made current.

The CPU tests reproduce each CUDA behaviour with a stand-in (an enabled GradScaler, fake CUDA
generators, the ``meta`` device, a failing probe). The tests marked ``cuda`` need a GPU, skip
without one, and run under ``make gpu-check``.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import freesound.predict.device as device_module
import freesound.tools.search as search_module
from conftest import REPO, random_model, run_cli, tiny_experiment_toml
from freesound import settings
from freesound.config import experiment_from_dict
from freesound.data.dataset import multi_hot, read_labels_csv
from freesound.data.features import load_features
from freesound.metrics import lwlrap
from freesound.models import create_model
from freesound.paths import experiment_dir, train_state_path
from freesound.predict import EnsemblePredictor, Tagger
from freesound.predict.device import UnusableDeviceError, device_problem, require_device
from freesound.predict.tagger import _inference_model
from freesound.tools.search import TrialSetup, load_space, load_target, run_search
from freesound.training.engine import (
    deterministic_algorithms,
    load_state,
    on_device,
    restore,
    restore_rng_states,
    rng_states,
)
from freesound.training.trainer import resume_note, saved_run, train_fold

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)")
NO_KERNEL_IMAGE = "CUDA error: no kernel image is available for execution on the device"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_experiment(name="tiny", model="simple_cnn", params=None, **train):
    values = {
        "name": name,
        "model": {"name": model, "params": params or {"base_size": 4},
                  "aux_weights": [1.0, 0.4, 0.2, 0.1] if model == "aux_skip_attention" else [1.0]},
        "train": {"batch_size": 8, "epoch_size": 16, "max_epochs": 2, "workers": 0, "lr": 3e-3, **train},
        "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3},
    }
    return experiment_from_dict(values)


class EnabledGradScaler(torch.amp.GradScaler):
    """A GradScaler enabled whatever it is asked, as it is on a CUDA device with AMP on (scaling
    the CPU's tensors here)."""

    def __init__(self, device="cuda", **kwargs):
        super().__init__("cpu", **{**kwargs, "enabled": True})


# ----------------------------------------------------------------------------- 1: device/AMP change on resume


def test_cpu_fold_resumes_with_amp_on_with_a_fresh_scaler(tiny_work, monkeypatch):
    """A CPU run saves a disabled scaler's empty state; resumed where AMP is on (an enabled
    scaler), loading it raised torch's "The source state dict is empty" RuntimeError."""
    dataset, work = tiny_work
    train_fold(tiny_experiment(max_epochs=1), dataset, work, 0, progress=False, log=lambda *_: None)
    state = load_state(train_state_path(work, "tiny", 0))
    assert (state["device"], state["amp"], state["scaler"]) == ("cpu", False, {})

    monkeypatch.setattr(torch.amp, "GradScaler", EnabledGradScaler)
    lines = []
    result = train_fold(tiny_experiment(max_epochs=2), dataset, work, 0, resume=True, progress=False, log=lines.append)
    assert result.epochs == 2
    notes = [line for line in lines if "scaler" in line]
    assert notes == ["fold 0: saved on cpu without AMP, resumed on cpu with AMP: the gradient scaler starts fresh "
                     "and the resumed epochs will not repeat an uninterrupted run bit for bit"]
    resumed = load_state(train_state_path(work, "tiny", 0))
    assert resumed["amp"] is True and resumed["scaler"]["scale"] > 0  # the fresh scaler's state now


def test_search_trial_resumes_with_amp_on(tiny_work, tmp_path, monkeypatch):
    """A search interrupted on the CPU and continued where AMP is on: the interrupted trial is failed
    (Optuna's study records it), the next trial trains afresh with AMP, nothing resumes a stale scaler."""
    dataset, work = tiny_work
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "tiny.toml").write_text(tiny_experiment_toml(max_epochs=2))
    (folder / "space.toml").write_text('"train.lr" = { loguniform = [1e-3, 1e-2] }\n')
    target = load_target("tiny", folder)
    space = load_space(folder / "space.toml", target)
    setup = TrialSetup.create(dataset, work, [0], device="cpu")
    real_train_folds = search_module.train_folds

    def interrupted(experiment, *args, **kwargs):
        real_train_folds(experiment, *args, **{**kwargs, "max_epochs": 1})
        raise KeyboardInterrupt  # killed after the first epoch's state was saved

    options = dict(trials=1, seed=0, experiments_dir=folder, progress=False)
    monkeypatch.setattr(search_module, "train_folds", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(target, space, setup, log=lambda *_: None, **options)
    monkeypatch.setattr(search_module, "train_folds", real_train_folds)
    monkeypatch.setattr(torch.amp, "GradScaler", EnabledGradScaler)
    lines = []
    result = run_search(target, space, setup, log=lines.append, **options)
    assert list(result.trials.state) == ["FAIL", "COMPLETE"] and np.isfinite(result.best_score)
    assert not any("the gradient scaler starts fresh" in line for line in lines)
    state = load_state(train_state_path(work, "tiny-trial1", 0))
    assert state["epoch"] == 2 and state["amp"] is True


def test_saved_run_reads_old_states_and_the_note_says_what_changed():
    assert saved_run({"device": "cuda:0", "amp": True, "scaler": {}}) == ("cuda:0", True)
    # States from before the device and AMP were recorded: AMP from the scaler's state.
    assert saved_run({"scaler": {}}) == (None, False)
    assert saved_run({"scaler": {"scale": 65536.0}}) == (None, True)
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert resume_note(3, "cuda:1", True, cuda, True, True) is None
    assert resume_note(3, "cpu", False, cpu, False, True) is None
    assert resume_note(3, "cpu", False, cuda, True, False) == (
        "fold 3: saved on cpu without AMP, resumed on cuda:0 with AMP: the gradient scaler starts fresh and the "
        "resumed epochs will not repeat an uninterrupted run bit for bit")
    assert resume_note(3, "cuda:0", True, cpu, False, True).startswith(
        "fold 3: saved on cuda:0 with AMP, resumed on cpu without AMP: the gradient scaler starts fresh")
    # A state from before the device was recorded: only AMP and the generators tell.
    assert resume_note(3, None, False, cpu, False, True) is None
    assert resume_note(3, None, False, cuda, False, False) == (
        "fold 3: saved on an unrecorded device without AMP, resumed on cuda:0 without AMP: the resumed epochs "
        "will not repeat an uninterrupted run bit for bit")
    # Same device and AMP, but the GPUs' generators could not be restored (another GPU count).
    assert "bit for bit" in resume_note(3, "cuda:0", True, cuda, True, False)


# ----------------------------------------------------------------------------- 2: generators, determinism


def test_state_holds_the_generators_device_and_amp(tiny_work):
    dataset, work = tiny_work
    train_fold(tiny_experiment(max_epochs=1), dataset, work, 0, progress=False, log=lambda *_: None)
    after_training = torch.get_rng_state()
    state = load_state(train_state_path(work, "tiny", 0))
    assert {"rng", "device", "amp", "experiment"} <= set(state) and "cuda_rng" not in state
    assert torch.equal(state["rng"], after_training)  # saved after the epoch's last draw
    assert state["experiment"]["train"]["deterministic"] is False


def test_cuda_generators_are_saved_and_restored(monkeypatch):
    gpu_states = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in gpu_states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(states))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    assert set(rng_states(torch.device("cpu"))) == {"rng"}
    state = rng_states(torch.device("cuda:1"))
    assert set(state) == {"rng", "cuda_rng"}
    assert [s.tolist() for s in state["cuda_rng"]] == [s.tolist() for s in gpu_states]
    expected = torch.rand(4)  # what the CPU generator draws next

    torch.rand(10)
    assert restore_rng_states(state, torch.device("cuda:1")) is True
    assert torch.equal(torch.rand(4), expected)
    assert [[s.tolist() for s in states] for states in restored] == [[s.tolist() for s in gpu_states]]
    # Saved on the CPU, or with another GPU count: the GPUs' generators cannot be restored.
    assert restore_rng_states({"rng": state["rng"]}, torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert restore_rng_states(state, torch.device("cuda")) is False
    assert len(restored) == 1
    assert restore_rng_states({"rng": state["rng"]}, torch.device("cpu")) is True


def test_deterministic_algorithms_are_set_and_restored(monkeypatch):
    cudnn = torch.backends.cudnn
    monkeypatch.delenv(settings.CUBLAS_WORKSPACE_VARIABLE, raising=False)
    monkeypatch.setattr(cudnn, "benchmark", True)
    with deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled() and cudnn.benchmark
    assert settings.CUBLAS_WORKSPACE_VARIABLE not in os.environ
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert cudnn.deterministic and not cudnn.benchmark
        assert os.environ[settings.CUBLAS_WORKSPACE_VARIABLE] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    assert not cudnn.deterministic and cudnn.benchmark
    # A deterministic value the user chose is kept; another is replaced.
    monkeypatch.setenv(settings.CUBLAS_WORKSPACE_VARIABLE, ":16:8")
    assert settings.use_deterministic_cublas_workspace() == ":16:8"
    monkeypatch.setenv(settings.CUBLAS_WORKSPACE_VARIABLE, ":0:0")
    assert settings.use_deterministic_cublas_workspace() == ":4096:8"


def test_deterministic_training_runs_under_deterministic_algorithms(tiny_data, tmp_path, monkeypatch):
    """``train.deterministic`` holds torch to deterministic algorithms while a fold trains (every
    operation of the model has one: training does not raise), and the CPU's weights are the same
    either way; the setting may change on resume."""
    import freesound.training.trainer as trainer_module

    dataset, work = tiny_data
    flags = []
    real_train_epoch = trainer_module.train_epoch

    def train_epoch(*args, **kwargs):
        flags.append(torch.are_deterministic_algorithms_enabled())
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", train_epoch)
    weights = {}
    for deterministic in (False, True):
        run_work = tmp_path / str(deterministic)
        shutil.copytree(work, run_work)
        experiment = tiny_experiment(model="aux_skip_attention", params={"base_size": 4}, max_epochs=1,
                                     deterministic=deterministic)
        train_fold(experiment, dataset, run_work, 0, progress=False, log=lambda *_: None)
        weights[deterministic] = load_state(train_state_path(run_work, "tiny", 0))["model"]
    assert flags == [False, True] and not torch.are_deterministic_algorithms_enabled()
    for key, value in weights[False].items():
        assert torch.equal(value, weights[True][key]), key
    lines = []
    again = tiny_experiment(model="aux_skip_attention", params={"base_size": 4}, max_epochs=2)
    assert train_fold(again, dataset, tmp_path / "True", 0, resume=True, progress=False, log=lines.append).epochs == 2
    assert any("resuming after epoch 1" in line for line in lines)


# ----------------------------------------------------------------------------- 4, 6: where modules and state live


def test_tagger_leaves_the_callers_modules_where_they_are():
    """``Tagger(models, device=...)`` used to move the caller's modules in place (and switch them
    to eval mode); now it runs copies on its device."""
    model = random_model().train()
    parameters = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    tagger = Tagger([model], classes=list("abcde"), device="meta")
    assert tagger.models == [model] and model.training
    for name, p in model.named_parameters():
        assert p is parameters[name][0] and p.device.type == "cpu" and p.data_ptr() == parameters[name][1]

    cache = {}
    copy = _inference_model(model, torch.device("meta"), cache)
    assert copy is not model and not copy.training and model.training
    assert {p.device.type for p in copy.parameters()} == {"meta"}
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in copy.parameters() if p.dim() == 4)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert _inference_model(model, torch.device("meta"), cache) is copy  # cached while the weights stand


def test_ensemble_predictor_leaves_the_callers_stackers_where_they_are():
    tagger = Tagger([random_model()], classes=list("abcde"))
    stacker = create_model("fcnet", in_channels=5, num_classes=5, base_size=8, reduction_scale=1).train()
    weight = next(stacker.parameters())
    predictor = EnsemblePredictor({"a": tagger}, {"s": [stacker]}, device="meta")
    assert weight.device.type == "cpu" and stacker.training
    assert {p.device.type for p in predictor.stackers["s"][0].parameters()} == {"meta"}


def test_optimizer_state_restores_its_step_counters_on_the_cpu(tmp_path):
    """``load_state`` reads onto the CPU and ``restore`` copies moments to the parameters' device
    while Adam (not capturable) keeps its ``step`` counters on the CPU: counters on a GPU cost a
    device synchronisation per parameter per step. ``meta`` stands in for the GPU."""
    from freesound.training.engine import FitState, save_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_state(tmp_path / "state.pt", {"model": model, "optimizer": optimizer}, FitState(), [])
    state = load_state(tmp_path / "state.pt")

    on_meta = torch.nn.Linear(3, 2, device="meta")
    resumed = torch.optim.Adam(on_meta.parameters())
    restore(state, {"optimizer": resumed}, [])
    for group in resumed.param_groups:
        assert group["capturable"] is False and group["fused"] in (None, False)
    for p in on_meta.parameters():
        assert resumed.state[p]["step"].device.type == "cpu" and resumed.state[p]["step"].item() == 1
        assert resumed.state[p]["exp_avg"].device.type == "meta"


def test_on_device_makes_the_training_gpu_current():
    """Pinned memory is allocated through the current device: training on cuda:1 holds cuda:1
    current, so pinning opens no context on GPU 0."""
    context = on_device(torch.device("cuda:1"))
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    assert not isinstance(on_device(torch.device("cpu")), torch.cuda.device)


# ----------------------------------------------------------------------------- 3: precision


def test_precision_is_checked_and_the_cpu_predicts_in_fp32():
    from freesound.errors import FreesoundError

    model = random_model()
    clips = [np.random.default_rng(0).uniform(-80, 0, (128, 300)).astype(np.float32)]
    fp16, fp32 = (Tagger([model], list("abcde"), precision=p).predict_spectrograms(clips) for p in ("fp16", "fp32"))
    np.testing.assert_array_equal(fp16, fp32)
    with pytest.raises(FreesoundError, match="precision must be one of fp16, fp32, got 'bf16'"):
        Tagger([model], list("abcde"), precision="bf16")
    assert "--precision [fp16|fp32]" in run_cli("predict", "--help").output
    assert "--precision [fp16|fp32]" in run_cli("build-kernel", "--help").output


# ----------------------------------------------------------------------------- 5: the device probe


def test_device_probe_names_the_device_and_torchs_architectures(monkeypatch):
    assert device_problem("cpu") is None  # one real convolution
    monkeypatch.setattr(device_module, "_probe", lambda device: (_ for _ in ()).throw(RuntimeError(NO_KERNEL_IMAGE)))
    problem = device_problem("cpu")
    architectures = ", ".join(torch.cuda.get_arch_list()) or "none (a CPU-only build)"
    assert problem == (f"torch {torch.__version__} cannot run a convolution on cpu ({NO_KERNEL_IMAGE}); "
                       f"its GPU architectures: {architectures}")
    with pytest.raises(UnusableDeviceError, match="cannot run a convolution on cpu .*install a torch build"):
        require_device("cpu")


def test_local_commands_stop_on_a_device_torch_cannot_drive(monkeypatch, tmp_path):
    monkeypatch.setattr(device_module, "_probe", lambda device: (_ for _ in ()).throw(RuntimeError(NO_KERNEL_IMAGE)))
    for command in (["predict", "small", "--data", tmp_path], ["train", "small", "--data", tmp_path]):
        result = run_cli(*command, "--work", tmp_path / "work", "--device", "cpu", expect=1)
        assert result.output.strip().splitlines() == [
            f"error: torch {torch.__version__} cannot run a convolution on cpu ({NO_KERNEL_IMAGE}); its GPU "
            f"architectures: {', '.join(torch.cuda.get_arch_list()) or 'none (a CPU-only build)'}; pick another "
            "--device or install a torch build for this GPU"]
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- 7: the declared torch floor


def test_declared_torch_floor_covers_the_device_aware_grad_scaler():
    """``torch.amp.GradScaler("cuda", ...)`` (the trainer's) needs torch 2.3; setup.py said 2.1."""
    from freesound.versions import MINIMUM, requirements

    assert tuple(map(int, MINIMUM["torch"].split("."))) >= (2, 3)
    assert "torch>=2.3" in requirements()


# ----------------------------------------------------------------------------- CUDA only (make gpu-check)


@pytest.mark.cuda
@CUDA
def test_cuda_resume_is_exact_under_deterministic(tiny_data, tmp_path):
    """Dropout on CUDA draws from the GPU's generator: with its state saved and restored and
    deterministic algorithms, a resumed run ends on the same weights as an uninterrupted one."""
    dataset, work = tiny_data

    def with_dropout(epochs):
        return tiny_experiment(model="aux_skip_attention", params={"base_size": 8, "dropout": 0.3},
                               max_epochs=epochs, deterministic=True)

    runs = {}
    for run in ("straight", "again", "resumed"):
        run_work = tmp_path / run
        shutil.copytree(work, run_work)
        if run == "resumed":
            train_fold(with_dropout(1), dataset, run_work, 0, device="cuda", progress=False, log=lambda *_: None)
        lines = []
        train_fold(with_dropout(3), dataset, run_work, 0, device="cuda", resume=run == "resumed", progress=False,
                   log=lines.append)
        assert not any("bit for bit" in line for line in lines)
        runs[run] = torch.load(train_state_path(run_work, "tiny", 0), weights_only=True)  # where they were saved
    for run in ("again", "resumed"):
        assert runs[run]["epoch"] == 3 and runs[run]["amp"] is True and len(runs[run]["cuda_rng"]) >= 1
        for key, value in runs["straight"]["model"].items():
            assert torch.equal(value, runs[run]["model"][key]), (run, key)
        # The resumed optimizer kept its step counters on the CPU (no per-step device syncs).
        for slot in runs[run]["optimizer"]["state"].values():
            assert slot["step"].device.type == "cpu" and slot["exp_avg"].device.type == "cuda"


@pytest.mark.cuda
@CUDA
def test_cpu_fold_resumes_on_cuda(tiny_work):
    dataset, work = tiny_work
    train_fold(tiny_experiment(max_epochs=1), dataset, work, 0, progress=False, log=lambda *_: None)
    lines = []
    result = train_fold(tiny_experiment(max_epochs=2), dataset, work, 0, device="cuda", resume=True,
                        progress=False, log=lines.append)
    assert result.epochs == 2
    assert [line for line in lines if "bit for bit" in line] == [
        "fold 0: saved on cpu without AMP, resumed on cuda with AMP: the gradient scaler starts fresh and the "
        "resumed epochs will not repeat an uninterrupted run bit for bit"]
    state = load_state(train_state_path(work, "tiny", 0))
    assert state["device"] == "cuda" and state["amp"] is True and state["scaler"]["scale"] > 0


@pytest.mark.cuda
@CUDA
def test_fp16_and_fp32_cuda_prediction_match_the_cpu(tiny_work):
    """The same checkpoints: CUDA fp16 and fp32 clip probabilities within 2e-3 of the CPU's fp32
    ones, and lwlrap within 1e-3."""
    dataset, work = tiny_work
    experiment = tiny_experiment(model="aux_skip_attention", params={"base_size": 8}, max_epochs=3, epoch_size=64)
    train_fold(experiment, dataset, work, 0, progress=False, log=lambda *_: None)
    checkpoints = [experiment_dir(work, "tiny") / "fold_0" / "model.pt"]
    logmels = load_features(dataset, work, "test", config=experiment.audio)
    labels = read_labels_csv(dataset.root / "test_labels.csv", dataset.classes).set_index("fname")
    truth = multi_hot(labels.loc[list(dataset.test_fnames), "labels"], dataset.classes)
    cpu = Tagger.from_checkpoints(checkpoints, device="cpu").predict_spectrograms(logmels)
    for precision in ("fp16", "fp32"):
        cuda = Tagger.from_checkpoints(checkpoints, device="cuda", precision=precision).predict_spectrograms(logmels)
        assert np.abs(cuda - cpu).max() < 2e-3, precision
        assert abs(lwlrap(truth, cuda) - lwlrap(truth, cpu)) < 1e-3, precision

    # The method's full-size network (random weights) on long clips.
    torch.manual_seed(0)
    full = create_model("aux_skip_attention", num_classes=80, base_size=64, dropout=0.4, last_fc=4).eval()
    clips = [np.random.default_rng(i).uniform(-80, 0, (128, 700)).astype(np.float32) for i in range(6)]
    classes = [str(i) for i in range(80)]
    cpu = Tagger([full], classes, device="cpu").predict_spectrograms(clips)
    for precision in ("fp16", "fp32"):
        cuda = Tagger([full], classes, device="cuda", precision=precision).predict_spectrograms(clips)
        assert np.abs(cuda - cpu).max() < 2e-3, precision
    assert {p.device.type for p in full.parameters()} == {"cpu"}  # the caller's model stayed put


@pytest.mark.cuda
@CUDA
def test_the_probe_passes_on_this_gpu():
    assert device_problem("cuda") is None
    assert "sm_" in device_module.describe_device(torch.device("cuda"))


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_training_on_cuda_1_opens_no_context_on_gpu_0(tiny_data, tmp_path):
    dataset, work = tiny_data
    shutil.copytree(work, tmp_path / "work")
    script = f"""
import torch
from freesound.config import experiment_from_dict
from freesound.data.dataset import load_dataset
from freesound.training.trainer import train_fold
experiment = experiment_from_dict({{"name": "tiny", "model": {{"name": "simple_cnn", "params": {{"base_size": 4}},
    "aux_weights": [1.0]}}, "train": {{"batch_size": 8, "epoch_size": 16, "max_epochs": 1, "workers": 1}}}})
train_fold(experiment, load_dataset({str(dataset.root)!r}), {str(tmp_path / "work")!r}, 0, device="cuda:1",
           progress=False, log=lambda *_: None)
print("context on GPU 0:", torch._C._cuda_hasPrimaryContext(0))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "context on GPU 0: False" in result.stdout
