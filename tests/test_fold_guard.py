"""Issue 33, a fold's training state: its weights are used only once it finished training, only on
the split it trained on, and by one training at a time; ``folds.csv``, ``--fold`` and the training
settings are checked when read; a truncated resumable state is one sentence."""

import dataclasses
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import REPO, tiny_experiment_toml
from freesound.cli import main
from freesound.config import ConfigError, load_ensemble, load_experiment
from freesound.data.folds import held_out_fingerprint, make_folds, read_folds, recorded_folds, write_folds
from freesound.ensembling.stack import stacker_inputs
from freesound.errors import FreesoundError
from freesound.models import load_checkpoint
from freesound.paths import experiment_checkpoints, experiment_dir, predictions_dir, train_state_path
from freesound.tools.relabel import propose_relabels
from freesound.training.fold_guard import StaleSplitError
from freesound.training.oof import predict_oof
from freesound.training.teacher import curated_teacher_predictions
from freesound.training.trainer import train_fold

QUIET = dict(progress=False, log=lambda *_: None)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(result, *parts):
    """Exit status 1 and one stderr line, ``error: ...``, containing every one of ``parts``."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert str(part) in lines[0], (part, lines[0])


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """(dataset, work, experiments folder): ``tiny`` (2 epochs) trained on each of the 3 folds."""
    dataset, work = tiny_data
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(work, root / "work")
    (root / "experiments").mkdir()
    (root / "experiments" / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=8, max_epochs=2))
    experiment = load_experiment("tiny", root / "experiments")
    for fold in range(3):
        train_fold(experiment, dataset, root / "work", fold, **QUIET)
    return dataset, root / "work", root / "experiments"


@pytest.fixture
def trained_work(trained, tmp_path):
    dataset, work, experiments = trained
    shutil.copytree(work, tmp_path / "work")
    return dataset, tmp_path / "work", experiments


class Interrupted(Exception):
    """Stands for the kill of a training after an epoch."""


def interrupt(progress, row):
    raise Interrupted


def predict_args(dataset, work, experiments, out, *more):
    return ["predict", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments, "--no-oof",
            "--out", out, "--device", "cpu", *more]


# Item 2: a half-trained fold.

def test_an_interrupted_fold_is_refused_by_predict_and_build_kernel_until_it_is_resumed(trained_work, tmp_path):
    dataset, work, experiments = trained_work
    experiment = load_experiment("tiny", experiments)
    with pytest.raises(Interrupted):  # killed after epoch 1 of 2
        train_fold(experiment, dataset, work, 1, on_epoch=interrupt, **QUIET)
    state = torch.load(train_state_path(work, "tiny", 1), weights_only=True)
    assert state["epoch"] == 1 and not state["finished"]
    assert load_checkpoint(experiment_dir(work, "tiny") / "fold_1" / "model.pt")["epoch"] == 1

    predicted = cli(*predict_args(dataset, work, experiments, tmp_path / "p.csv"))
    assert_one_error(predicted, f"{experiment_dir(work, 'tiny')}: fold(s) 1 have not finished training",
                     "freesound train tiny --fold K --resume", "--allow-unfinished")
    assert not (tmp_path / "p.csv").exists()
    kernel = cli("build-kernel", "--experiment", "tiny", "--work", work, "--out", tmp_path / "kernel")
    assert_one_error(kernel, "fold(s) 1 have not finished training")
    assert not (tmp_path / "kernel").exists()
    estimate = cli("build-kernel", "--experiment", "tiny", "--work", work, "--estimate", "--tiles-per-second", 100)
    assert_one_error(estimate, "fold(s) 1 have not finished training")
    with pytest.raises(FreesoundError, match="fold.s. 1 have not finished training"):
        predict_oof("tiny", dataset, work, **QUIET)

    # With the flag: a warning naming the fold, and the prediction.
    allowed = cli(*predict_args(dataset, work, experiments, tmp_path / "p.csv", "--allow-unfinished"))
    assert allowed.exit_code == 0, allowed.output
    assert "warning:" in allowed.stderr and "fold(s) 1 have not finished training" in allowed.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 18  # the tiny test set
    kernel = cli("build-kernel", "--experiment", "tiny", "--work", work, "--out", tmp_path / "kernel",
                 "--allow-unfinished")
    assert kernel.exit_code == 0 and "fold(s) 1 have not finished training" in kernel.stderr
    assert (tmp_path / "kernel" / "kernel.py").is_file()

    # Resumed to its end, the fold is used without a word.
    assert train_fold(experiment, dataset, work, 1, resume=True, **QUIET).epochs == 2
    assert sorted(p.name for p in (experiment_dir(work, "tiny") / "fold_1").iterdir()) == [
        "config.toml", "log.csv", "model.pt"]
    again = cli(*predict_args(dataset, work, experiments, tmp_path / "p.csv"))
    assert again.exit_code == 0 and "warning" not in again.stderr, again.output


def test_resuming_a_fold_killed_after_its_last_save_marks_it_finished(trained_work):
    """A fold that stopped early and was killed before its marker went: resuming it clears it."""
    dataset, work, experiments = trained_work
    loaded = load_experiment("tiny", experiments)
    stopping = dataclasses.replace(loaded, train=dataclasses.replace(loaded.train, max_epochs=30,
                                                                        early_stop_patience=1, lr=1e-9))
    epochs = train_fold(stopping, dataset, work, 0, **QUIET).epochs
    assert epochs < 30 and torch.load(train_state_path(work, "tiny", 0), weights_only=True)["finished"]
    marker = experiment_dir(work, "tiny") / "fold_0" / "unfinished"
    marker.write_text("")
    assert train_fold(stopping, dataset, work, 0, resume=True, **QUIET).epochs == epochs
    assert not marker.exists()



def test_a_fresh_start_drops_the_older_runs_state(trained_work, monkeypatch):
    """A fold trained again without --resume and stopped in its first epoch: a later --resume
    starts afresh instead of continuing the older, finished run."""
    from freesound.training.trainer import FoldRun

    dataset, work, experiments = trained_work
    experiment = load_experiment("tiny", experiments)
    train_fold(experiment, dataset, work, 0, **QUIET)
    assert train_state_path(work, "tiny", 0).is_file()

    def stopped(self, epoch):
        raise Interrupted
    with monkeypatch.context() as patch:
        patch.setattr(FoldRun, "train_one_epoch", stopped)
        with pytest.raises(Interrupted):
            train_fold(experiment, dataset, work, 0, **QUIET)
    assert not train_state_path(work, "tiny", 0).exists()
    lines = []
    train_fold(experiment, dataset, work, 0, resume=True, progress=False, log=lines.append)
    assert not any("resuming" in line for line in lines), lines

def test_train_reports_an_unfinished_fold_as_not_yet_trained(trained_work):
    """Training another fold while one is unfinished reports that one as untrained (no OOF
    score yet), rather than failing on it after training."""
    dataset, work, experiments = trained_work
    with pytest.raises(Interrupted):
        train_fold(load_experiment("tiny", experiments), dataset, work, 2, on_epoch=interrupt, **QUIET)
    result = cli("train", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments,
                 "--fold", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "out-of-fold lwlrap once fold(s) 2 are trained too" in result.output


def test_weights_without_a_training_here_are_used_as_they_are(trained_work):
    """Imported weights (``import-argus``) never trained here, so they have no marker."""
    _, work, _ = trained_work
    paths = experiment_checkpoints(experiment_dir(work, "tiny"))
    assert [p.parent.name for p in paths] == ["fold_0", "fold_1", "fold_2"]


# Item 3: folds remade after training.

def test_folds_remade_after_training_are_refused_by_oof_prediction_and_resume(trained_work, tmp_path):
    dataset, work, experiments = trained_work
    original = read_folds(work, dataset.curated.fname)
    checkpoint = load_checkpoint(experiment_dir(work, "tiny") / "fold_0" / "model.pt")
    expected = held_out_fingerprint(original.fname[original.fold == 0])
    assert checkpoint["held_out"] == expected
    assert torch.load(train_state_path(work, "tiny", 0), weights_only=True)["held_out"] == expected

    write_folds(work, make_folds(dataset.curated.fname, n_folds=3, seed=7))
    with pytest.raises(StaleSplitError, match=r"fold_0/model.pt was trained holding out other clips than fold 0 "
                                              r"of .*folds.csv \(remade since\)"):
        predict_oof("tiny", dataset, work, **QUIET)
    assert not (predictions_dir(work, "tiny") / "oof_scores.json").exists()
    predicted = cli("predict", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments,
                    "--out", tmp_path / "p.csv", "--device", "cpu")
    assert_one_error(predicted, "fold_0/model.pt was trained holding out other clips than fold 0")

    longer = load_experiment("tiny", experiments)
    with pytest.raises(StaleSplitError, match=r"fold 0 of 'tiny' was trained holding out other clips than fold 0 "
                                              r"of .*folds.csv .*cannot be resumed; train it again without --resume"):
        train_fold(longer, dataset, work, 0, resume=True, max_epochs=3, **QUIET)

    write_folds(work, original)  # the folds it was trained on: accepted again
    assert set(predict_oof("tiny", dataset, work, **QUIET)["per_fold"]) == {"0", "1", "2"}



def test_make_folds_warns_when_trained_experiments_held_out_other_clips(trained_work):
    dataset, work, _ = trained_work
    same = cli("make-folds", "--data", dataset.root, "--work", work, "--folds", "3", "--seed", "42")
    assert same.exit_code == 0 and "warning" not in same.stderr, same.output  # the split trained on
    other = cli("make-folds", "--data", dataset.root, "--work", work, "--folds", "3", "--seed", "7")
    assert other.exit_code == 0, other.output
    assert other.stderr.strip() == (f"warning: {work / 'folds.csv'} now holds other folds than tiny trained on; "
                                    "predict refuses their out-of-fold predictions until they are trained again")

def test_oof_predictions_from_other_folds_are_refused_by_stack_relabel_and_teacher(trained_work):
    dataset, work, _ = trained_work
    predict_oof("tiny", dataset, work, **QUIET)
    stacker_inputs(["tiny"], dataset, work)  # on its own folds: accepted
    write_folds(work, make_folds(dataset.curated.fname, n_folds=3, seed=7))
    stale = r"oof_tiles.npz was predicted on other folds than .*folds.csv \(clip '[^']+': fold \d there, \d in folds.csv\)"
    with pytest.raises(StaleSplitError, match=stale):
        stacker_inputs(["tiny"], dataset, work)
    with pytest.raises(StaleSplitError, match=stale):
        propose_relabels("tiny", dataset, work, progress=False)
    with pytest.raises(StaleSplitError, match="teacher 'tiny': .*" + stale):
        curated_teacher_predictions("tiny", dataset, work, **QUIET)


# Item 4: two trainings of one fold.

HOLDER = """
import sys
from freesound.config import load_experiment
from freesound.data.dataset import load_dataset
from freesound.training.trainer import train_fold

def pause(progress, row):
    print(f"epoch {progress.epoch}", flush=True)
    sys.stdin.readline()

train_fold(load_experiment(sys.argv[1]), load_dataset(sys.argv[2]), sys.argv[3], 0, max_epochs=2, on_epoch=pause,
           progress=False, log=lambda *_: None)
print("done", flush=True)
"""


def start_training(dataset, work, experiments):
    """A training of fold 0 in another process, paused after its first epoch."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(experiments / "tiny.toml"), str(dataset.root),
                                str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "epoch 1"
    return process


def test_a_second_training_of_a_fold_in_training_is_refused(trained_work):
    dataset, work, experiments = trained_work
    first = start_training(dataset, work, experiments)
    try:
        args = ["train", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments, "--fold", "0",
                "--no-oof", "--device", "cpu"]
        assert_one_error(cli(*args), f"fold 0 of 'tiny' is being trained by another process (pid {first.pid}",
                         train_state_path(work, "tiny", 0).parent / "lock")
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "epoch 2"
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "done"
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
    # The first training's files are its own: two epochs, nothing of a second run.
    assert list(pd.read_csv(experiment_dir(work, "tiny") / "fold_0" / "log.csv").epoch) == [1, 2]

    # A killed training leaves no lock behind: the next one trains.
    killed = start_training(dataset, work, experiments)
    killed.kill()
    killed.wait(timeout=60)
    result = cli(*args)
    assert result.exit_code == 0, result.output


# Item 5: folds.csv and --fold.

def edit_first_row(folds, value):
    folds = folds.astype({"fold": object})
    folds.loc[0, "fold"] = value
    return folds


@pytest.mark.parametrize("edit, message", [
    (lambda f: pd.concat([f, f.iloc[:1]]), r"lists clip '{clip}' more than once \(1 clip\(s\) repeated\)"),
    (lambda f: edit_first_row(f, 7), r"clip '{clip}' has fold 7, outside 0\.\.3 \(its 4 folds must be numbered 0 to 3\)"),
    (lambda f: edit_first_row(f, -1), r"clip '{clip}' has fold -1, outside 0\.\.3"),
    (lambda f: edit_first_row(f, "one"), r"clip '{clip}' has fold 'one', not a whole number"),
    (lambda f: f.assign(fold=0), r"has 1 fold; cross-validation needs 2 or more"),
    (lambda f: f.rename(columns={"fold": "split"}), r"no column 'fold'"),
])
def test_a_bad_folds_csv_is_refused_when_read(tiny_work, edit, message):
    dataset, work = tiny_work
    folds = pd.read_csv(work / "folds.csv", dtype={"fname": str})
    edit(folds).to_csv(work / "folds.csv", index=False)
    pattern = f"{work / 'folds.csv'}.*" + message.format(clip=folds.fname[0])
    with pytest.raises(FreesoundError, match=pattern):
        read_folds(work, dataset.curated.fname)
    with pytest.raises(FreesoundError, match=pattern):
        recorded_folds(work)


def test_a_negative_fold_stops_train_with_one_sentence(tiny_work, tmp_path):
    dataset, work = tiny_work
    folds = pd.read_csv(work / "folds.csv", dtype={"fname": str})
    edit_first_row(folds, -1).to_csv(work / "folds.csv", index=False)
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=8))
    result = cli("train", tmp_path / "tiny.toml", "--data", dataset.root, "--work", work, "--no-oof", "--device", "cpu")
    assert_one_error(result, work / "folds.csv", f"clip '{folds.fname[0]}' has fold -1, outside 0..3")


def test_fold_numbers_are_checked_against_folds_csv_before_any_training(tiny_work, tmp_path):
    dataset, work = tiny_work
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=8))
    args = ["train", tmp_path / "tiny.toml", "--data", dataset.root, "--work", work, "--no-oof", "--device", "cpu"]
    assert_one_error(cli(*args, "--fold", "0", "--fold", "7"),
                     f"fold 7 is not in {work / 'folds.csv'} (its folds are 0, 1, 2)")
    assert_one_error(cli(*args, "--fold", "0", "--fold", "0"), "fold 0 is asked for 2 times; name each fold once")
    assert not experiment_dir(work, "tiny").exists()


# Item 6: training settings out of range.

@pytest.mark.parametrize("table, message", [
    ("[train]\nlr = 0.0\n", "train: lr = 0.0 is out of range: it must be above 0"),
    ("[train]\nlr = -0.001\n", "train: lr = -0.001 is out of range: it must be above 0"),
    ("[train]\nbatch_size = 1\n", "train: batch_size = 1 is out of range: it must be 2 or more"),
    ("[train]\nbatch_size = 0\n", "train: batch_size = 0 is out of range: it must be 2 or more"),
    ("[train]\nbatch_size = 8\nepoch_size = 4\n",
     "train: epoch_size = 4 is out of range: it must be at least batch_size (8), or an epoch trains no step"),
    ("[train]\nepoch_size = 0\n", "train: epoch_size = 0 is out of range"),
    ("[sampling]\nnoisy = -0.1\n", "sampling: noisy = -0.1 is out of range: a sampling share must be 0 or more"),
    ("[sampling]\ncurated = 0\ncorrected_noisy = 0\nnoisy = 0\n",
     "sampling: every sampling share is 0 (curated, corrected_noisy, noisy): at least one must be above 0"),
])
def test_training_settings_out_of_range_are_refused_when_read(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text(table)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    section, sentence = message.split(": ", 1)
    assert str(info.value).startswith(f"{path} [{section}]: {sentence}"), str(info.value)


def test_stacker_settings_out_of_range_are_refused_when_read(tmp_path):
    path = tmp_path / "ens.toml"
    path.write_text('experiments = ["a"]\n\n[[stackers]]\nname = "mlp"\nbatch_size = 64\nepoch_size = 32\n')
    with pytest.raises(ConfigError, match=r"stackers\[0\]: epoch_size = 32 is out of range: it must be at least "
                                          r"batch_size \(64\)"):
        load_ensemble(path)


def test_a_setting_out_of_range_is_one_sentence_from_train(tiny_work, tmp_path):
    dataset, work = tiny_work
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=4))  # below its batch_size, 8
    result = cli("train", tmp_path / "tiny.toml", "--data", dataset.root, "--work", work, "--device", "cpu")
    assert_one_error(result, "tiny.toml [train]: epoch_size = 4 is out of range: it must be at least batch_size (8)")
    assert not experiment_dir(work, "tiny").exists()


# Also: a truncated resumable state.

def test_a_truncated_state_is_one_sentence_on_resume(trained_work):
    dataset, work, experiments = trained_work
    state = train_state_path(work, "tiny", 0)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    result = cli("train", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments, "--fold", "0",
                 "--resume", "--no-oof", "--device", "cpu")
    assert_one_error(result, f"{state}: not a readable training state",
                     "train the fold again without --resume, which replaces it")
