"""timm models through the whole chain on tiny data, by the CLI: train on every fold (one from
random weights, one from a pretrained file) -> OOF -> stack beside an AuxSkipAttention ->
select-ensemble -> predict -> both kernels run in a simulated Kaggle tree, equal to local
prediction; and ``train --resume`` and DDP (2 gloo processes) with a timm fold.

Needs timm (``make test-timm``): without it the module is skipped, and under
``FREESOUND_REQUIRE_TIMM=1`` that skip fails.
"""

from __future__ import annotations

import importlib.util
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

timm = pytest.importorskip("timm")

from conftest import run_cli, tiny_ensemble_toml, tiny_experiment_toml  # noqa: E402
from freesound.kaggle import COMPETITION  # noqa: E402
from freesound.models import load_checkpoint, load_model  # noqa: E402
from freesound.paths import train_state_path  # noqa: E402
from freesound.versions import TIMM, is_older  # noqa: E402
from test_distributed import RESUME_ATOL, freesound_command, train_args  # noqa: E402
import test_kernel  # noqa: E402
from test_kernel import run_script  # noqa: E402

pytestmark = [pytest.mark.timm, pytest.mark.filterwarnings("ignore::FutureWarning")]

#: One of timm's test networks (about 0.1M parameters), small enough to train in a test.
BACKBONE = "test_efficientnet"
#: The kernels predict with the same code, weights and runtime as local prediction (``--runtime
#: auto``: ONNX Runtime where installed, as a kernel on a CPU).
KERNEL_TOLERANCE = 1e-5


def timm_experiment_toml(head: str = "pooled", pretrained: str = "", max_epochs: int = 2) -> str:
    """A tiny timm experiment; ``pretrained`` a weights file relative to the experiment file."""
    extra = f', head = "{head}"' + (f', pretrained = "{pretrained}"' if pretrained else "")
    return (tiny_experiment_toml("timm", epoch_size=16, max_epochs=max_epochs)
            .replace("base_size = 4", f'backbone = "{BACKBONE}"{extra}'))


def write_pretrained(path) -> None:
    """A "pretrained" file as a user attaches one: a timm backbone's random weights, torch.save'd
    as a state dict (the classifier included, as in timm's own files)."""
    torch.manual_seed(123)
    torch.save(timm.create_model(BACKBONE, pretrained=False).state_dict(), path)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory, one_torch_thread):
    """tiny_timm (random init, pooled head), tiny_timm_pre (from a pretrained file, SED head) and
    tiny_asa (AuxSkipAttention) trained on every fold with OOF, the ensemble of the three stacked
    and predicted, both kernels built; then the pretrained file is deleted, as it is absent on
    Kaggle."""
    dataset, base_work = tiny_data
    root = tmp_path_factory.mktemp("timm_pipeline")
    work = root / "work"
    shutil.copytree(base_work, work)
    experiments = root / "experiments"
    experiments.mkdir()
    write_pretrained(experiments / "start.pth")
    (experiments / "tiny_timm.toml").write_text(timm_experiment_toml())
    (experiments / "tiny_timm_pre.toml").write_text(timm_experiment_toml("sed", "start.pth"))
    (experiments / "tiny_asa.toml").write_text(tiny_experiment_toml("aux_skip_attention", epoch_size=16, max_epochs=2))
    (experiments / "ens.toml").write_text(tiny_ensemble_toml(["tiny_timm", "tiny_timm_pre", "tiny_asa"]))
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    outputs = {name: run_cli("train", name, *common).output for name in ("tiny_timm", "tiny_timm_pre", "tiny_asa")}
    outputs["stack"] = run_cli("stack", "ens", *common).output
    outputs["select"] = run_cli("select-ensemble", "tiny_timm", "tiny_timm_pre", "tiny_asa", "--data", dataset.root,
                                "--work", work, "--experiments", experiments,
                                "--out", experiments / "selected.toml").output
    # The runtime a kernel picks on a CPU: ONNX Runtime where installed, else torch.
    for name in ("tiny_timm_pre", "ens"):
        run_cli("predict", name, *common, "--no-oof", "--runtime", "auto")
    run_cli("build-kernel", "--experiment", "tiny_timm_pre", "--ensemble", "ens", "--work", work,
            "--experiments", experiments, "--out", root / "kernel")
    (experiments / "start.pth").unlink()
    return {"dataset": dataset, "work": work, "experiments": experiments, "root": root, "outputs": outputs}


def kaggle_tree(trained, root):
    """The tiny dataset's test clips as the competition data; the weights one level deeper."""
    dataset = trained["dataset"]
    competition = root / "input" / COMPETITION
    shutil.copytree(dataset.root / "test", competition / "test")
    shutil.copy(dataset.root / "sample_submission.csv", competition)
    shutil.copytree(trained["work"] / "experiments", root / "input" / "freesound-weights" / "experiments")
    (root / "working").mkdir()
    return root


@pytest.mark.slow
def test_timm_experiments_train_on_every_fold_and_score_out_of_fold(trained):
    work, outputs = trained["work"], trained["outputs"]
    for name in ("tiny_timm", "tiny_timm_pre"):
        assert re.search(r"OOF lwlrap \d\.\d{4}", outputs[name]), outputs[name]
        for fold in range(3):
            checkpoint = load_checkpoint(work / "experiments" / name / f"fold_{fold}" / "model.pt")
            assert checkpoint["model_name"] == "timm" and checkpoint["model_params"]["backbone"] == BACKBONE
        oof = pd.read_csv(work / "predictions" / name / "oof.csv")
        assert sorted(oof.fname) == sorted(trained["dataset"].curated.fname)
    assert load_checkpoint(work / "experiments/tiny_timm_pre/fold_0/model.pt")["model_params"]["head"] == "sed"
    assert "blend" in outputs["stack"]
    # select-ensemble wrote an ensemble file naming a subset of the three.
    selected = (trained["experiments"] / "selected.toml").read_text()
    names = re.search(r"experiments = \[(.*?)\]", selected, re.S).group(1)
    assert set(re.findall(r'"(\w+)"', names)) <= {"tiny_timm", "tiny_timm_pre", "tiny_asa"}


@pytest.mark.slow
def test_a_fold_started_from_a_pretrained_file_loads_without_it(trained):
    model = load_model(trained["work"] / "experiments/tiny_timm_pre/fold_0/model.pt")
    assert not (trained["experiments"] / "start.pth").exists()
    with torch.inference_mode():
        logits = model(torch.zeros(2, 3, 128, 256))[0]
    assert logits.shape == (2, len(trained["dataset"].classes)) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("kernel, local", [("kernel", "tiny_timm_pre"), ("ensemble_kernel", "ens")])
def test_kernels_with_timm_models_equal_local_prediction(trained, tmp_path, monkeypatch, kernel, local):
    # timm imports tqdm (through huggingface_hub), which Kaggle's images have: the simulated image
    # still blocks click, jinja2 and kernel_build (freesound itself never imports tqdm in a kernel:
    # the import-linter contract kernel-runtime).
    assert '"tqdm", ' in test_kernel.RUNNER
    monkeypatch.setattr(test_kernel, "RUNNER", test_kernel.RUNNER.replace('"tqdm", ', ""))
    root = kaggle_tree(trained, tmp_path / "kaggle")
    result = run_script(trained["root"] / "kernel" / f"{kernel}.py", root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # timm is checked, and named with its version, before anything is predicted.
    line = f"versions: timm {timm.__version__} (installed)"
    assert line in result.stdout.splitlines()
    assert result.stdout.index(line) < result.stdout.index("sha256 verified")
    assert not is_older(timm.__version__, TIMM)
    runtime = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    assert re.search(rf"^runtime: {runtime}\b", result.stdout, re.M), result.stdout

    classes = list(trained["dataset"].classes)
    submission = pd.read_csv(root / "working" / "submission.csv").set_index("fname")
    expected = pd.read_csv(trained["work"] / "predictions" / local / "test.csv").set_index("fname")
    sample = pd.read_csv(trained["dataset"].root / "sample_submission.csv")
    assert list(submission.index) == list(sample.fname) and list(submission.columns) == classes
    np.testing.assert_allclose(submission.loc[expected.index, classes].to_numpy(), expected[classes].to_numpy(),
                               rtol=0, atol=KERNEL_TOLERANCE)


@pytest.mark.slow
def test_a_timm_fold_resumes_to_the_unbroken_runs_weights(tiny_data, tmp_path, one_torch_thread):
    dataset, base_work = tiny_data
    experiment = tmp_path / "tiny_timm.toml"
    experiment.write_text(timm_experiment_toml())
    runs = {}
    for run in ("straight", "resumed"):
        runs[run] = tmp_path / run
        shutil.copytree(base_work, runs[run])
    common = ["--data", dataset.root, "--no-oof", "--device", "cpu", "--fold", "0"]
    run_cli("train", experiment, "--work", runs["straight"], *common)
    run_cli("train", experiment, "--work", runs["resumed"], *common, "--epochs", "1")
    assert torch.load(train_state_path(runs["resumed"], "tiny_timm", 0), weights_only=False)["epoch"] == 1
    resumed = run_cli("train", experiment, "--work", runs["resumed"], *common, "--resume").output
    assert "fold 0: resuming after epoch 1" in resumed
    states = [torch.load(train_state_path(runs[run], "tiny_timm", 0), weights_only=False) for run in runs]
    assert states[0]["epoch"] == states[1]["epoch"] == 2
    for key, value in states[0]["model"].items():
        assert torch.allclose(value.float(), states[1]["model"][key].float(), rtol=0, atol=RESUME_ATOL), key


@pytest.mark.slow
def test_torchrun_trains_a_timm_fold_over_gloo(tiny_data, tmp_path):
    dataset, base_work = tiny_data
    experiment = tmp_path / "tiny_timm.toml"
    experiment.write_text(timm_experiment_toml(max_epochs=1))
    work = tmp_path / "work"
    shutil.copytree(base_work, work)
    done = freesound_command(train_args(dataset.root, work, experiment, "--fold", "0"), tmp_path, torchrun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("distributed run: 2 processes joined one process group (gloo backend, cpu)") == 1
    assert done.stdout.count("fold 0 epoch 1:") == 1
    model = load_model(work / "experiments" / "tiny_timm" / "fold_0" / "model.pt")
    assert type(model).__name__ == "TimmModel" and model.backbone_name == BACKBONE
