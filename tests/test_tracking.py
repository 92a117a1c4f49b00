"""Experiment tracking: [tracking] and train --track, each fold a run in TensorBoard, MLflow or W&B,
whose logged values are log.csv's; a failing or unreachable tracker never stops training."""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import tomllib
import urllib.request

import pandas as pd
import pytest

from conftest import run_cli, tiny_experiment_toml
from freesound.config import ConfigError, dump_experiment, experiment_from_dict, with_trackers
from freesound.training import tracking
from freesound.training.resume_state import changed_settings
from freesound.training.tracking import (
    TrackerMissingError,
    Tracking,
    epoch_metrics,
    flat_settings,
    require_packages,
    tracking_parts,
)

EPOCH_SIZE = 16


def train(dataset, work, tmp_path, *options, epochs=2, name="tracked", expect=0):
    """``freesound train`` of a tiny experiment on fold 0; returns the CLI's result."""
    path = tmp_path / f"{name}.toml"
    if not path.exists():
        path.write_text(tiny_experiment_toml(epoch_size=EPOCH_SIZE, max_epochs=epochs))
    return run_cli("train", path, "--data", dataset.root, "--work", work, "--fold", 0, "--device", "cpu",
                   "--no-oof", *options, expect=expect)


def log_csv(work, name="tracked", fold=0) -> pd.DataFrame:
    return pd.read_csv(work / "experiments" / name / f"fold_{fold}" / "log.csv")


def saved_experiment(work, name="tracked"):
    """The experiment as the fold recorded it (its config.toml)."""
    return experiment_from_dict(tomllib.loads((work / "experiments" / name / "fold_0" / "config.toml").read_text()),
                                name=name)


def expected_metrics(log: pd.DataFrame) -> dict:
    """metric -> [value per epoch] as the trackers should log them."""
    values = {name: list(log[name]) for name in ("train_loss", "val_loss", "val_lwlrap", "lr")}
    values["samples_per_s"] = list(EPOCH_SIZE / log["seconds"])
    return values


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- settings -----------------------------------------------------------------------------------

def test_tracking_table_reads_writes_and_names_its_keys():
    experiment = experiment_from_dict({"tracking": {"trackers": ["tensorboard", "mlflow"],
                                                    "uri": "http://127.0.0.1:5000"}}, name="x")
    assert experiment.tracking.trackers == ("tensorboard", "mlflow")
    assert experiment.tracking.uri == "http://127.0.0.1:5000"
    assert 'trackers = ["tensorboard", "mlflow"]' in dump_experiment(experiment)
    assert experiment_from_dict(tomllib.loads(dump_experiment(experiment)), name="x") == experiment

    with pytest.raises(ConfigError, match=r"tracking: unknown key\(s\) tracker; valid keys are trackers, uri"):
        experiment_from_dict({"tracking": {"tracker": ["mlflow"]}})
    with pytest.raises(ConfigError, match=r"\['neptune'\] are not trackers; choose from \['tensorboard', 'mlflow', 'wandb'\]"):
        experiment_from_dict({"tracking": {"trackers": ["neptune"]}})
    with pytest.raises(ConfigError, match="names a tracker twice"):
        experiment_from_dict({"tracking": {"trackers": ["mlflow", "mlflow"]}})
    with pytest.raises(ConfigError, match="uri is MLflow's tracking URI"):
        experiment_from_dict({"tracking": {"trackers": ["tensorboard"], "uri": "http://127.0.0.1:5000"}})


def test_track_options_add_to_the_experiments_trackers():
    experiment = experiment_from_dict({"tracking": {"trackers": ["tensorboard"]}}, name="x")
    tracked = with_trackers(experiment, ("mlflow", "tensorboard"), "http://127.0.0.1:5000")
    assert tracked.tracking.trackers == ("tensorboard", "mlflow")
    assert tracked.tracking.uri == "http://127.0.0.1:5000"
    assert with_trackers(experiment).tracking == experiment.tracking
    with pytest.raises(ConfigError, match=r"experiment 'x' \[tracking\]: uri is MLflow's tracking URI"):
        with_trackers(experiment, (), "http://127.0.0.1:5000")


def test_tracking_may_change_when_a_fold_resumes():
    plain = experiment_from_dict({}, name="x").to_dict()
    tracked = experiment_from_dict({"tracking": {"trackers": ["mlflow"], "uri": "http://h:1"}}, name="x").to_dict()
    assert changed_settings(plain, tracked) == []


def test_flat_settings_and_epoch_metrics():
    flat = flat_settings(experiment_from_dict({}, name="x").to_dict())
    assert flat["name"] == "x" and flat["train.epoch_size"] > 0 and flat["tracking.trackers"] == "[]"
    assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())
    assert all(not key.startswith("source_dir") for key in flat)
    row = {"epoch": 2, "lr": 0.001, "train_loss": 0.5, "val_loss": 0.4, "val_lwlrap": 0.7, "seconds": 4.0}
    assert epoch_metrics(row, 64) == {"train_loss": 0.5, "val_loss": 0.4, "val_lwlrap": 0.7, "lr": 0.001,
                                      "samples_per_s": 16.0}
    assert epoch_metrics({**row, "seconds": 0.0}, 64)["samples_per_s"] == 0.0
    # a [train] metric other than lwlrap is tracked too
    assert epoch_metrics({**row, "val_roc_auc": 0.9}, 64) == {**epoch_metrics(row, 64), "val_roc_auc": 0.9}


def test_only_the_logging_process_tracks():
    experiment = experiment_from_dict({"tracking": {"trackers": ["tensorboard"]}}, name="x")
    assert [type(part) for part in tracking_parts(experiment, "w", 0, print, main=True)] == [Tracking]
    assert tracking_parts(experiment, "w", 0, print, main=False) == []  # torchrun's other processes
    assert tracking_parts(experiment_from_dict({}, name="x"), "w", 0, print, main=True) == []


def test_a_missing_package_is_one_sentence_naming_the_extra(tiny_work, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(TrackerMissingError, match=r"tracker mlflow needs the mlflow package .*: "
                                                  r"pip install 'freesound\[tracking\]'"):
        require_packages(("tensorboard", "mlflow"))
    dataset, work = tiny_work
    result = train(dataset, work, tmp_path, "--track", "mlflow", expect=1)
    assert "pip install 'freesound[tracking]'" in result.output and "Traceback" not in result.output
    assert not (work / "experiments" / "tracked").exists()  # refused before any training


# --- TensorBoard --------------------------------------------------------------------------------

def scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_logged(logged: dict, log: pd.DataFrame, rel=1e-6):
    """``logged`` (metric -> [(epoch, value)]) holds log.csv's epochs and values (TensorBoard keeps float32)."""
    for name, values in expected_metrics(log).items():
        assert [step for step, _ in logged[name]] == list(log["epoch"]), name
        assert [value for _, value in logged[name]] == pytest.approx(values, rel=rel), name


def test_tensorboard_logs_each_epoch_of_log_csv(tiny_work, tmp_path):
    dataset, work = tiny_work
    train(dataset, work, tmp_path, "--track", "tensorboard")
    log = log_csv(work)
    assert len(log) == 2
    logged = scalars(work / "tracking" / "tracked" / "fold_0")
    assert_logged(logged, log)
    assert logged["hparams/best_val_lwlrap"][0][1] == pytest.approx(log["val_lwlrap"].max(), rel=1e-6)
    assert logged["hparams/best_epoch"][0][1] == log["val_lwlrap"].idxmax() + 1


def test_a_resumed_fold_may_add_a_tracker_and_logs_its_new_epochs(tiny_work, tmp_path):
    dataset, work = tiny_work
    train(dataset, work, tmp_path, epochs=1)
    train(dataset, work, tmp_path, "--resume", "--epochs", "2", "--track", "tensorboard", epochs=1)
    logged = scalars(work / "tracking" / "tracked" / "fold_0")
    assert_logged(logged, log_csv(work).iloc[1:])


def test_a_resumed_fold_continues_its_runs(tiny_work, tmp_path):
    from mlflow.tracking import MlflowClient

    dataset, work = tiny_work
    train(dataset, work, tmp_path, "--track", "tensorboard", "--track", "mlflow", epochs=1)
    state = torch_load(work / "train_state" / "tracked" / "fold_0" / "state.pt")
    assert sorted(state["tracking_runs"]) == ["mlflow", "tensorboard"]
    train(dataset, work, tmp_path, "--resume", "--epochs", "2", "--track", "tensorboard", "--track", "mlflow",
          epochs=1)
    log = log_csv(work)
    assert list(log["epoch"]) == [1, 2]
    logged = scalars(work / "tracking" / "tracked" / "fold_0")  # one folder, both sessions' epochs
    assert_logged(logged, log)
    assert logged["hparams/best_val_lwlrap"][-1][1] == pytest.approx(log["val_lwlrap"].max(), rel=1e-6)

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert run.info.run_id == state["tracking_runs"]["mlflow"]["run_id"] and run.info.status == "FINISHED"
    history = {name: [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, name)]
               for name in expected_metrics(log)}
    assert_logged(history, log, rel=1e-12)
    assert run.data.metrics["best_val_lwlrap"] == pytest.approx(log["val_lwlrap"].max(), rel=1e-12)


def torch_load(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


class FailsOnEpoch2:
    """A tracker run whose second epoch raises; records what it was given."""

    epochs = []

    def __init__(self, work, place, config):
        FailsOnEpoch2.epochs = []

    def start(self, params):
        pass

    def log_epoch(self, epoch, metrics):
        if epoch == 2:
            raise RuntimeError("the tracker's disk is full")
        FailsOnEpoch2.epochs.append(epoch)

    def resume_info(self):
        return {}

    def finish(self, params, summary):
        raise AssertionError("a failed run is not finished")


def test_a_tracker_failing_mid_run_is_reported_once_and_training_goes_on(tiny_work, tmp_path, monkeypatch):
    monkeypatch.setitem(tracking.RUNS, "wandb", FailsOnEpoch2)
    dataset, work = tiny_work
    result = train(dataset, work, tmp_path, "--track", "wandb", "--track", "tensorboard", epochs=3)
    failures = [line for line in result.output.splitlines() if "failed" in line]
    assert failures == ["fold 0: tracker wandb failed (RuntimeError: the tracker's disk is full); it logs nothing "
                        "more of this run, training goes on and log.csv keeps every epoch"]
    assert FailsOnEpoch2.epochs == [1]
    log = log_csv(work)
    assert list(log["epoch"]) == [1, 2, 3]
    assert (work / "experiments" / "tracked" / "fold_0" / "model.pt").is_file()
    assert_logged(scalars(work / "tracking" / "tracked" / "fold_0"), log)  # the other tracker logged on


class FailsOnSave:
    """A tracker run that cannot say how to continue it when the fold's state is saved."""

    def __init__(self, work, place, config):
        pass

    def start(self, params):
        pass

    def log_epoch(self, epoch, metrics):
        pass

    def resume_info(self):
        raise OSError("no space left on the tracker's disk")


def test_a_tracker_failing_as_the_state_is_saved_is_reported_once_and_training_goes_on(tiny_work, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setitem(tracking.RUNS, "wandb", FailsOnSave)
    dataset, work = tiny_work
    result = train(dataset, work, tmp_path, "--track", "wandb")
    failures = [line for line in result.output.splitlines() if "failed" in line]
    assert failures == ["fold 0: tracker wandb failed (OSError: no space left on the tracker's disk); it logs "
                        "nothing more of this run, training goes on and log.csv keeps every epoch"]
    assert list(log_csv(work)["epoch"]) == [1, 2]
    assert (work / "experiments" / "tracked" / "fold_0" / "model.pt").is_file()


# --- MLflow -------------------------------------------------------------------------------------

def assert_mlflow_run(client, experiment_name: str, log: pd.DataFrame, settings: dict):
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_name for run in runs] == ["fold_0"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params == {key: str(value) for key, value in {**settings, "fold": 0}.items()}
    logged = {name: [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, name)]
              for name in expected_metrics(log)}
    assert_logged(logged, log, rel=1e-12)
    assert run.data.metrics["best_val_lwlrap"] == pytest.approx(log["val_lwlrap"].max(), rel=1e-12)
    assert run.data.tags["freesound.run"] == "fold_0"


def test_mlflow_logs_to_a_local_store_in_the_work_folder(tiny_work, tmp_path):
    from mlflow.tracking import MlflowClient

    dataset, work = tiny_work
    train(dataset, work, tmp_path, "--track", "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    settings = flat_settings(saved_experiment(work).to_dict())
    assert settings["tracking.trackers"] == "['mlflow']"
    assert_mlflow_run(client, "tracked", log_csv(work), settings)
    assert client.get_experiment_by_name("tracked").artifact_location == (work / "mlruns" / "tracked").as_uri()


def test_an_unreachable_mlflow_server_is_reported_once_and_training_goes_on(tiny_work, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dataset, work = tiny_work
    started = time.monotonic()
    result = train(dataset, work, tmp_path, "--track", "mlflow", "--tracking-uri", uri, "--track", "tensorboard")
    assert time.monotonic() - started < 60
    notes = [line for line in result.output.splitlines() if "tracker" in line]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"tracker mlflow cannot be reached at {uri} (")
    assert notes[0].endswith("); training goes on without it, and log.csv keeps every epoch")
    log = log_csv(work)
    assert list(log["epoch"]) == [1, 2]
    assert_logged(scalars(work / "tracking" / "tracked" / "fold_0"), log)


@pytest.fixture
def mlflow_server(tmp_path):
    """A live MLflow tracking server on a free localhost port (SQLite backend in ``tmp_path``);
    yields its URI and stops it after the test."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer within 120 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_logs_to_a_live_server(tiny_work, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    dataset, work = tiny_work
    train(dataset, work, tmp_path, "--track", "mlflow", "--tracking-uri", mlflow_server)
    assert not (work / "mlflow.db").exists()
    saved = saved_experiment(work)
    assert saved.tracking.uri == mlflow_server
    assert_mlflow_run(MlflowClient(tracking_uri=mlflow_server), "tracked", log_csv(work),
                      flat_settings(saved.to_dict()))


# --- Weights & Biases ---------------------------------------------------------------------------

#: W&B's run file (run-<id>.wandb): LevelDB's log format, 32 KiB blocks of records, after a header.
WANDB_HEADER, WANDB_BLOCK, FULL, FIRST, MIDDLE, LAST = b":W&B", 32768, 1, 2, 3, 4


def wandb_records(path, wait_s=60) -> list:
    """The protobuf records of an offline W&B run file (``wandb.proto.wandb_internal_pb2.Record``),
    once it ends with its ``exit`` record: W&B's service process may still be writing it when
    ``finish`` returns (at most ``wait_s`` seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_file_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _wandb_file_records(path) -> list:
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == WANDB_HEADER
    found, position, pending = [], 7, b""
    while position + 7 <= len(data):
        left = WANDB_BLOCK - position % WANDB_BLOCK
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            position += left
            continue
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def wandb_key(item) -> str:
    """A history or summary item's key (W&B writes some as a one-part ``nested_key``)."""
    return item.key or ".".join(item.nested_key)


def test_wandb_logs_offline_under_the_work_folder(tiny_work, tmp_path, wandb_offline):
    dataset, work = tiny_work
    train(dataset, work, tmp_path, "--track", "wandb")
    [run_file] = list((work / "wandb").glob("offline-run-*/run-*.wandb"))
    records = wandb_records(run_file)
    [run] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == ("fold_0", "tracked")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {key: value for key, value in config.items() if not key.startswith("_")} == \
        {**flat_settings(saved_experiment(work).to_dict()), "fold": 0}
    history = [{wandb_key(item): json.loads(item.value_json) for item in record.history.item}
               for record in records if record.WhichOneof("record_type") == "history"]
    logged = {name: [(row["epoch"], row[name]) for row in history if "epoch" in row] for name in tracking.EPOCH_METRICS}
    log = log_csv(work)
    assert_logged(logged, log, rel=1e-12)
    summary = {wandb_key(item): json.loads(item.value_json) for record in records
               if record.WhichOneof("record_type") == "summary" for item in record.summary.update}
    assert summary["best_val_lwlrap"] == pytest.approx(log["val_lwlrap"].max(), rel=1e-12)


@pytest.mark.slow
def test_a_resumed_fold_continues_its_wandb_run(tiny_work, tmp_path, wandb_offline):
    dataset, work = tiny_work
    train(dataset, work, tmp_path, "--track", "wandb", epochs=1)
    train(dataset, work, tmp_path, "--resume", "--epochs", "2", "--track", "wandb", epochs=1)
    runs = []
    for run_file in sorted((work / "wandb").glob("offline-run-*/run-*.wandb")):
        records = wandb_records(run_file)
        [run] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        history = [{wandb_key(item): json.loads(item.value_json) for item in record.history.item}
                   for record in records if record.WhichOneof("record_type") == "history"]
        runs.append((run.run_id, [row["epoch"] for row in history if "epoch" in row]))
    state_id = torch_load(work / "train_state" / "tracked" / "fold_0" / "state.pt")["tracking_runs"]["wandb"]["id"]
    assert runs == [(state_id, [1]), (state_id, [2])]  # the resumed session names the same run


# --- folds on several devices -------------------------------------------------------------------

@pytest.mark.slow
def test_each_fold_on_its_own_device_is_its_own_run(tiny_work, tmp_path):
    dataset, work = tiny_work
    path = tmp_path / "tracked.toml"
    path.write_text(tiny_experiment_toml(epoch_size=EPOCH_SIZE, max_epochs=2))
    run_cli("train", path, "--data", dataset.root, "--work", work, "--fold", 0, "--fold", 1, "--devices", "cpu,cpu",
            "--no-oof", "--track", "tensorboard")
    for fold in (0, 1):
        assert_logged(scalars(work / "tracking" / "tracked" / f"fold_{fold}"), log_csv(work, fold=fold))


# --- the out-of-fold result ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_out_of_fold_result_is_a_run_with_the_reports_pngs(tiny_work, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset, work = tiny_work
    path = tmp_path / "tracked.toml"
    path.write_text(tiny_experiment_toml(epoch_size=EPOCH_SIZE, max_epochs=1))
    run_cli("train", path, "--data", dataset.root, "--work", work, "--device", "cpu", "--track", "tensorboard",
            "--track", "mlflow")
    scores = json.loads((work / "predictions" / "tracked" / "oof_scores.json").read_text())
    expected = {"oof_lwlrap": scores["lwlrap"],
                **{f"oof_lwlrap/fold_{fold}": value for fold, value in scores["per_fold"].items()},
                **{f"class_lwlrap/{name}": value["lwlrap"] for name, value in scores["per_class"].items()}}
    assert len(expected) == 1 + 3 + len(dataset.classes)

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["fold_0", "fold_1", "fold_2", "oof"]
    [oof] = [run for run in runs if run.info.run_name == "oof"]
    assert oof.data.metrics == pytest.approx(expected, rel=1e-12)
    assert sorted(artifact.path for artifact in client.list_artifacts(oof.info.run_id)) == \
        ["per_class.png", "training_curves.png"]

    events = EventAccumulator(str(work / "tracking" / "tracked" / "oof"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["per_class", "training_curves"]
    logged = scalars(work / "tracking" / "tracked" / "oof")
    assert {name: values[0][1] for name, values in logged.items() if not name.startswith("hparams/")} == \
        pytest.approx({key: value for key, value in expected.items() if key != "oof_lwlrap"}, rel=1e-6)
    assert logged["hparams/oof_lwlrap"][0][1] == pytest.approx(scores["lwlrap"], rel=1e-6)


def test_out_of_fold_metric_names_are_ones_mlflow_takes():
    metrics = tracking.result_metrics({"lwlrap": 0.5, "per_fold": {"0": 0.4},
                                       "per_class": {"Bass_(guitar)": {"lwlrap": 0.3, "weight": 0.1}}})
    assert metrics == {"oof_lwlrap": 0.5, "oof_lwlrap/fold_0": 0.4, "class_lwlrap/Bass__guitar_": 0.3}


# --- freesound compare --------------------------------------------------------------------------

def write_trained(work, name, curves: dict, scores: dict | None = None):
    """A trained experiment's files as compare reads them: fold -> [val lwlrap per epoch]."""
    for fold, values in curves.items():
        folder = work / "experiments" / name / f"fold_{fold}"
        folder.mkdir(parents=True)
        epochs = range(1, len(values) + 1)
        pd.DataFrame({"epoch": epochs, "lr": 0.001, "train_loss": 0.5, "val_loss": 0.4, "val_lwlrap": values,
                      "seconds": 1.0}).to_csv(folder / "log.csv", index=False)
    if scores is not None:
        (work / "predictions" / name).mkdir(parents=True)
        (work / "predictions" / name / "oof_scores.json").write_text(json.dumps(scores))


def test_compare_tables_and_draws_experiments_side_by_side(tmp_path):
    work = tmp_path / "work"
    write_trained(work, "a", {0: [0.5, 0.7, 0.6], 1: [0.4, 0.8, 0.9]},
                  {"lwlrap": 0.75, "clips": 10, "per_fold": {"0": 0.7, "1": 0.8},
                   "per_class": {"Bark": {"lwlrap": 0.9, "weight": 0.5}, "Hiss": {"lwlrap": 0.6, "weight": 0.5}}})
    write_trained(work, "b", {0: [0.3, 0.35], 1: [0.2, 0.25]})
    result = run_cli("compare", "a", "b", "--work", work)
    lines = result.output.splitlines()
    assert lines[0].split() == ["folds", "fold", "0", "fold", "1", "mean", "best", "val", "OOF", "lwlrap"]
    assert lines[2].split() == ["a", "2", "0.7000", "0.9000", "0.8000", "0.7500"]
    assert lines[3].split() == ["b", "2", "0.3500", "0.2500", "0.3000", "-"]
    assert "OOF lwlrap per class (worst first)" in result.output
    assert [line.split() for line in lines[lines.index("OOF lwlrap per class (worst first)") + 2:][:2]] == \
        [["Hiss", "0.6000"], ["Bark", "0.9000"]]
    png = work / "predictions" / "compare.png"
    assert lines[-1] == f"plot -> {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    missing = run_cli("compare", "a", "c", "--work", work, expect=1)
    assert f"no training logs in {work / 'experiments' / 'c'}" in missing.output
    assert "Traceback" not in missing.output
    twice = run_cli("compare", "a", "a", "--work", work, expect=1)
    assert "compare: a given more than once" in twice.output


# --- torchrun -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_under_torchrun_only_process_0_logs(tiny_work, tmp_path):
    from mlflow.tracking import MlflowClient

    dataset, work = tiny_work
    path = tmp_path / "tracked.toml"
    path.write_text(tiny_experiment_toml(epoch_size=EPOCH_SIZE, max_epochs=2))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "freesound", "train", str(path), "--data", str(dataset.root), "--work", str(work), "--fold", "0",
               "--device", "cpu", "--no-oof", "--track", "tensorboard", "--track", "mlflow"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FREESOUND_DDP_TIMEOUT_S": "120"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    log = log_csv(work)
    assert list(log["epoch"]) == [1, 2]
    events = list((work / "tracking" / "tracked" / "fold_0").glob("events.out.tfevents.*"))
    assert len({event.name.split(".")[-2] for event in events}) == 1  # one process id wrote them
    assert_logged(scalars(work / "tracking" / "tracked" / "fold_0"), log)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert [run.info.run_name for run in runs] == ["fold_0"]


def test_a_fold_stopped_by_an_error_ends_its_runs_as_failed(tiny_work):
    from mlflow.tracking import MlflowClient

    from freesound.training.context import RunContext
    from freesound.training.experiment_training import train_folds

    class Pruned(Exception):
        pass

    def prune(fold, fit_state, row):
        if fit_state.epoch == 2:
            raise Pruned  # as a search stops a trailing trial

    dataset, work = tiny_work
    experiment = with_trackers(experiment_from_dict(tomllib.loads(tiny_experiment_toml(
        epoch_size=EPOCH_SIZE, max_epochs=3)), name="tracked"), ("mlflow",))
    with pytest.raises(Pruned):
        train_folds(experiment, dataset, work, [0], context=RunContext.create("cpu", progress=False), on_epoch=prune,
                    score_oof=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert run.info.status == "FAILED"
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "val_lwlrap")] == [1, 2]
    assert "best_val_lwlrap" not in run.data.metrics
