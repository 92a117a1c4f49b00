"""Experiment trackers: each fold of a run logged to TensorBoard, MLflow or Weights & Biases.

    freesound train EXP --data DIR --track tensorboard --track mlflow [--tracking-uri URL]

or ``[tracking] trackers = ["tensorboard", "mlflow"]`` in the experiment. Every fold is one run,
named ``fold_<k>`` and grouped under the experiment's name; it logs

- its settings: the whole experiment, flattened to dotted keys (``train.lr``), and the fold;
- each epoch: ``train_loss``, ``val_loss``, ``val_lwlrap``, ``lr`` (the values of ``log.csv``)
  and ``samples_per_s`` (``train.epoch_size`` over the epoch's seconds, validation included);
- at its end: ``best_val_lwlrap`` and ``best_epoch``; a fold whose training raises (a failure,
  an interrupt, a search's pruned trial) ends its runs as failed instead.

Once ``train`` has scored every fold out of fold, one more run, ``oof``, holds the result
(``track_result``): the overall, per-fold and per-class OOF lwlrap and the report's PNGs.

A run that is not a fold's (a search's trial, a stacker, a self-training round) is a
``SummaryRun``, or one call of ``track_summary``: its settings, its metrics and its PNGs. A fold's
runs nest under such a run when the ``RunContext`` names it (``tracked_under``: a ``ParentRun``):
``<parent>/fold_<k>`` in the parent's group, MLflow's child run, the parent as W&B's group.

A fold resumed by ``train --resume`` continues its runs: ``state.pt`` names them (``STATE_KEY``),
and MLflow's run is reopened, TensorBoard's folder continued after the saved epoch
(``purge_step``), W&B's run id given again (``resume="allow"``). A run that is gone, or a tracker
added since, starts a new run.

Where each tracker writes by default (all under the work folder)::

    tracking/<experiment>/fold_<k>/   TensorBoard event files (``tensorboard --logdir <work>/tracking``)
    mlflow.db, mlruns/                MLflow's store and artifacts (``mlflow ui --backend-store-uri
                                      sqlite:///<work>/mlflow.db``); ``uri`` names a server instead
    wandb/                            W&B runs, offline unless WANDB_MODE or WANDB_API_KEY says otherwise

The packages come with ``pip install 'freesound[tracking]'`` and are imported only when a tracker
is asked for. A tracker never stops training: one that cannot be reached is dropped before the
first fold, and one that fails mid-run is dropped for the rest of that fold, each reported once in
the log, naming the tracker and the error; ``log.csv`` keeps every epoch. Under torchrun only
process 0 logs; with ``--devices`` each fold process logs its own folds' runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from freesound.config import Experiment, TrackingConfig
from freesound.errors import FreesoundError
from freesound.training.engine import FitState
from freesound.training.fold_options import FoldOption

#: Tracker name -> the modules it imports, the first one the package ``pip`` installs.
PACKAGES = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
#: The per-epoch values a run logs, named as in ``log.csv``; ``samples_per_s`` is computed.
EPOCH_METRICS = ("train_loss", "val_loss", "val_lwlrap", "lr", "samples_per_s")
#: MLflow takes at most this many parameters in one request.
MLFLOW_BATCH = 100
#: Characters MLflow refuses in a metric's name.
_UNSAFE = re.compile(r"[^\w.\- /]")
#: Characters of a tracker's error kept in the log line.
ERROR_CHARS = 300
#: The entry of a fold's ``state.pt`` naming its runs, so that ``train --resume`` continues them.
STATE_KEY = "tracking_runs"


class TrackerMissingError(FreesoundError):
    """A tracker was asked for whose package is not installed."""


def flat_settings(values: dict, prefix: str = "") -> dict:
    """``Experiment.to_dict()`` as one level of dotted keys, every value a number, bool or string.

    >>> flat_settings({"train": {"lr": 0.001, "folds": (0, 1)}, "name": "x"})
    {'train.lr': 0.001, 'train.folds': '[0, 1]', 'name': 'x'}
    """
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(list(value) if isinstance(value, tuple) else value)
    return flat


def epoch_metrics(row: dict, epoch_size: int) -> dict:
    """An epoch's ``log.csv`` row as the values a tracker logs (``EPOCH_METRICS``).

    ``samples_per_s`` is ``epoch_size`` clips over the epoch's ``seconds`` (training and
    validation); 0.0 when no time was measured. The val score of a ``[train] metric`` other than
    lwlrap (``val_roc_auc``, ``val_cmap``) comes after them.
    """
    metrics = {name: float(row[name]) for name in EPOCH_METRICS[:-1]}
    metrics["samples_per_s"] = epoch_size / row["seconds"] if row["seconds"] > 0 else 0.0
    metrics.update({name: float(value) for name, value in row.items()
                    if name.startswith("val_") and name not in metrics})
    return metrics


def require_packages(trackers) -> None:
    """Import each tracker's package now, so a missing one stops the run before any training.

    Raises
    ------
    TrackerMissingError
        One sentence naming the tracker and the extra that installs it.
    """
    for name in trackers:
        for module in PACKAGES[name]:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise TrackerMissingError(
                    f"tracker {name} needs the {PACKAGES[name][0]} package ({error}): "
                    "pip install 'freesound[tracking]'") from None


def mlflow_uri(config: TrackingConfig, work) -> str:
    """MLflow's tracking URI: ``config.uri``, or a SQLite store ``<work>/mlflow.db`` (MLflow 3
    refuses a plain folder store)."""
    return config.uri or f"sqlite:///{(Path(work) / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class ParentRun:
    """A summary run that other runs nest under (a search's trial, the parent of its folds' runs).

    Attributes
    ----------
    group : str, the group both are in (``RunPlace.group``)
    name : str, the parent's run name; a nested fold's run is ``<name>/fold_<k>``
    mlflow_id : str, the parent's MLflow run id ("" when MLflow is not tracking it)
    """

    group: str
    name: str
    mlflow_id: str = ""


@dataclass(frozen=True)
class RunPlace:
    """Where a run goes in each tracker.

    Attributes
    ----------
    group : str, the MLflow experiment, the W&B project and the folder under ``<work>/tracking``
    name : str, the run's name, and its TensorBoard folder under the group's (a ``/`` nests it)
    family : str, W&B's ``group`` (runs shown together); "" is ``group``
    mlflow_parent : str, the MLflow run id this run nests under; "" none
    """

    group: str
    name: str
    family: str = ""
    mlflow_parent: str = ""

    @classmethod
    def fold(cls, experiment: str, fold: int, parent: ParentRun | None = None) -> "RunPlace":
        """A fold's run: ``fold_<k>`` in the experiment's group, or ``<parent>/fold_<k>`` nested
        under ``parent`` in its group."""
        if parent is None:
            return cls(experiment, f"fold_{fold}")
        return cls(parent.group, f"{parent.name}/fold_{fold}", parent.name, parent.mlflow_id)


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:ERROR_CHARS]}{'...' if len(text) > ERROR_CHARS else ''}"


class TensorBoardRun:
    """A TensorBoard run: event files in ``<work>/tracking/<group>/<name>/``."""

    name = "tensorboard"

    def __init__(self, work, place: RunPlace, config: TrackingConfig):
        self.folder = Path(work) / "tracking" / place.group / place.name
        self.writer = None

    def start(self, params: dict, resumed: dict | None = None) -> None:
        """Open the run; ``resumed`` (``resume_info``'s and ``"epoch": N``, a fold resumed after epoch
        N) continues its folder, hiding what a killed run logged after epoch N (``purge_step``)."""
        from torch.utils.tensorboard import SummaryWriter

        if resumed and resumed.get("folder") == str(self.folder):
            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=resumed["epoch"] + 1)
            return
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.writer.add_text("settings", "\n".join(f"    {key} = {value!r}" for key, value in params.items()))

    def resume_info(self) -> dict:
        """What a resumed fold needs to continue this run: its folder."""
        return {"folder": str(self.folder)}

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # a run killed mid-fold keeps its epochs

    def log_files(self, pngs) -> None:
        from matplotlib.image import imread

        for png in pngs:
            self.writer.add_image(Path(png).stem, imread(png)[..., :3], dataformats="HWC")

    def finish(self, params: dict, summary: dict, status: str = "FINISHED", notes: dict | None = None) -> None:
        for key, value in (notes or {}).items():
            self.writer.add_text(key, value)
        # The hyperparameter table (TensorBoard's HPARAMS tab) compares folds and experiments.
        if summary:
            self.writer.add_hparams(params, {f"hparams/{key}": value for key, value in summary.items()}, run_name=".")
        self.writer.close()

    def stop(self) -> None:
        """Training raised: the run ends with the epochs it has."""
        self.writer.close()


class MlflowRun:
    """An MLflow run named ``place.name`` in the MLflow experiment named ``place.group``, nested
    under ``place.mlflow_parent`` when given."""

    name = "mlflow"

    def __init__(self, work, place: RunPlace, config: TrackingConfig):
        from mlflow.tracking import MlflowClient

        self.work, self.place, self.local = Path(work), place, not config.uri
        self.experiment = place.group
        if self.local:
            self.work.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
        self.uri = mlflow_uri(config, work)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = None

    def experiment_id(self) -> str:
        """The MLflow experiment's id, the experiment created when missing (its artifacts under
        ``<work>/mlruns/`` with the local store; a server decides its own)."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = (self.work / "mlruns" / self.experiment).resolve().as_uri() if self.local else None
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def start(self, params: dict, resumed: dict | None = None) -> None:
        """Create the run and log ``params``, or continue the run ``resumed`` names
        (``resume_info``'s, of a fold resumed now) when it is in this store."""
        from mlflow.entities import Param

        if resumed and resumed.get("uri") == self.uri and self._reopened(resumed.get("run_id", "")):
            return
        tags = {"freesound.experiment": self.place.group, "freesound.run": self.place.name}
        if self.place.mlflow_parent:
            tags["mlflow.parentRunId"] = self.place.mlflow_parent  # what MLflow's nested=True sets
        run = self.client.create_run(self.experiment_id(), run_name=self.place.name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(key, str(value)) for key, value in params.items()]
        for first in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[first:first + MLFLOW_BATCH])

    def _reopened(self, run_id: str) -> bool:
        """Whether the run ``run_id`` exists here and is running again (its settings were logged)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:  # deleted, or another store's: a new run then
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return True

    def resume_info(self) -> dict:
        """What a resumed fold needs to continue this run: its store and id."""
        return {"uri": self.uri, "run_id": self.run_id}

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, epoch) for key, value in metrics.items()])

    def log_files(self, pngs) -> None:
        for png in pngs:
            self.client.log_artifact(self.run_id, str(png))

    def finish(self, params: dict, summary: dict, status: str = "FINISHED", notes: dict | None = None) -> None:
        for key, value in (notes or {}).items():
            self.client.set_tag(self.run_id, key, value)
        if summary:
            self.log_epoch(0, summary)
        self.client.set_terminated(self.run_id, status)

    def stop(self) -> None:
        """Training raised: the run is marked FAILED."""
        self.client.set_terminated(self.run_id, "FAILED")


class WandbRun:
    """A W&B run named ``place.name`` in the project ``place.group`` and the W&B group
    ``place.family``, under ``<work>/wandb``; offline (``wandb sync`` uploads it) unless
    WANDB_MODE or WANDB_API_KEY is set."""

    name = "wandb"

    def __init__(self, work, place: RunPlace, config: TrackingConfig):
        self.work, self.place = Path(work), place
        self.run = None

    def start(self, params: dict, resumed: dict | None = None) -> None:
        """Start the run, or continue the run ``resumed`` names (``resume_info``'s: W&B's
        ``resume="allow"`` with its id)."""
        import wandb

        online = "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ
        self.work.mkdir(parents=True, exist_ok=True)
        same = {"id": resumed["id"], "resume": "allow"} if resumed and resumed.get("id") else {}
        self.run = wandb.init(project=self.place.group, name=self.place.name,
                              group=self.place.family or self.place.group, dir=str(self.work), config=params,
                              mode=None if online else "offline", reinit="create_new", **same)

    def resume_info(self) -> dict:
        """What a resumed fold needs to continue this run: its id."""
        return {"id": self.run.id}

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        self.run.log({**metrics, "epoch": epoch}, step=epoch)

    def log_files(self, pngs) -> None:
        import wandb

        self.run.log({Path(png).stem: wandb.Image(str(png)) for png in pngs})

    def finish(self, params: dict, summary: dict, status: str = "FINISHED", notes: dict | None = None) -> None:
        self.run.summary.update({**summary, **(notes or {})})
        self.run.finish(exit_code=1 if status == "FAILED" else 0)

    def stop(self) -> None:
        """Training raised: the run ends, failed (exit code 1)."""
        self.run.finish(exit_code=1)


#: Tracker name -> the class of its runs.
RUNS = {"tensorboard": TensorBoardRun, "mlflow": MlflowRun, "wandb": WandbRun}


class Guarded:
    """A run of one tracker whose failure is reported once (``log``, the line starting with
    ``label``: ``"fold 2"``) and then ignored."""

    def __init__(self, name: str, open_run: Callable[[], object], label: str, log: Callable[[str], None]):
        self.name, self.label, self.log = name, label, log
        self.run = self._call(open_run)

    def _call(self, action: Callable[[], object]):
        try:
            return action()
        except Exception as error:  # a tracker must never stop training
            self.failed(error)
            return None

    def failed(self, error: BaseException) -> None:
        self.log(f"{self.label}: tracker {self.name} failed ({_error_text(error)}); it logs nothing more "
                 "of this run, training goes on and log.csv keeps every epoch")
        self.run = None

    def call(self, method: str, *args):
        """``run.method(*args)``, unless the run has failed; its value, or None."""
        if self.run is not None:
            return self._call(lambda: getattr(self.run, method)(*args))
        return None


class Tracking(FoldOption):
    """``[tracking]``: the fold logged to each tracker (the module docstring), from the first
    epoch it trains now to its end, nested under ``parent`` when given (a search's trial). Its
    runs are named in ``state.pt`` (``STATE_KEY``) so that a resumed fold continues them; a fold
    resumed after its last epoch logs nothing."""

    def __init__(self, experiment: Experiment, work, fold: int, log: Callable[[str], None],
                 parent: ParentRun | None = None):
        self.experiment, self.work, self.fold, self.log = experiment, work, fold, log
        self.place = RunPlace.fold(experiment.name, fold, parent)
        self.params = {**flat_settings(experiment.to_dict()), "fold": fold}
        self.guarded: list[Guarded] = []
        self.resumed: dict | None = None

    def check_resume(self, state: dict) -> None:
        # The runs the saved state names continue after its last epoch.
        self.resumed = {"epoch": state["epoch"], "runs": state.get(STATE_KEY, {})}

    def begin_fit(self) -> None:
        self.guarded = opened_runs(self.experiment.tracking, self.work, self.place, self.params, self.log,
                                   f"fold {self.fold}", self.resumed)

    def state_fields(self) -> dict:
        runs = {guarded.name: guarded.call("resume_info") for guarded in self.guarded}
        return {STATE_KEY: {name: info for name, info in runs.items() if info is not None}}

    def end_epoch(self, fit_state: FitState, row: dict) -> None:
        metrics = epoch_metrics(row, self.experiment.train.epoch_size)
        for guarded in self.guarded:
            guarded.call("log_epoch", fit_state.epoch, metrics)

    def end_fold(self, fit_state: FitState) -> None:
        summary = {"best_val_lwlrap": float(fit_state.best_score), "best_epoch": float(fit_state.best_epoch)}
        for guarded in self.guarded:
            guarded.call("finish", self.params, summary)

    def abort_fold(self, error: BaseException) -> None:
        for guarded in self.guarded:
            guarded.call("stop")


def opened_runs(config: TrackingConfig, work, place: RunPlace, params: dict, log: Callable[[str], None],
                label: str, resumed: dict | None = None) -> list:
    """A started run at ``place`` of each of ``config``'s trackers, guarded (a failure reported in
    a line starting with ``label``); with ``resumed`` (``{"epoch": N, "runs": {tracker:
    resume_info}}``, a fold resumed after epoch N) each continues the run it names."""
    found = []
    for tracker in config.trackers:
        run_class = RUNS[tracker]
        guarded = Guarded(tracker, lambda: run_class(work, place, config), label, log)
        if resumed is None:
            guarded.call("start", params)
        else:
            guarded.call("start", params, {"epoch": resumed["epoch"], **resumed["runs"].get(tracker, {})})
        found.append(guarded)
    return found


class SummaryRun:
    """One run that is not a fold's (a search trial, a stacker, a self-training round), in each
    of ``config``'s trackers: opened with its ``params`` at once, ended by ``end``. Each tracker
    is guarded: one that fails is reported once (a line starting with ``label``) and dropped."""

    def __init__(self, config: TrackingConfig, work, place: RunPlace, params: dict, log: Callable[[str], None],
                 label: str):
        self.place, self.params = place, params
        self.guarded = opened_runs(config, work, place, params, log, label)

    def failed(self) -> tuple:
        """The trackers that failed on this run (each reported once)."""
        return tuple(guarded.name for guarded in self.guarded if guarded.run is None)

    def parent(self) -> ParentRun:
        """This run as the parent of the runs nested under it (``RunContext.tracked_under``)."""
        mlflow_ids = [guarded.run.run_id for guarded in self.guarded
                      if guarded.name == "mlflow" and guarded.run is not None]
        return ParentRun(self.place.group, self.place.name, mlflow_ids[0] if mlflow_ids else "")

    def end(self, metrics: dict, artifacts=(), status: str = "FINISHED", notes: dict | None = None) -> None:
        """Log ``metrics`` and the files ``artifacts`` and end the run.

        Parameters
        ----------
        metrics : name -> number. A name without ``/`` is a headline (``oof_lwlrap``): the W&B
            summary, a column of TensorBoard's HPARAMS table, an MLflow metric; one with a ``/``
            (``oof_lwlrap/fold_0``, ``class_lwlrap/Bark``) is a detail, a scalar at step 0.
        artifacts : PNG paths, images in TensorBoard and W&B, artifacts in MLflow
        status : MLflow's word for how the run ended: ``FINISHED``, ``KILLED`` (stopped early, a
            pruned trial) or ``FAILED`` (W&B marks a failed run by its exit code)
        notes : name -> text, tags of the run (``optuna.state``: ``PRUNED``): MLflow tags, W&B
            summary entries, TensorBoard texts
        """
        details = {key: float(value) for key, value in metrics.items() if "/" in key}
        headline = {key: float(value) for key, value in metrics.items() if "/" not in key}
        for guarded in self.guarded:
            if details:
                guarded.call("log_epoch", 0, details)
            if artifacts:
                guarded.call("log_files", list(artifacts))
            guarded.call("finish", self.params, headline, status, notes)


def track_summary(config: TrackingConfig, work, group: str, name: str, *, params: dict, metrics: dict,
                  artifacts=(), log: Callable[[str], None] = print, label: str = "", family: str = "") -> tuple:
    """One finished run of each of ``config``'s trackers: a result that is not a fold's.

    The API for a step that ends with a score: ``stack``'s stackers, and ``self-train``'s rounds,
    e.g. round ``k`` of experiment ``EXP`` trained as experiment ``EXP_r<k>``::

        track_summary(experiment.tracking, work, "EXP", "EXP_r2", family="self-train",
                      params={"round": 2, "threshold": 0.9, "teacher": "EXP_r1"},
                      metrics={"oof_lwlrap": 0.81, "oof_lwlrap/fold_0": 0.80, "pseudo_labels": 1234,
                               "pseudo_labels/per_clip": 1.7, "class_lwlrap/Bark": 0.9},
                      log=print)

    Parameters
    ----------
    config : the trackers (an experiment's ``[tracking]``, or ``--track``); none: nothing is logged
    work : the work folder (the local stores' home, ``<work>/tracking``, ``<work>/mlflow.db``, ...)
    group : what the run is grouped under: the MLflow experiment, the W&B project, the folder under
        ``<work>/tracking``; runs compared side by side share it
    name : the run's name (the TensorBoard folder under the group's)
    params : name -> number, bool or string (``flat_settings`` flattens a config)
    metrics : name -> number; a name with a ``/`` is a detail (``SummaryRun.end``)
    artifacts : PNG paths
    log : where a tracker's failure is reported, once, in a line starting with ``label`` (default:
        ``run <name>``); the run goes on without that tracker
    family : W&B's group within the project ("" is ``group``)

    Returns
    -------
    tuple of str, the trackers that failed (``without_trackers`` leaves them out of later runs,
    so that a broken tracker is reported once)
    """
    if not config.trackers:
        return ()
    run = SummaryRun(config, work, RunPlace(group, name, family), params, log, label or f"run {name}")
    run.end(metrics, artifacts)
    return run.failed()


def without_trackers(config: TrackingConfig, failed) -> TrackingConfig:
    """``config`` less the trackers ``failed`` (MLflow's ``uri`` goes with MLflow)."""
    trackers = tuple(name for name in config.trackers if name not in failed)
    return TrackingConfig(trackers, config.uri if "mlflow" in trackers else "")


def result_metrics(scores: dict, prefix: str = "oof_lwlrap") -> dict:
    """Out-of-fold scores (``predict_oof``'s, ``score_predictions``') as metrics: ``oof_lwlrap``,
    ``oof_lwlrap/fold_<k>`` and ``class_lwlrap/<class>`` (characters MLflow refuses in a name
    become ``_``)."""
    metrics = {prefix: float(scores["lwlrap"])}
    metrics.update({f"{prefix}/fold_{fold}": float(value) for fold, value in scores.get("per_fold", {}).items()})
    metrics.update({f"class_lwlrap/{_UNSAFE.sub('_', name)}": float(value["lwlrap"])
                    for name, value in scores["per_class"].items()})
    return metrics


def track_result(experiment: Experiment, work, scores: dict, pngs, log: Callable[[str], None]) -> None:
    """The experiment's out-of-fold result as one more run of each tracker, named ``oof``:
    ``result_metrics(scores)`` and the report's PNGs (``freesound report``'s) as images or artifacts."""
    track_summary(experiment.tracking, work, experiment.name, "oof", params=flat_settings(experiment.to_dict()),
                  metrics=result_metrics(scores), artifacts=pngs, log=log, label="the out-of-fold result")


def tracking_parts(experiment: Experiment, work, fold: int, log: Callable[[str], None], main: bool,
                   parent: ParentRun | None = None) -> list:
    """The fold run's tracking part, when the experiment names trackers and this process logs
    (``main``: process 0 of a torchrun job, or a process of its own); else none. Its runs nest
    under ``parent`` when given."""
    return [Tracking(experiment, work, fold, log, parent)] if experiment.tracking.trackers and main else []


def reachable(experiment: Experiment, work, log: Callable[[str], None], group: str | None = None) -> Experiment:
    """``experiment`` with the trackers that can be used (``usable_trackers``), its MLflow
    experiment ``group`` (default: the experiment's name)."""
    config = usable_trackers(experiment.tracking, work, group or experiment.name, log)
    return experiment if config == experiment.tracking else dataclasses.replace(experiment, tracking=config)


def usable_trackers(config: TrackingConfig, work, group: str, log: Callable[[str], None]) -> TrackingConfig:
    """``config`` with the trackers that can be used, checked once before any training: every
    package imported (a missing one raises ``TrackerMissingError``) and MLflow's store reached,
    its experiment ``group`` made. An MLflow store that cannot be reached is reported once and
    dropped: the training goes on without it."""
    require_packages(config.trackers)
    if "mlflow" not in config.trackers:
        return config
    try:
        MlflowRun(work, RunPlace(group, ""), config).experiment_id()
    except Exception as error:  # an unreachable server must not stop training
        log(f"tracker mlflow cannot be reached at {mlflow_uri(config, work)} ({_error_text(error)}); "
            "training goes on without it, and log.csv keeps every epoch")
        return without_trackers(config, ("mlflow",))
    return config
