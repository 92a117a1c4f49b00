"""Hyperparameter search on Optuna, each trial trained by the normal training code and scored by
OOF lwlrap (or another metric of ``freesound.metrics.METRICS``, see Metric below).

Targets
-------
An experiment file: each trial is a copy of the experiment with sampled settings, trained fold by
fold with ``freesound.training.experiment_training.train_folds`` as ``<work>/experiments/<name>-trial<i>/`` and
scored by the lwlrap of its out-of-fold tile-mean predictions on the validation clips of the
trained folds. An ensemble file: each trial is a copy of the ensemble's first stacker (the
``StackerConfig`` defaults when it has none) with sampled settings, trained with
``freesound.ensembling.stack.train_stacker_fold`` on the ensemble's OOF predictions and scored by
its out-of-fold lwlrap.

Metric
------
A target's ``metric`` (``with_metric``, ``search --metric``) is what a trial is scored by: lwlrap
by default, or ROC-AUC or padded cmAP. An experiment target's is its ``[train] metric``, which its
trials also train by (best checkpoint, plateau, early stop) and report each epoch for pruning; a
stacker target's scores the stackers' out-of-fold predictions (stackers still train and report
val lwlrap). ``trials.csv``'s score column is named by the metric.

Search space
------------
A TOML file whose keys are config paths: dotted experiment keys (``train.lr``,
``model.params.dropout``, ``mixers.prob``, ``loss.noisy.beta``; quoted or as tables) or, for an
ensemble, ``StackerConfig`` fields (``lr``, ``p_dropout``). Each value is one distribution, which
becomes an Optuna distribution: ``uniform = [low, high]`` a ``FloatDistribution``, ``loguniform``
one with ``log=True`` (low > 0), ``int`` an ``IntDistribution`` (both ends included), ``choice = [...]``
a ``CategoricalDistribution`` (any TOML values); a plain value is fixed in every trial.
``freesound.tools.spaces`` holds an example and the default spaces (``search --help`` shows them).

Every key and every value a distribution can give is checked against the config before any trial
runs (the config's own validation, so an unknown key lists the valid ones); errors name the key.

Sampling, pruning, storage
--------------------------
The sampler is Optuna's TPE (default), random or grid, seeded: trial ``i`` samples with a seed
made from ``(seed, i)``, so one process with the same seed repeats the same first trial, and
several processes on one study do not draw the same random settings. Each epoch's val lwlrap is
reported to the trial through the trainers' ``on_epoch`` hook, as step ``fold position *
max_epochs + epoch``; a median (default) or Hyperband pruner stops a trial that trails, and its
weights are removed, so a pruned trial is never taken for a trained experiment.

The study lives in a storage: by default the SQLite file ``<work>/search/<name>/study.db``, or any
database URL Optuna takes (``--storage postgresql://...``) shared by many machines. Every process
running the same search on one storage takes the next trial number, so no trial runs twice, and
the search stops once ``trials`` trials are finished (complete or pruned) or running. Trials send
a heartbeat; a trial whose process was killed is marked failed once its heartbeat is older than the
grace period, its partial weights are removed, and it is retried once with the same settings
(Optuna's ``RetryFailedTrialCallback``). A trial interrupted in a live process (Ctrl-C) is marked
failed and not retried. A search's settings (target, base config, space, seed, folds, epochs,
sampler) are stored in the study: resuming or joining it with other settings is refused.

Files
-----
Under ``<work>/search/<name>/``::

    study.db      the Optuna study (unless --storage names another)
    trials.csv    trial, name, state, lwlrap (the metric), epochs, seconds, then one column per searched key;
                  rewritten from the study after every trial
    progress.png  OOF lwlrap per trial and the best so far

and the best trial's config, after every trial, as an experiment (or ensemble) file, by default
``experiments/<name>-best.toml``.

Tracking
--------
With trackers (the experiment's ``[tracking]``, or ``search --track``), each trial is a run in the
group ``search-<name>``, its folds' runs nested under it (``freesound.tools.tracked_runs``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import sqlalchemy
from optuna.trial import TrialState

from freesound.config import (
    ConfigError,
    EnsembleConfig,
    Experiment,
    StackerConfig,
    TrackingConfig,
    dump_ensemble,
    dump_toml,
    experiment_from_dict,
    load_config,
    merge_table,
    read_toml,
    stacker_from_dict,
    with_trackers,
)
from freesound.data.dataset import Dataset, multi_hot
from freesound.data.folds import read_folds
from freesound.ensembling.stack import stacker_inputs, train_stacker_fold
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv, atomic_write_text
from freesound.metrics import METRICS, check_metric
from freesound.paths import experiment_dir, fold_dir, search_dir, train_state_dir
from freesound.progress import progress_bar
from freesound.tools.plots import plot_search_progress
from freesound.tools.spaces import DEFAULT_EXPERIMENT_SPACE, DEFAULT_STACKER_SPACE
from freesound.tools.tracked_runs import end_trial_run, ensemble_trackers, open_trial_run, search_group
from freesound.training.oof import ensure_oof, predict_fold_tiles
from freesound.training.context import RunContext
from freesound.training.experiment_training import train_folds
from freesound.training.fold_parts import check_experiment
from freesound.training.resume_state import TRACKING_SETTINGS, changed_settings
from freesound.training.tracking import usable_trackers

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband")
TRIALS_CSV = "trials.csv"
STUDY_DB = "study.db"
PROGRESS_PNG = "progress.png"
#: The columns of ``trials.csv`` before the searched keys.
TRIAL_COLUMNS = ["trial", "name", "state", "lwlrap", "epochs", "seconds"]
#: Seconds between a running trial's heartbeats, and the silence after which it counts as dead.
HEARTBEAT = (30, 120)
#: Tries at creating a storage that another process may be creating at the same moment.
STORAGE_ATTEMPTS = 5


class SearchSpaceError(ConfigError):
    """A bad search space; the message names the key and what is wrong."""


# --------------------------------------------------------------------------------------------
# Search spaces


#: Values Optuna's CategoricalDistribution holds as they are; other choices are drawn by index.
_CATEGORICAL_TYPES = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Distribution:
    """One searched setting.

    Attributes
    ----------
    kind : one of ``DISTRIBUTIONS``, or ``"fixed"`` for a plain value
    args : ``(low, high)`` for ``uniform``, ``loguniform`` and ``int``; the options for
        ``choice``; ``(value,)`` for ``fixed``
    """

    kind: str
    args: tuple

    @property
    def by_index(self) -> bool:
        """A choice among values Optuna cannot store (tables, lists) is drawn as an option index."""
        return self.kind == "choice" and not all(isinstance(v, _CATEGORICAL_TYPES) for v in self.args)

    def suggest(self, trial, key: str):
        """The trial's value for ``key``, drawn by its sampler (a fixed value draws nothing)."""
        if self.kind == "uniform":
            return trial.suggest_float(key, *self.args)
        if self.kind == "loguniform":
            return trial.suggest_float(key, *self.args, log=True)
        if self.kind == "int":
            return trial.suggest_int(key, *self.args)
        if self.kind == "choice":
            return self.value(trial.suggest_categorical(key, self.options()))
        return copy.deepcopy(self.args[0])

    def options(self) -> list:
        """The categorical values Optuna draws from (option indices for ``by_index`` choices)."""
        return list(range(len(self.args))) if self.by_index else list(self.args)

    def value(self, drawn):
        """The setting's value for what Optuna stored (an option index for ``by_index`` choices)."""
        return copy.deepcopy(self.args[drawn] if self.by_index else drawn)

    def grid(self) -> list:
        """Every value grid search visits (only ``choice`` and ``int`` have a finite grid)."""
        if self.kind == "int":
            return list(range(self.args[0], self.args[1] + 1))
        return self.options()

    def extremes(self) -> list:
        """Values spanning what ``suggest`` can give (both bounds, every option), for checking."""
        if self.kind in ("uniform", "loguniform"):
            return [float(v) for v in self.args]
        return list(self.args)

    def to_json(self):
        return self.args[0] if self.kind == "fixed" else {self.kind: list(self.args)}


@dataclass(frozen=True)
class SearchSpace:
    """Searched settings: dotted config key -> ``Distribution``, in file order."""

    params: dict

    def suggest(self, trial) -> dict:
        """A trial's settings, every key drawn from the trial's sampler (fixed keys as given)."""
        return {key: distribution.suggest(trial, key) for key, distribution in self.params.items()}

    def settings(self, drawn: dict) -> dict:
        """A trial's settings from what Optuna stored (``FrozenTrial.params``); keys a running trial
        has not drawn yet are left out."""
        return {key: copy.deepcopy(distribution.args[0]) if distribution.kind == "fixed"
                else distribution.value(drawn[key]) for key, distribution in self.params.items()
                if distribution.kind == "fixed" or key in drawn}

    def grid(self) -> dict:
        """Grid search's space: every searched key's values.

        Raises
        ------
        SearchSpaceError
            A continuous distribution, which has no grid.
        """
        continuous = [key for key, d in self.params.items() if d.kind in ("uniform", "loguniform")]
        if continuous:
            raise SearchSpaceError(f"grid search needs choice or int distributions, but {', '.join(continuous)} "
                                   "are continuous; give them as choice lists")
        return {key: d.grid() for key, d in self.params.items() if d.kind != "fixed"}

    def to_json(self) -> dict:
        return {key: distribution.to_json() for key, distribution in self.params.items()}


def _lookup(template, key: str):
    """The value at a dotted key of a nested dict, or None."""
    node = template
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _flatten(values: dict, template: dict, prefix: str = "") -> dict:
    """Nested tables to dotted keys, descending only where the config has a table and the value
    is not a distribution."""
    flat = {}
    for key, value in values.items():
        path = prefix + key
        if (isinstance(value, dict) and isinstance(_lookup(template, path), dict)
                and not set(value) & set(DISTRIBUTIONS)):
            for sub_key, sub_value in _flatten(value, template, path + ".").items():
                if sub_key in flat:
                    raise SearchSpaceError(f"{sub_key!r} is given twice")
                flat[sub_key] = sub_value
        elif path in flat:
            raise SearchSpaceError(f"{path!r} is given twice")
        else:
            flat[path] = value
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_distribution(value, where: str) -> Distribution:
    """A space entry: a one-key table naming a distribution, or a plain (fixed) value."""
    if not isinstance(value, dict):
        return Distribution("fixed", (value,))
    unknown = sorted(set(value) - set(DISTRIBUTIONS))
    if unknown:
        raise SearchSpaceError(f"{where}: unknown distribution {', '.join(unknown)}; use one of "
                               f"{', '.join(DISTRIBUTIONS)} (or a plain value to fix the setting)")
    if len(value) != 1:
        raise SearchSpaceError(f"{where}: give exactly one distribution, got {', '.join(value)}")
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}: choice needs a non-empty list of options, got {args!r}")
        return Distribution(kind, tuple(args))
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(v) for v in args)):
        raise SearchSpaceError(f"{where}: {kind} needs bounds [low, high] (two numbers), got {args!r}")
    low, high = args
    if kind == "int" and not all(isinstance(v, int) for v in args):
        raise SearchSpaceError(f"{where}: int needs integer bounds, got {args!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SearchSpaceError(f"{where}: bad bounds {args!r} for {kind}: need finite low < high")
    if kind == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: bad bounds {args!r} for loguniform: low must be above 0")
    return Distribution(kind, (low, high))


def parse_space(values: dict, target, where: str = "search space") -> SearchSpace:
    """Parse and check a search space (the TOML file as a dict) for ``target``.

    Every key must be a setting of the target's config and every value its distribution can
    give must pass the config's validation.

    Raises
    ------
    SearchSpaceError
        Naming ``where``, the key, and what is wrong: an unknown key (with the valid ones), a
        value of the wrong type, an unknown distribution, bad bounds, an empty space.
    """
    template = target.template()
    try:
        flat = _flatten(values, template)
    except SearchSpaceError as error:
        raise SearchSpaceError(f"{where}: {error}") from None
    if not flat:
        raise SearchSpaceError(f"{where}: no settings to search")
    params = {}
    for key, value in flat.items():
        if key == "name":
            raise SearchSpaceError(f"{where}: 'name' is set by the search (trials are <name>-trial<i>)")
        try:  # the key itself first, with the base config's value
            target.check({key: _lookup(template, key)})
        except ConfigError as error:
            raise SearchSpaceError(f"{where}: {key!r}: {error}") from None
        distribution = parse_distribution(value, f"{where}: {key!r}")
        for sample in distribution.extremes():
            try:
                target.check({key: sample})
            except ConfigError as error:
                raise SearchSpaceError(f"{where}: {key!r} = {sample!r}: {error}") from None
        params[key] = distribution
    return SearchSpace(params)


def load_space(path, target) -> SearchSpace:
    """The space in a TOML file, or the target's default space when ``path`` is None."""
    if path is None:
        return parse_space(tomllib.loads(target.default_space), target, "the default search space")
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space file {path} not found")
    return parse_space(read_toml(path), target, str(path))


def _set_path(values: dict, key: str, value) -> None:
    """Set a dotted key in a nested dict in place, creating missing tables (the config's
    validation then reports them as unknown keys). A table value merges onto the table there
    (``freesound.config.merge_table``, the rule experiment files follow)."""
    parts = key.split(".")
    node = values
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            setting = ".".join(parts[:depth + 1])
            raise ConfigError(f"{setting} is a setting, not a table, so {key!r} does not exist")
        node = child
    current = node.get(parts[-1])
    node[parts[-1]] = merge_table(current, value) if isinstance(current, dict) and isinstance(value, dict) else value


# --------------------------------------------------------------------------------------------
# Targets: what a trial's config is and how it trains


@dataclass(frozen=True)
class TrialSetup:
    """Where and how trials train.

    Attributes
    ----------
    dataset : the dataset
    work : the work directory (features, folds, weights)
    folds : tuple of int, the folds every trial trains and is scored on
    device : torch device
    max_epochs : overrides the config's ``max_epochs`` when given
    """

    dataset: Dataset
    work: Path
    folds: tuple
    device: str = "cpu"
    max_epochs: int | None = None

    @classmethod
    def create(cls, dataset: Dataset, work, folds=(), **kwargs) -> "TrialSetup":
        """Check ``folds`` against ``folds.csv`` (none given: every fold)."""
        known = sorted(set(read_folds(work, dataset.curated.fname).fold))
        unknown = sorted(set(folds) - set(known))
        if unknown:
            raise FreesoundError(f"fold(s) {', '.join(map(str, unknown))} are not in folds.csv (folds: {known})")
        return cls(dataset, Path(work), tuple(sorted(set(folds))) or tuple(known), **kwargs)


def _finite_score(truth: np.ndarray, probs: np.ndarray, metric: str = "lwlrap") -> float:
    """``metric`` (lwlrap by default), or NaN for predictions that are not finite (a diverged trial)."""
    return float(METRICS[metric](truth, probs)) if np.isfinite(probs).all() else math.nan


def fold_oof_score(name: str, setup: TrialSetup, metric: str = "lwlrap") -> float:
    """OOF ``metric`` of a trained experiment on the validation clips of ``setup.folds``: each
    fold's model on its held-out curated clips, as ``freesound predict`` does for all folds."""
    oof = predict_fold_tiles(name, setup.dataset, setup.work, setup.folds, device=setup.device, progress=False,
                             log=lambda *_: None)
    labels = setup.dataset.curated.set_index("fname").loc[list(oof.fnames), "labels"]
    return _finite_score(multi_hot(labels, setup.dataset.classes), oof.clip_means(), metric)


def _reporter(report, folds: tuple, max_epochs: int, metric: str = "lwlrap"):
    """A ``train_folds`` ``on_epoch`` hook passing each epoch's val score (``val_<metric>``) to
    ``report`` as one step: step = the fold's position in ``folds`` * ``max_epochs`` + epoch - 1."""

    def on_epoch(fold, fit_state, row) -> None:
        report(folds.index(fold) * max_epochs + fit_state.epoch - 1, row[f"val_{metric}"])

    return on_epoch


class ExperimentTarget:
    """Searches a first-level experiment's settings (dotted keys of its TOML file)."""

    kind = "experiment"
    default_space = DEFAULT_EXPERIMENT_SPACE

    def __init__(self, experiment: Experiment, tracking: TrackingConfig | None = None):
        self.experiment = experiment
        self.name = experiment.name
        #: What trials are scored by: the experiment's ``[train] metric``.
        self.metric = experiment.train.metric
        #: The trials' trackers: the experiment's ``[tracking]`` and ``search --track``'s.
        self.tracking = experiment.tracking if tracking is None else tracking

    def template(self) -> dict:
        """The resolved config as nested dicts: what the space's keys address."""
        return self.experiment.to_dict()

    def base_json(self):
        return self.experiment.to_dict()

    def config(self, params: dict, name: str) -> Experiment:
        """The experiment with ``params`` (dotted key -> value) set, named ``name``."""
        values = copy.deepcopy(self.template())
        for key, value in params.items():
            _set_path(values, key, value)
        values["name"] = name
        return experiment_from_dict(values, source_dir=self.experiment.source_dir, where="experiment")

    def check(self, params: dict) -> None:
        """Raise ``ConfigError`` unless ``params`` make a valid experiment (model and losses too)."""
        experiment = self.config(params, self.name)
        if any(key.split(".")[0] in ("model", "loss") for key in params):
            check_experiment(experiment, num_classes=2)

    def tracked(self, trackers=(), uri: str = "") -> "ExperimentTarget":
        """This target with its trials also logged to ``trackers`` (``config.with_trackers``); the
        best trial's file keeps the experiment's own ``[tracking]``."""
        return with_tracking(self, with_trackers(self.experiment, trackers, uri).tracking)

    def with_metric(self, metric: str | None) -> "ExperimentTarget":
        """This target with trials trained and scored by ``metric`` (its ``[train] metric``, which
        the best trial's file keeps); None: the experiment's own."""
        if metric is None or metric == self.metric:
            return self
        copied = copy.copy(self)
        copied.experiment = dataclasses.replace(
            self.experiment, train=dataclasses.replace(self.experiment.train, metric=check_metric(metric)))
        copied.metric = metric
        return copied

    def prepare(self, setup: TrialSetup, log=print):
        """A ``run(trial_name, params, report, parent=None) -> OOF score`` that trains a trial on
        ``setup.folds``, calling ``report(step, val score)`` after every epoch (step = fold
        position * max_epochs + epoch - 1); the folds' tracker runs nest under ``parent``
        (``tracking.ParentRun``)."""

        def run(trial_name: str, params: dict, report, parent=None) -> float:
            experiment = dataclasses.replace(self.config(params, trial_name), tracking=self.tracking)
            max_epochs = setup.max_epochs or experiment.train.max_epochs
            context = dataclasses.replace(RunContext.create(setup.device, log=log, progress=False),
                                          tracked_under=parent)
            train_folds(experiment, setup.dataset, setup.work, list(setup.folds), max_epochs=max_epochs,
                        context=context, score_oof=False,
                        on_epoch=_reporter(report, setup.folds, max_epochs, self.metric))
            return fold_oof_score(trial_name, setup, self.metric)

        return run

    def best_text(self, params: dict, out: Path, header: str) -> str:
        """The best trial as an experiment file at ``out`` (named by its file, like any other)."""
        values = self.config(params, self.name).to_dict()
        values.pop("name")
        for key in ("corrections", "noisy_corrections"):
            path = self.experiment.resolve_path(values["data"][key])
            if path is not None:
                values["data"][key] = os.path.relpath(path.resolve(), out.parent.resolve())
        return "".join(f"# {line}\n" for line in header.splitlines()) + dump_toml(values)


class StackerTarget:
    """Searches the settings of an ensemble's first stacker (``StackerConfig`` fields)."""

    kind = "stacker"
    default_space = DEFAULT_STACKER_SPACE

    def __init__(self, ensemble: EnsembleConfig, tracking: TrackingConfig = TrackingConfig(), metric: str = "lwlrap"):
        self.ensemble, self.tracking = ensemble, tracking
        self.name = ensemble.name
        self.stacker = ensemble.stackers[0] if ensemble.stackers else StackerConfig()
        #: What trials' out-of-fold predictions are scored by.
        self.metric = check_metric(metric)

    def with_metric(self, metric: str | None) -> "StackerTarget":
        """This target with trials scored by ``metric`` (None: lwlrap)."""
        copied = copy.copy(self)
        copied.metric = check_metric(metric or "lwlrap")
        return copied

    def tracked(self, trackers=(), uri: str = "") -> "StackerTarget":
        """This target with its trials logged to ``trackers`` (an ensemble file names none)."""
        return with_tracking(self, ensemble_trackers(self.ensemble, trackers, uri))

    def template(self) -> dict:
        return dataclasses.asdict(self.stacker)

    def base_json(self):
        base = {"experiments": list(self.ensemble.experiments), "stacker": self.template()}
        # Another metric is a setting of the study; lwlrap is left out, as studies before metrics hold it.
        return base if self.metric == "lwlrap" else {**base, "metric": self.metric}

    def config(self, params: dict, max_epochs: int | None = None) -> StackerConfig:
        values = self.template()
        for key, value in params.items():
            _set_path(values, key, value)
        stacker = stacker_from_dict(values)
        return stacker if max_epochs is None else dataclasses.replace(stacker, max_epochs=max_epochs)

    def check(self, params: dict) -> None:
        self.config(params)

    def prepare(self, setup: TrialSetup, log=print):
        """Loads the experiments' OOF tiles once (predicting them first where missing); the
        ``run`` reports every epoch like ``ExperimentTarget``'s (a stacker's folds log no runs
        of their own, so ``parent`` is unused)."""
        classes = setup.dataset.classes
        ensure_oof(self.ensemble.experiments, setup.dataset, setup.work, device=setup.device, log=log)
        oof, truth = stacker_inputs(self.ensemble.experiments, setup.dataset, setup.work)

        def run(trial_name: str, params: dict, report, parent=None) -> float:
            stacker = self.config(params, setup.max_epochs)
            clips, probs = [], []
            reporter = _reporter(report, setup.folds, stacker.max_epochs)
            for fold in setup.folds:
                _, fold_clips, fold_probs = train_stacker_fold(
                    stacker, oof, truth, fold, fold_dir(setup.work, trial_name, fold), classes=classes,
                    device=setup.device, log=log, on_epoch=functools.partial(reporter, fold))
                clips.append(fold_clips)
                probs.append(fold_probs)
            return _finite_score(truth[np.concatenate(clips)], np.concatenate(probs), self.metric)

        return run

    def best_text(self, params: dict, out: Path, header: str) -> str:
        """The ensemble with the best stacker in place of the searched one."""
        stackers = (self.config(params),) + tuple(self.ensemble.stackers[1:])
        return dump_ensemble(self.ensemble.experiments, stackers, header)


def with_tracking(target, tracking: TrackingConfig):
    """A copy of ``target`` (an ``ExperimentTarget`` or ``StackerTarget``, or a subclass) whose
    trials log to ``tracking``."""
    copied = copy.copy(target)
    copied.tracking = tracking
    return copied


def load_target(spec, experiments_dir="experiments"):
    """An ``ExperimentTarget`` for an experiment file, a ``StackerTarget`` for an ensemble file."""
    config = load_config(spec, experiments_dir)
    return StackerTarget(config) if isinstance(config, EnsembleConfig) else ExperimentTarget(config)


# --------------------------------------------------------------------------------------------
# The study


def storage_url(work, name: str, storage: str | None = None) -> str:
    """``storage``, or the SQLite file ``<work>/search/<name>/study.db``."""
    if storage:
        return storage
    path = (search_dir(work, name) / STUDY_DB).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(name: str, url: str, *, heartbeat: tuple = HEARTBEAT) -> optuna.Study:
    """Create or join the study ``name`` in the storage at ``url``, maximising the OOF score.

    ``heartbeat`` is ``(interval, grace period)`` in seconds: a running trial writes a heartbeat
    every interval, and one silent for longer than the grace period (its process was killed) is
    failed and retried once with the same settings (``RetryHeartbeatStaleTrialCallback``).
    Several processes may open one fresh storage at the same moment (``create_storage``).

    Raises
    ------
    FreesoundError
        The storage cannot be opened, in one sentence (``storage_error``).
    """
    interval, grace = heartbeat
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    try:
        storage = create_storage(url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace,
                                 heartbeat_stale_trial_callback=retry)
        return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        raise storage_error(url, error) from error


def create_storage(url: str, **kwargs) -> optuna.storages.RDBStorage:
    """``optuna.storages.RDBStorage(url, **kwargs)``, safe to race.

    Two processes creating one fresh storage at once both make its tables: the second fails with
    a unique-constraint error (``alembic_version``) or "table ... already exists". Once the first
    is done the tables are there, so creating the storage again succeeds; up to
    ``STORAGE_ATTEMPTS`` tries, a little apart.
    """
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # as in open_study
                return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            raced = isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)
            if not raced or attempt == STORAGE_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)


def storage_error(url: str, error: Exception) -> FreesoundError:
    """One sentence for a storage URL that ``create_storage`` or ``create_study`` refused: not a
    URL, an unknown database, a driver not installed, a missing folder, a file that is not a
    database, or what the database said (a read-only file...)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return FreesoundError(f"study storage {url!r} is not a database URL; write e.g. sqlite:///path/study.db "
                              "or postgresql://user@host/database")
    shown = parsed.render_as_string(hide_password=True) if parsed.password else url
    if isinstance(error, sqlalchemy.exc.NoSuchModuleError):
        return FreesoundError(f"study storage {shown}: {parsed.drivername!r} is not a database SQLAlchemy knows "
                              "(e.g. sqlite, postgresql, mysql)")
    if isinstance(error, ImportError):
        module = getattr(error.__cause__, "name", None) or "its driver"
        return FreesoundError(f"study storage {shown}: the {parsed.get_backend_name()} driver ({module}) is not "
                              "installed; pip install it on every machine of the search")
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database and not parsed.database.startswith("file:")
    database = Path(parsed.database) if sqlite_file else None  # a file: URI names its file its own way
    if database is not None and not database.parent.is_dir():
        return FreesoundError(f"study storage {shown}: folder {database.parent} does not exist")
    if database is not None and not database.exists() and not os.access(database.parent, os.W_OK):
        return FreesoundError(f"study storage {shown}: folder {database.parent} is read-only")
    if database is not None and isinstance(error, sqlalchemy.exc.DatabaseError) and "not a database" in reason:
        return FreesoundError(f"study storage {shown}: {database} is not an SQLite database file")
    return FreesoundError(f"study storage {shown}: cannot open the study ({reason})")


def make_sampler(kind: str, seed: int, space: SearchSpace):
    """Optuna's TPE, random or grid sampler, seeded."""
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise FreesoundError(f"unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}")


def make_pruner(kind):
    """The pruner for a name (``median``, ``hyperband``, or None for no pruning); an Optuna pruner
    is taken as it is.

    The median pruner stops a trial whose val lwlrap at a step is below the median of earlier
    trials' at that step, after 3 trials and 4 epochs (the first epochs say little); Hyperband
    (Li et al. 2018) gives trials budgets of epochs that grow as weak ones are stopped.
    """
    if kind is None:
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=4)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    if isinstance(kind, optuna.pruners.BasePruner):
        return kind
    raise FreesoundError(f"unknown pruner {kind!r}; use one of {', '.join(PRUNERS)}")


def _trial_seed(seed: int, number: int) -> int:
    """Trial ``number``'s sampler seed: the same per (seed, number), different across numbers, so
    processes sharing a study never draw alike."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _check_settings(study: optuna.Study, settings: dict) -> None:
    """Record a new study's settings, or check that a resumed (or joined) one has the same. An
    experiment setting added to the package since the study began counts as its default there
    (``changed_settings``), so a study outlives a new option that it does not use; the trackers
    (``[tracking]``) may change, as they may for a resumed fold."""
    settings = json.loads(json.dumps(settings))
    previous = study.user_attrs.get("settings")
    if previous is None:
        study.set_user_attr("settings", settings)
        return
    differ = [key for key in settings if previous.get(key) != settings[key]
              and not (key == "base" and settings["kind"] == "experiment" and previous.get("kind") == "experiment"
                       and not changed_settings(previous["base"], settings["base"], ignored=TRACKING_SETTINGS))]
    if differ:
        raise FreesoundError(f"search {study.study_name!r} was started with another {', '.join(differ)}; resume it "
                             f"with the same settings, or give the new search another --name")


def _remove_trial_outputs(work, trial_name: str) -> None:
    """A pruned or failed trial's weights and resume states, so it is never taken for a trained
    experiment."""
    for folder in (experiment_dir(work, trial_name), train_state_dir(work, trial_name)):
        if folder.exists():
            shutil.rmtree(folder)


def _active_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished (complete or pruned) or running."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


# --------------------------------------------------------------------------------------------
# The search loop


@dataclass(frozen=True)
class SearchResult:
    """A search that has ``trials`` trials finished.

    Attributes
    ----------
    trials : DataFrame of ``trials.csv``, by trial
    best_trial : int
    best_score : float, the best trial's OOF score
    best_params : dict, the best trial's settings (dotted key -> value)
    paths : dict with ``csv``, ``png`` and ``best`` (the best config file)
    metric : the score's metric (the target's)
    """

    trials: pd.DataFrame
    best_trial: int
    best_score: float
    best_params: dict
    paths: dict
    metric: str = "lwlrap"


def _cell(value):
    """A setting as a CSV cell: numbers and strings as they are, anything else as JSON."""
    return value if isinstance(value, (int, float, str)) else json.dumps(value)


def trial_columns(metric: str = "lwlrap") -> list:
    """``trials.csv``'s first columns, the score's named by its ``metric``."""
    return [metric if column == "lwlrap" else column for column in TRIAL_COLUMNS]


def trials_frame(study: optuna.Study, space: SearchSpace, metric: str = "lwlrap") -> pd.DataFrame:
    """Every trial of the study as a ``trials.csv`` table, by trial number.

    ``lwlrap`` (named by ``metric``) is the OOF score of a complete trial (NaN otherwise),
    ``epochs`` the epochs it trained (over all its folds), ``seconds`` its duration so far.
    """
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = trial.duration.total_seconds() if trial.duration is not None else math.nan
        rows.append({
            "trial": trial.number, "name": trial.user_attrs.get("name", ""), "state": trial.state.name,
            metric: trial.value if trial.state == TrialState.COMPLETE else math.nan,
            "epochs": len(trial.intermediate_values), "seconds": round(seconds, 2),
            **{key: _cell(value) for key, value in space.settings(trial.params).items()},
        })
    frame = pd.DataFrame(rows, columns=trial_columns(metric) + list(space.params))
    return frame.sort_values("trial", ignore_index=True)


def format_trials(trials: pd.DataFrame, top: int = 5) -> str:
    """The best complete trials as a text table (``trials_frame``'s, its score named by its metric)."""
    metric = trials.columns[TRIAL_COLUMNS.index("lwlrap")]
    ranked = trials[np.isfinite(trials[metric].astype(float))].sort_values([metric, "trial"],
                                                                            ascending=[False, True]).head(top)
    keys = list(trials.columns[len(TRIAL_COLUMNS):])
    lines = [f"  {'trial':>5}  {metric:>7}  settings"]
    lines += [f"  {int(row.trial):>5}  {row[metric]:7.4f}  " + ", ".join(f"{k}={row[k]}" for k in keys)
              for _, row in ranked.iterrows()]
    return "\n".join(lines)


def run_search(target, space: SearchSpace, setup: TrialSetup, *, trials: int, seed: int = 0, name: str | None = None,
               out=None, experiments_dir="experiments", sampler: str = "tpe", pruner="median",
               storage: str | None = None, heartbeat: tuple = HEARTBEAT, log=print,
               progress: bool = True) -> SearchResult:
    """Run trials until the study has ``trials`` finished (complete or pruned) or running ones.

    Parameters
    ----------
    target : ``ExperimentTarget`` or ``StackerTarget``
    space : the searched settings
    setup : dataset, work directory, folds, device and epoch override of every trial
    trials : total number of trials (a resumed search, or one other processes share, runs only
        the missing ones)
    seed : seeds the sampler; trial ``i`` samples with a seed made from ``(seed, i)``
    name : the search's name (default: the target's): the study's name, trials are
        ``<name>-trial<i>``, files go to ``<work>/search/<name>/``
    out : the best config's file (default ``<experiments_dir>/<name>-best.toml``)
    sampler : ``tpe``, ``random`` or ``grid`` (every value of choice and int distributions)
    pruner : ``median``, ``hyperband``, an Optuna pruner, or None for no pruning
    storage : an Optuna storage URL shared by several processes or machines (default: the SQLite
        file ``<work>/search/<name>/study.db``)
    heartbeat : (interval, grace period) in seconds, see ``open_study``
    log : callable for progress lines
    progress : show a progress bar over trials

    Raises
    ------
    FreesoundError
        The study holds a search with other settings, or no trial has a score.
    """
    name = name or target.name
    directory = search_dir(setup.work, name)
    paths = {"csv": directory / TRIALS_CSV, "png": directory / PROGRESS_PNG,
             "best": Path(out) if out is not None else Path(experiments_dir) / f"{name}-best.toml"}
    study = open_study(name, storage_url(setup.work, name, storage), heartbeat=heartbeat)
    _check_settings(study, {
        "target": target.name, "kind": target.kind, "base": target.base_json(), "space": space.to_json(),
        "seed": seed, "folds": list(setup.folds), "epochs": setup.max_epochs, "sampler": sampler,
    })
    study.sampler = make_sampler(sampler, seed, space)
    study.pruner = make_pruner(pruner)
    run, last, tracking = None, {}, {}  # tracking["config"]: the trackers that still work

    def objective(trial: optuna.Trial) -> float:
        last["number"] = trial.number
        if sampler != "grid":
            trial.study.sampler = make_sampler(sampler, _trial_seed(seed, trial.number), space)
        params = space.suggest(trial)
        trial_name = f"{name}-trial{trial.number}"
        trial.set_user_attr("name", trial_name)
        tracked = open_trial_run(tracking["config"], setup.work, name, trial.number, trial_name, params, log)
        reported = []

        def report(step: int, value: float) -> None:
            reported.append(value)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val {target.metric} {value:.4f} at step {step} trails the other trials")

        try:
            value = run(trial_name, params, report, tracked.parent())
        except BaseException as error:  # pruned, failed or interrupted: no partial weights left behind
            last["interrupted"] = isinstance(error, KeyboardInterrupt)
            _remove_trial_outputs(setup.work, trial_name)
            outcome = "PRUNED" if isinstance(error, optuna.TrialPruned) else "FAIL"
            tracking["config"] = end_trial_run(tracked, outcome, None, reported, tracking["config"], log)
            raise
        outcome = "COMPLETE" if math.isfinite(value) else "FAIL"  # Optuna fails a NaN value
        tracking["config"] = end_trial_run(tracked, outcome, value, reported, tracking["config"], log)
        return value

    bar = progress_bar(total=trials, desc=f"search {name}", unit="trial", enabled=progress)
    shown = 0
    recorded = None  # (trials.csv frame, best) as last written
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        for failed in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            _remove_trial_outputs(setup.work, failed.user_attrs.get("name", f"{name}-trial{failed.number}"))
        done = _active_trials(study)
        bar.update(min(done, trials) - shown)
        shown = min(done, trials)
        if done >= trials:
            break
        if run is None:
            log(f"search {name}: {trials - done} trial(s) to run on fold(s) {', '.join(map(str, setup.folds))} "
                f"({sampler} sampler, {type(study.pruner).__name__})")
            tracking["config"] = usable_trackers(target.tracking, setup.work, search_group(name), log)
            # A store that cannot be reached is left out of the folds' runs too, not met again each trial.
            run = with_tracking(target, tracking["config"]).prepare(setup, log=log)
        try:
            with _quiet_failure_logs(lambda: last.get("interrupted", False)):
                study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
        except KeyboardInterrupt:
            if last.get("interrupted"):  # not when Optuna itself was interrupted, before or after the trial
                log(f"search {name}: trial {last['number']} interrupted (marked failed); "
                    "rerunning the command resumes the search")
            raise
        recorded = _record(target, space, study, seed, paths, name)
        _log_trial(recorded[0], last["number"], log)
    bar.close()
    # Other processes may have added trials since the last record.
    if recorded is None or not recorded[0].equals(trials_frame(study, space, target.metric)):
        recorded = _record(target, space, study, seed, paths, name)
    frame, best = recorded
    return SearchResult(frame, *best, paths, target.metric)


def _record(target, space: SearchSpace, study: optuna.Study, seed: int, paths: dict, name: str) -> tuple:
    """Write ``trials.csv``, the best trial's config file and the progress plot from the study;
    return (the trials frame, (best trial, its score, its settings))."""
    frame = trials_frame(study, space, target.metric)
    atomic_write_csv(paths["csv"], frame, index=False)
    return frame, _write_best(target, space, study, frame, seed, paths, name)


#: The logger Optuna reports a failed trial on, with its traceback.
OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


@contextlib.contextmanager
def _quiet_failure_logs(interrupted):
    """Within, drop Optuna's failed-trial messages while ``interrupted()``: a Ctrl-C is not a
    failure to explain with a traceback (``run_search`` says it in one line)."""
    logger = logging.getLogger(OPTUNA_TRIAL_LOGGER)
    quiet = lambda record: not interrupted()  # noqa: E731 (a logging filter may be any callable)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _log_trial(frame: pd.DataFrame, number: int, log) -> None:
    row = frame.set_index("trial").loc[number]
    metric = frame.columns[TRIAL_COLUMNS.index("lwlrap")]
    settings = ", ".join(f"{key}={row[key]}" for key in frame.columns[len(TRIAL_COLUMNS):])
    outcome = f"OOF {metric} {row[metric]:.4f}" if row.state == "COMPLETE" else row.state.lower()
    log(f"trial {number}: {outcome} after {row.epochs} epoch(s)  {settings}")


def _write_best(target, space: SearchSpace, study: optuna.Study, frame: pd.DataFrame, seed: int, paths: dict,
                name: str) -> tuple:
    """Write the best trial's config file and the progress plot; return (trial, score, settings)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if not complete:
        raise FreesoundError(f"search {name}: no trial has a score yet (ask for more --trials)")
    best = max(complete, key=lambda t: (t.value, -t.number))
    settings = space.settings(best.params)
    header = (f"Best of {len(frame)} trials of `freesound search {target.name}` (seed {seed}): trial {best.number}, "
              f"OOF {target.metric} {best.value:.4f}\n"
              + "\n".join(f"  {key} = {json.dumps(value)}" for key, value in settings.items()))
    atomic_write_text(paths["best"], target.best_text(settings, paths["best"], header))
    plot_search_progress(frame, paths["png"], f"search {name}: OOF {target.metric} per trial")
    return best.number, float(best.value), settings
