"""The whole BirdCLEF chain of issue #32 through the CLI, on synthetic soundscape data: synth
--soundscapes -> prepare -> features -> make-folds --group-by group -> two experiments trained on
chunks (birdclef_sed shrunk, and a simple CNN on the same 32 kHz front end) -> OOF -> a stacker ->
predict ENSEMBLE --windows 5 -> both window kernels in a simulated Kaggle tree -> evaluate
--metric roc_auc."""

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from freesound.data.synth_soundscapes import synthesize_soundscapes

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli, tiny_ensemble_toml  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CLASSES = ["sp01", "sp02", "sp03"]
BIRDCLEF_SED = Path(__file__).parents[1] / "experiments" / "birdclef_sed.toml"
COMPETITION, TEST_DIR = "birdclef-2025", "test_soundscapes"


def shrunk(text: str, replacements) -> str:
    """``text`` with each (setting, tiny) replaced; every setting must be there."""
    for setting, tiny in replacements:
        assert setting in text, setting
        text = text.replace(setting, tiny)
    return text


def experiment_tomls() -> dict:
    """birdclef_sed at test size (2 folds are make-folds', 1 epoch of 16 chunks), and a simple CNN
    on the same front end, tile and chunks (a stacker pairs the experiments' tiles one to one)."""
    sed = shrunk(BIRDCLEF_SED.read_text(), [("epoch_size = 128", "epoch_size = 16"), ("max_epochs = 10", "max_epochs = 1"),
                                            ("batch_size = 16", "batch_size = 8"), ("workers = 1", "workers = 0")])
    cnn = shrunk(sed, [('name = "aux_skip_attention"', 'name = "simple_cnn"\naux_weights = [1.0]'),
                       ('params = { base_size = 4, dropout = 0.2, ratio = 4, kernel_size = 7, last_filters = 8, '
                        'last_fc = 4, head = "sed" }', "params = { base_size = 4 }")])
    return {"bc_sed": sed, "bc_cnn": cnn}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_torch_thread):
    """Every step up to the kernels, through the CLI; returns the folders and the local window CSVs."""
    base = tmp_path_factory.mktemp("chain")
    source, data, work, experiments = base / "bc", base / "data", base / "work", base / "experiments"
    # synth --soundscapes with short recordings (the CLI's are 3-60 s): two one-minute soundscapes.
    # Seed 0: each of the two authors (the two folds) holds two or more species, so ROC-AUC, the
    # metric birdclef_sed keeps checkpoints by, scores both folds.
    synthesize_soundscapes(source, num_classes=3, num_recordings=6, num_soundscapes=2, seed=0,
                           recording_seconds=(3.0, 8.0), progress=False)
    run_cli("prepare", source, data)
    experiments.mkdir()
    for name, text in experiment_tomls().items():
        (experiments / f"{name}.toml").write_text(text)
    (experiments / "bc_ens.toml").write_text(tiny_ensemble_toml(["bc_sed", "bc_cnn"], epoch_size=32, max_epochs=2))
    common = ("--data", data, "--work", work, "--experiments", experiments)
    run_cli("features", *common, "--experiment", "bc_sed", "--workers", 1)
    assert "groups kept apart" in run_cli("make-folds", "--data", data, "--work", work, "--group-by", "group",
                                          "--folds", 2).output
    for name in ("bc_sed", "bc_cnn"):  # each then predicts its OOF tiles
        trained = run_cli("train", name, *common, "--device", "cpu")
        assert f"{name}: best val roc_auc per fold (first chunk)" in trained.output  # birdclef_sed's metric
    stack = run_cli("stack", "bc_ens", *common, "--device", "cpu")
    assert "bc_ens_mlp" in stack.output
    local = {}
    for name in ("bc_sed", "bc_cnn", "bc_ens"):
        local[name] = base / f"{name}_windows.csv"
        result = run_cli("predict", name, "--audio", source / TEST_DIR, "--work", work, "--experiments", experiments,
                         "--windows", 5, "--out", local[name], "--device", "cpu", "--workers", 0)
        stackers = 2 if name == "bc_ens" else 0  # the stacker's two folds apply per window
        assert (f"predicted 24 windows with {4 if name == 'bc_ens' else 2} first-level and {stackers} stacker"
                in result.output)
        assert "warning" not in result.output  # a 5 s window is one tile, as some training clip gives
    run_cli("build-kernel", "--experiment", "bc_cnn", "--ensemble", "bc_ens", "--work", work, "--experiments",
            experiments, "--out", base / "kernel", "--windows", 5, "--competition", COMPETITION, "--test-dir",
            TEST_DIR, "--target", "cpu4")
    return {"base": base, "source": source, "work": work, "experiments": experiments, "local": local,
            "kernel": base / "kernel"}


def kaggle_tree(chain, root: Path) -> list:
    """A simulated /kaggle: the competition's soundscapes, its sample submission with the rows
    reversed (the submission must follow it), and the weights dataset. Returns the sample's rows."""
    competition = root / "input" / COMPETITION
    shutil.copytree(chain["source"] / TEST_DIR, competition / TEST_DIR)
    sample = pd.read_csv(chain["source"] / "sample_submission.csv").iloc[::-1]
    sample.to_csv(competition / "sample_submission.csv", index=False)
    shutil.copytree(chain["work"] / "experiments", root / "input" / "weights" / "experiments")
    (root / "working").mkdir()
    return list(sample.row_id)


def test_the_ensemble_blends_its_experiments_and_its_stacker_on_their_window_probabilities(chain):
    from freesound.models import load_model
    from freesound.predict import geometric_mean, predict_stacker

    ensemble, sed, cnn = (pd.read_csv(chain["local"][name]).set_index("row_id")
                          for name in ("bc_ens", "bc_sed", "bc_cnn"))
    assert list(ensemble.columns) == CLASSES
    assert sorted(ensemble.index) == sorted(pd.read_csv(chain["source"] / "sample_submission.csv").row_id)
    sed, cnn = sed.loc[ensemble.index].to_numpy(), cnn.loc[ensemble.index].to_numpy()
    # Each window: the stacker's folds on the experiments' fold-gmean window probabilities (what
    # predict --windows writes for each experiment), then the blend of all three.
    folds = [load_model(chain["work"] / "experiments" / "bc_ens_mlp" / f"fold_{k}" / "model.pt") for k in (0, 1)]
    stacked = predict_stacker(folds, np.concatenate([sed, cnn], axis=1).astype(np.float32))
    np.testing.assert_allclose(ensemble.to_numpy(), geometric_mean(np.stack([sed, cnn, stacked])), rtol=0, atol=1e-5)
    assert not np.allclose(ensemble.to_numpy(), geometric_mean(np.stack([sed, cnn])), atol=1e-4)


def test_windows_longer_than_the_stackers_training_clips_are_named(chain, tmp_path):
    # 10 s windows hold 9 tiles of 501 frames at 64-frame steps; the recordings are 3-8 s.
    result = run_cli("predict", "bc_ens", "--audio", chain["source"] / TEST_DIR, "--work", chain["work"],
                     "--experiments", chain["experiments"], "--windows", 10, "--out", tmp_path / "w.csv",
                     "--device", "cpu", "--workers", 0)
    assert re.search(r"warning: a window holds 9 tiles of 'bc_sed', and its stackers learnt from means of at most "
                     r"[1-6] \(its longest out-of-fold clip\)", result.output), result.output
    assert len(pd.read_csv(tmp_path / "w.csv")) == 12


@pytest.mark.parametrize("kernel,local", [("kernel", "bc_cnn"), ("ensemble_kernel", "bc_ens")])
def test_window_kernels_equal_local_prediction_and_score_by_roc_auc(chain, kernel, local, tmp_path, monkeypatch):
    from test_kernel import run_script

    from freesound.metrics import roc_auc

    root = tmp_path / "kaggle"
    rows = kaggle_tree(chain, root)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch, as this module's: tiny models, busy CPUs
    result = run_script(chain["kernel"] / f"{kernel}.py", root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24 rows of 2 soundscapes" in result.stdout
    submission_csv = root / "working" / "submission.csv"
    submission = pd.read_csv(submission_csv)
    assert list(submission.columns) == ["row_id", *CLASSES] and list(submission.row_id) == rows
    expected = pd.read_csv(chain["local"][local]).set_index("row_id").loc[rows, CLASSES]
    np.testing.assert_allclose(submission[CLASSES].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-5)

    scored = run_cli("evaluate", submission_csv, "--labels", chain["source"] / "solution.csv", "--metric", "roc_auc")
    solution = pd.read_csv(chain["source"] / "solution.csv").set_index("row_id").loc[rows, CLASSES]
    expected_score = roc_auc(solution.to_numpy(), submission[CLASSES].to_numpy())
    assert scored.output.startswith(f"submission.csv: roc_auc {expected_score:.4f} on 24 windows")
