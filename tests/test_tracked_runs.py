"""Runs that are not a fold's: a search's trials (their folds nested under them) and stack's
stackers and blend, in TensorBoard, MLflow and W&B; a tracker failing on them is reported once and
the search's or stack's result is the same as without it."""

import json
import math

import optuna
import pandas as pd
import pytest

from conftest import fake_oof_predictions, run_cli, tiny_ensemble_toml, tiny_experiment_toml
from freesound.config import TrackingConfig, load_experiment
from freesound.paths import predictions_dir
from freesound.tools.search import ExperimentTarget, TrialSetup, load_target, parse_space, run_search
from freesound.tools.tracked_runs import search_group
from freesound.training import tracking
from freesound.training.tracking import track_summary
from test_tracking import free_port, scalars, wandb_key, wandb_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PrunesTrial1(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report, never trial 0."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


def tiny_search(dataset, work, tmp_path, trackers, name="tiny", log=lambda *_: None, uri=""):
    """Two trials of a tiny experiment, one epoch on fold 0; trial 1 is pruned after its epoch."""
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml(max_epochs=1))
    target = load_target(tmp_path / "tiny.toml").tracked(trackers, uri)
    space = parse_space({"train.lr": {"loguniform": [1e-3, 1e-2]}}, target)
    return run_search(target, space, TrialSetup.create(dataset, work, [0]), trials=2, seed=0, name=name,
                      out=tmp_path / "best.toml", log=log, progress=False, pruner=PrunesTrial1())


def mlflow_client(work):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def runs_by_name(client, group) -> dict:
    found = client.search_runs([client.get_experiment_by_name(group).experiment_id])
    return {run.info.run_name: run for run in found}


# --- a search's trials --------------------------------------------------------------------------

def test_search_trials_are_runs_with_their_folds_nested(tiny_work, tmp_path):
    dataset, work = tiny_work
    result = tiny_search(dataset, work, tmp_path, ("tensorboard", "mlflow"))
    trials = result.trials.set_index("trial")
    assert list(trials.state) == ["COMPLETE", "PRUNED"]
    assert search_group("tiny") == "search-tiny"

    client = mlflow_client(work)
    runs = runs_by_name(client, "search-tiny")
    assert sorted(runs) == ["tiny-trial0", "tiny-trial0/fold_0", "tiny-trial1", "tiny-trial1/fold_0"]
    complete, pruned = runs["tiny-trial0"], runs["tiny-trial1"]
    assert complete.info.status == "FINISHED" and complete.data.tags["optuna.state"] == "COMPLETE"
    assert complete.data.params == {"trial": "0", "train.lr": str(trials["train.lr"][0])}
    assert complete.data.metrics["oof_lwlrap"] == pytest.approx(trials.lwlrap[0], rel=1e-12)
    assert complete.data.metrics["epochs"] == 1
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.state"] == "PRUNED"
    assert pruned.data.params["trial"] == "1" and "oof_lwlrap" not in pruned.data.metrics
    for trial in ("tiny-trial0", "tiny-trial1"):  # each fold's run nested under its trial's
        fold = runs[f"{trial}/fold_0"]
        assert fold.data.tags["mlflow.parentRunId"] == runs[trial].info.run_id
        [epoch] = client.get_metric_history(fold.info.run_id, "val_lwlrap")
        assert epoch.step == 1
        assert runs[trial].data.metrics["last_val_lwlrap"] == pytest.approx(epoch.value, rel=1e-12)
    assert runs["tiny-trial0/fold_0"].info.status == "FINISHED"
    assert runs["tiny-trial1/fold_0"].info.status == "FAILED"  # stopped by the pruner
    assert client.get_experiment_by_name("tiny-trial0") is None  # no MLflow experiment per trial

    board = work / "tracking" / "search-tiny"
    trial0 = scalars(board / "tiny-trial0")
    assert trial0["hparams/oof_lwlrap"][0][1] == pytest.approx(trials.lwlrap[0], rel=1e-6)
    fold0 = scalars(board / "tiny-trial0" / "fold_0")
    assert [step for step, _ in fold0["val_lwlrap"]] == [1]
    assert "hparams/oof_lwlrap" not in scalars(board / "tiny-trial1")


@pytest.mark.slow
def test_search_trials_in_wandb_are_grouped_with_their_folds(tiny_work, tmp_path, wandb_offline):
    dataset, work = tiny_work
    result = tiny_search(dataset, work, tmp_path, ("wandb",))
    found = {}
    for path in (work / "wandb").glob("offline-run-*/run-*.wandb"):
        records = wandb_records(path)
        [run] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        summary = {wandb_key(item): json.loads(item.value_json) for record in records
                   if record.WhichOneof("record_type") == "summary" for item in record.summary.update}
        found[run.display_name] = (run, summary)
    assert sorted(found) == ["tiny-trial0", "tiny-trial0/fold_0", "tiny-trial1", "tiny-trial1/fold_0"]
    assert {run.project for run, _ in found.values()} == {"search-tiny"}
    assert {name: run.run_group for name, (run, _) in found.items()} == {
        "tiny-trial0": "tiny-trial0", "tiny-trial0/fold_0": "tiny-trial0",
        "tiny-trial1": "tiny-trial1", "tiny-trial1/fold_0": "tiny-trial1"}
    run, summary = found["tiny-trial0"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update if not item.key.startswith("_")}
    assert config == {"trial": 0, "train.lr": result.trials["train.lr"][0]}
    assert summary["oof_lwlrap"] == pytest.approx(result.trials.lwlrap[0], rel=1e-12)
    assert summary["optuna.state"] == "COMPLETE" and found["tiny-trial1"][1]["optuna.state"] == "PRUNED"


def test_an_unreachable_mlflow_server_is_reported_once_per_search(tiny_work, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dataset, work = tiny_work
    lines = []
    result = tiny_search(dataset, work, tmp_path, ("mlflow", "tensorboard"), log=lines.append, uri=uri)
    notes = [line for line in lines if "tracker" in line]
    assert len(notes) == 1 and notes[0].startswith(f"tracker mlflow cannot be reached at {uri} (")
    assert list(result.trials.state) == ["COMPLETE", "PRUNED"]
    assert [step for step, _ in scalars(work / "tracking" / "search-tiny" / "tiny-trial0" / "fold_0")["val_lwlrap"]] \
        == [1]


class ScoredByLr(ExperimentTarget):
    """Trains nothing: a trial scores 1 - |log10(lr) + 2.5|, reported once."""

    def prepare(self, setup, log=print):
        def run(trial_name, params, report, parent=None):
            score = 1.0 - abs(math.log10(params["train.lr"]) + 2.5)
            report(0, score)
            return score

        return run


class FailsOnFinish:
    """A tracker run that fails as it ends ("the server went away")."""

    def __init__(self, work, place, config):
        self.place = place

    def start(self, params):
        pass

    def log_epoch(self, epoch, metrics):
        pass

    def log_files(self, pngs):
        pass

    def finish(self, params, summary, status="FINISHED", notes=None):
        raise ConnectionError("the server went away")


def test_a_tracker_failing_in_a_search_is_reported_once_and_the_search_goes_on(tiny_work, tmp_path, monkeypatch):
    monkeypatch.setitem(tracking.RUNS, "wandb", FailsOnFinish)
    dataset, work = tiny_work
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml())
    plain = ScoredByLr(load_experiment(tmp_path / "tiny.toml"))
    space = parse_space({"train.lr": {"loguniform": [1e-4, 1e-1]}}, plain)
    setup = TrialSetup.create(dataset, work, [0])
    lines = []

    def search(target, name):
        return run_search(target, space, setup, trials=3, seed=1, name=name, out=tmp_path / f"{name}.toml",
                          log=lines.append, progress=False, pruner=None)

    untracked = search(plain, "plain")
    tracked = search(plain.tracked(("wandb", "tensorboard")), "tracked")
    failures = [line for line in lines if "tracker" in line]
    assert failures == ["trial 0: tracker wandb failed (ConnectionError: the server went away); it logs nothing more "
                        "of this run, training goes on and log.csv keeps every epoch",
                        "tracker(s) wandb left out of the later trials' runs"]
    columns = ["trial", "state", "lwlrap", "train.lr"]
    pd.testing.assert_frame_equal(tracked.trials[columns], untracked.trials[columns])
    assert (tracked.best_trial, tracked.best_params) == (untracked.best_trial, untracked.best_params)
    for number in range(3):  # the tracker that works logged every trial
        logged = scalars(work / "tracking" / "search-tracked" / f"tracked-trial{number}")
        assert logged["hparams/oof_lwlrap"][0][1] == pytest.approx(untracked.trials.lwlrap[number], rel=1e-6)


def test_a_search_may_add_trackers_when_resumed(tiny_work, tmp_path):
    dataset, work = tiny_work
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml())
    plain = ScoredByLr(load_experiment(tmp_path / "tiny.toml"))
    space = parse_space({"train.lr": {"loguniform": [1e-4, 1e-1]}}, plain)
    setup = TrialSetup.create(dataset, work, [0])
    common = dict(seed=0, name="grows", out=tmp_path / "grows.toml", log=lambda *_: None, progress=False)
    run_search(plain, space, setup, trials=1, **common)
    resumed = run_search(plain.tracked(("tensorboard",)), space, setup, trials=2, **common)
    assert list(resumed.trials.trial) == [0, 1]
    assert sorted(path.name for path in (work / "tracking" / "search-grows").iterdir()) == ["grows-trial1"]


def test_search_track_options_reach_the_trials(tiny_work, tmp_path):
    dataset, work = tiny_work
    (tmp_path / "tiny.toml").write_text(tiny_experiment_toml())
    (tmp_path / "space.toml").write_text('"train.lr" = { loguniform = [1e-3, 1e-2] }\n')
    common = ["--data", dataset.root, "--work", work, "--device", "cpu", "--trials", 1, "--fold", 0,
              "--space", tmp_path / "space.toml", "--out", tmp_path / "best.toml", "--no-prune"]
    run_cli("search", tmp_path / "tiny.toml", *common, "--track", "tensorboard")
    trial = work / "tracking" / "search-tiny" / "tiny-trial0"
    assert list(trial.glob("events.out.tfevents.*")) and list((trial / "fold_0").glob("events.out.tfevents.*"))
    assert load_experiment(work / "experiments" / "tiny-trial0" / "fold_0" / "config.toml").tracking.trackers == \
        ("tensorboard",)
    assert load_experiment(tmp_path / "best.toml").tracking.trackers == ()  # the experiment file's own
    bad = run_cli("search", tmp_path / "tiny.toml", *common, "--tracking-uri", "http://127.0.0.1:1", expect=1)
    assert "uri is MLflow's tracking URI" in bad.output and "Traceback" not in bad.output


# --- stack --------------------------------------------------------------------------------------

@pytest.fixture
def stackable(tiny_work, tmp_path):
    """An ensemble ``ens`` of two experiments whose OOF predictions are random (2 tiles a clip)."""
    dataset, work = tiny_work
    folds = fake_oof_predictions(dataset, work, ("fake_a", "fake_b"))
    (tmp_path / "ens.toml").write_text(tiny_ensemble_toml(["fake_a", "fake_b"], max_epochs=1))
    return dataset, work, tmp_path / "ens.toml", sorted(set(folds.tolist()))


def stack(dataset, work, path, *options, expect=0):
    return run_cli("stack", path, "--data", dataset.root, "--work", work, "--device", "cpu", *options, expect=expect)


def test_stack_logs_each_stacker_and_the_blend(stackable):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset, work, path, folds = stackable
    stack(dataset, work, path, "--track", "tensorboard", "--track", "mlflow")
    cv = json.loads((predictions_dir(work, "ens") / "cv_scores.json").read_text())
    blend = json.loads((predictions_dir(work, "ens") / "blend_scores.json").read_text())

    client = mlflow_client(work)
    runs = runs_by_name(client, "ens")
    assert sorted(runs) == ["blend", "ens_mlp"]
    stacker = runs["ens_mlp"]
    assert stacker.info.status == "FINISHED"
    assert stacker.data.params["base_size"] == "8" and stacker.data.params["name"] == "mlp"
    assert stacker.data.params["experiments"] == '["fake_a", "fake_b"]'
    metrics = stacker.data.metrics
    assert metrics["oof_lwlrap"] == pytest.approx(cv["ens_mlp"], rel=1e-9)
    assert sorted(key for key in metrics if key.startswith("oof_lwlrap/")) == [f"oof_lwlrap/fold_{k}" for k in folds]
    assert len([key for key in metrics if key.startswith("class_lwlrap/")]) == len(dataset.classes)
    assert [artifact.path for artifact in client.list_artifacts(stacker.info.run_id)] == ["ens_mlp_per_class.png"]
    assert runs["blend"].data.metrics == pytest.approx(
        {**tracking.result_metrics(blend), **{f"cv/{name}": score for name, score in cv.items()}}, rel=1e-9)

    logged = scalars(work / "tracking" / "ens" / "ens_mlp")
    assert logged["hparams/oof_lwlrap"][0][1] == pytest.approx(cv["ens_mlp"], rel=1e-6)
    assert logged["oof_lwlrap/fold_0"][0][1] == pytest.approx(metrics["oof_lwlrap/fold_0"], rel=1e-6)
    events = EventAccumulator(str(work / "tracking" / "ens" / "ens_mlp"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["ens_mlp_per_class"]


@pytest.mark.slow
def test_stack_logs_to_wandb_offline(stackable, wandb_offline):
    dataset, work, path, _ = stackable
    stack(dataset, work, path, "--track", "wandb")
    cv = json.loads((predictions_dir(work, "ens") / "cv_scores.json").read_text())
    summaries = {}
    for run_file in (work / "wandb").glob("offline-run-*/run-*.wandb"):
        records = wandb_records(run_file)
        [run] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        assert run.project == "ens"
        summaries[run.display_name] = {wandb_key(item): json.loads(item.value_json) for record in records
                                       if record.WhichOneof("record_type") == "summary"
                                       for item in record.summary.update}
    assert sorted(summaries) == ["blend", "ens_mlp"]
    assert summaries["ens_mlp"]["oof_lwlrap"] == pytest.approx(cv["ens_mlp"], rel=1e-12)
    assert summaries["blend"]["oof_lwlrap"] == pytest.approx(cv["blend"], rel=1e-12)


def test_a_tracker_failing_in_stack_is_reported_once_and_the_stack_is_unchanged(stackable, monkeypatch):
    dataset, work, path, _ = stackable
    stack(dataset, work, path)
    plain = json.loads((predictions_dir(work, "ens") / "cv_scores.json").read_text())
    monkeypatch.setitem(tracking.RUNS, "wandb", FailsOnFinish)
    result = stack(dataset, work, path, "--track", "wandb", "--track", "tensorboard")
    failures = [line for line in result.output.splitlines() if "tracker" in line]
    assert failures == ["stacker ens_mlp: tracker wandb failed (ConnectionError: the server went away); it logs "
                        "nothing more of this run, training goes on and log.csv keeps every epoch"]
    assert json.loads((predictions_dir(work, "ens") / "cv_scores.json").read_text()) == pytest.approx(plain, rel=1e-6)
    assert scalars(work / "tracking" / "ens" / "blend")["hparams/oof_lwlrap"][0][1] == \
        pytest.approx(plain["blend"], rel=1e-6)


def test_stack_refuses_a_tracking_uri_without_mlflow(stackable):
    dataset, work, path, _ = stackable
    result = stack(dataset, work, path, "--track", "tensorboard", "--tracking-uri", "http://127.0.0.1:1", expect=1)
    assert "ensemble 'ens' --track: uri is MLflow's tracking URI" in result.output
    assert "Traceback" not in result.output
    assert not (work / "experiments" / "ens_mlp").exists()  # refused before any training


# --- the summary-run API ------------------------------------------------------------------------

def test_track_summary_splits_headline_and_detail_metrics(tmp_path):
    work = tmp_path / "work"
    failed = track_summary(TrackingConfig(("mlflow", "tensorboard")), work, "EXP", "EXP_r2", family="self-train",
                           params={"round": 2, "teacher": "EXP_r1"},
                           metrics={"oof_lwlrap": 0.81, "pseudo_labels": 1234, "oof_lwlrap/fold_0": 0.8})
    assert failed == ()
    [run] = runs_by_name(mlflow_client(work), "EXP").values()
    assert run.info.run_name == "EXP_r2" and run.data.params == {"round": "2", "teacher": "EXP_r1"}
    assert run.data.metrics == {"oof_lwlrap": 0.81, "pseudo_labels": 1234.0, "oof_lwlrap/fold_0": 0.8}
    logged = scalars(work / "tracking" / "EXP" / "EXP_r2")
    assert {key: values[0][1] for key, values in logged.items()} == pytest.approx(
        {"hparams/oof_lwlrap": 0.81, "hparams/pseudo_labels": 1234, "oof_lwlrap/fold_0": 0.8}, rel=1e-6)
    assert track_summary(TrackingConfig(), work, "EXP", "nothing", params={}, metrics={"x": 1.0}) == ()
    assert not (work / "tracking" / "EXP" / "nothing").exists()


# --- self-training rounds -------------------------------------------------------------------------

def test_a_self_training_round_is_a_run_in_the_rounds_group(tmp_path):
    from freesound.config import with_trackers
    from freesound.tools.self_training import RoundResult
    from freesound.tools.tracked_runs import self_train_group, track_round

    (tmp_path / "tiny_r1.toml").write_text(tiny_experiment_toml(max_epochs=1))
    experiment = with_trackers(load_experiment(tmp_path / "tiny_r1.toml"), ("mlflow",))
    first = RoundResult(round=1, experiment="tiny_r1", cv_lwlrap=0.625, pool=40, pseudo_labelled=31,
                        confident_share=0.5, top_label_flips=None, cpu_seconds=12.0, wall_seconds=20.0)
    track_round(first, experiment, tmp_path, "tiny", log=pytest.fail)
    run = runs_by_name(mlflow_client(tmp_path), self_train_group("tiny"))["tiny_r1"]
    assert run.data.params["round"] == "1" and run.data.params["train.max_epochs"] == "1"
    # round 1 has no earlier teacher to flip from: the metric is left out, not logged as 0
    assert run.data.metrics == {"cv_lwlrap": 0.625, "pool": 40.0, "pseudo_labelled": 31.0, "confident_share": 0.5,
                                "cpu_seconds": 12.0, "wall_seconds": 20.0}


def test_a_round_of_an_untracked_experiment_logs_nothing(tmp_path):
    from freesound.tools.self_training import RoundResult
    from freesound.tools.tracked_runs import track_round

    (tmp_path / "tiny_r1.toml").write_text(tiny_experiment_toml(max_epochs=1))
    track_round(RoundResult(round=1, experiment="tiny_r1", cv_lwlrap=0.5), load_experiment(tmp_path / "tiny_r1.toml"),
                tmp_path, "tiny", log=pytest.fail)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny_r1.toml"]
