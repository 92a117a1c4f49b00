"""Shared fixtures: one tiny synthetic dataset with cached features and folds per test session.

With ``FREESOUND_REQUIRE_TIMM=1`` (``make test-timm``) a test or test module skipped because timm
(or torchvision, which it imports) cannot be imported fails instead, so an environment that lost
timm cannot pass by skipping.
"""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from freesound.data.dataset import load_dataset
from freesound.data.features import cache_features
from freesound.data.folds import make_folds, write_folds
from freesound.data.synth import synthesize_dataset

REPO = Path(__file__).resolve().parents[1]

#: What ``pytest.importorskip("timm")`` (or of torchvision, or with a ``minversion``) says.
TIMM_MISSING = re.compile(r"could not import '(timm|torchvision)\b|module '(timm|torchvision)' has __version__")


def timm_skip_reason(report) -> str | None:
    """The reason a skipped test or module gave, when it names timm or torchvision as missing."""
    if not report.skipped or getattr(report, "wasxfail", None) is not None:
        return None
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    return reason if TIMM_MISSING.search(reason) else None


def _fail_if_timm_required(report) -> None:
    reason = timm_skip_reason(report) if os.environ.get("FREESOUND_REQUIRE_TIMM") == "1" else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"FREESOUND_REQUIRE_TIMM=1, but this was skipped for want of timm: {reason}"


#: The most pytest-xdist workers ``-n auto`` starts: past this the longest tests set the wall
#: time, and each further worker only adds its own copy of the session fixtures and of torch.
MAX_XDIST_WORKERS = 8


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown to pytest without it
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may use (its affinity, so a container's or
    ``taskset``'s limit counts; pytest-xdist's own count may see only physical cores, or all of
    the host's), at most ``MAX_XDIST_WORKERS``."""
    from freesound.settings import default_workers

    return min(default_workers(), MAX_XDIST_WORKERS)


def pytest_configure(config):
    """Under pytest-xdist, torch on one thread in each worker: the workers already use every core,
    and more threads than cores slow tiny models down. The environment (OMP_NUM_THREADS) is left
    alone: processes the tests start must compute as they do in a plain run (BLAS sums in another
    thread count round the last bit differently, and an exact golden check runs in a child)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Tests that use a module-scoped fixture of their own module form one pytest-xdist group
    (``--dist loadgroup``, as ``make test`` runs): one worker builds that fixture (often a
    training) once, as a plain run does, instead of every worker building its own. Other tests
    go to whichever worker is free."""
    for item in items:
        module = item.nodeid.partition("::")[0]
        if any(definition.scope != "function" and definition.baseid == module
               for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions):
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_timm_required(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_timm_required(outcome.get_result())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(dataset, work) for a 6-class synthetic dataset: 60 curated, 30 noisy, 18 test clips.

    Features are cached and 3 folds made; tests that write into ``work`` should copy it
    (``tiny_work``).
    """
    root = tmp_path_factory.mktemp("tiny")
    synthesize_dataset(root / "data", num_classes=6, num_curated=60, num_noisy=30, num_test=18, seed=7, progress=False)
    dataset = load_dataset(root / "data")
    work = root / "work"
    report = cache_features(dataset, work, workers=2, progress=False)
    assert not report.failures
    write_folds(work, make_folds(dataset.curated.fname, n_folds=3, seed=42))
    return dataset, work


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: tiny models gain nothing from intra-op threads, and on a
    busy shared machine they lose a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_work(tiny_data, tmp_path):
    """A private copy of the tiny dataset's work directory (features and folds)."""
    dataset, work = tiny_data
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    return dataset, copy


@pytest.fixture
def wandb_offline(monkeypatch):
    """W&B as on a machine nobody logged in to: no mode or API key from the environment (so runs
    are offline files under the work folder), and quiet."""
    for variable in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")

def tiny_experiment_toml(model="simple_cnn", *, base_size=4, lr=3e-3, epoch_size=16, max_epochs=1,
                         extra_params="") -> str:
    """An experiment TOML that trains in about a second a fold on the tiny dataset."""
    aux = "[1.0, 0.4, 0.2, 0.1]" if model == "aux_skip_attention" else "[1.0]"
    return f"""
[model]
name = "{model}"
params = {{ base_size = {base_size}{extra_params} }}
aux_weights = {aux}

[train]
lr = {lr}
batch_size = 8
epoch_size = {epoch_size}
max_epochs = {max_epochs}
workers = 0

[sampling]
curated = 0.7
corrected_noisy = 0.0
noisy = 0.3
"""


def tiny_ensemble_toml(experiments, *, base_size=8, epoch_size=32, max_epochs=2) -> str:
    """An ensemble file over ``experiments`` with one tiny FCNet stacker named ``mlp``."""
    names = ", ".join(f'"{name}"' for name in experiments)
    return f"""
experiments = [{names}]

[[stackers]]
name = "mlp"
base_size = {base_size}
reduction_scale = 2
epoch_size = {epoch_size}
batch_size = 16
max_epochs = {max_epochs}
"""


def run_cli(*args, expect=0):
    """Invoke the CLI in-process; assert the exit status and return click's result."""
    from click.testing import CliRunner

    from freesound.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output + str(result.exception)
    return result


def random_model(seed=0, classes=5):
    """A small AuxSkipAttention with random weights and non-trivial batch-norm statistics, so that
    eval mode matters."""
    import torch

    from freesound.models import create_model

    torch.manual_seed(seed)
    model = create_model("aux_skip_attention", num_classes=classes, base_size=8).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def fake_oof_predictions(dataset, work, names, seed=0) -> np.ndarray:
    """Random OOF predictions of experiments ``names`` as ``freesound predict`` writes them (2 tiles
    a clip, ``oof_tiles.npz``, ``oof.csv``, ``oof_scores.json``); return each curated clip's fold."""
    from freesound.data.dataset import probability_frame
    from freesound.data.folds import read_folds
    from freesound.paths import predictions_dir
    from freesound.training.oof import OOFTiles, save_oof_tiles

    folds = read_folds(work, dataset.curated.fname).set_index("fname").loc[dataset.curated.fname, "fold"].to_numpy()
    rng = np.random.default_rng(seed)
    for name in names:
        probs = rng.random((2 * len(folds), len(dataset.classes))).astype(np.float32)
        tiles = OOFTiles(dataset.curated.fname.to_numpy(dtype=str), folds, np.arange(0, 2 * len(folds) + 1, 2), probs)
        save_oof_tiles(predictions_dir(work, name) / "oof_tiles.npz", tiles)
        probability_frame(tiles.fnames, tiles.clip_means(), dataset.classes).to_csv(
            predictions_dir(work, name) / "oof.csv", index=False)
        (predictions_dir(work, name) / "oof_scores.json").write_text("{}")
    return folds
