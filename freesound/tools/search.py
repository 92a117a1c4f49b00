"""Random hyperparameter search, each trial trained by the normal training code and scored by OOF
lwlrap.

Targets
-------
An experiment file: each trial is a copy of the experiment with sampled settings, trained fold by
fold with ``freesound.training.trainer.train_fold`` as ``<work>/experiments/<name>-trial<i>/`` and scored by
the lwlrap of its out-of-fold tile-mean predictions on the validation clips of the trained folds.
An ensemble file: each trial is a copy of the ensemble's first stacker (the ``StackerConfig``
defaults when it has none) with sampled settings, trained with
``freesound.ensembling.stack.train_stacker_fold`` on the ensemble's OOF predictions and scored by its
out-of-fold lwlrap.

Search space
------------
A TOML file whose keys are config paths: dotted experiment keys (``train.lr``,
``model.params.dropout``, ``mixers.prob``, ``loss.noisy.beta``; quoted or as tables) or, for an
ensemble, ``StackerConfig`` fields (``lr``, ``p_dropout``). Each value is one distribution::

    "train.lr" = { loguniform = [1e-4, 1e-2] }      # log-uniform in [low, high], low > 0
    "model.params.dropout" = { uniform = [0.1, 0.5] }
    "model.params.base_size" = { int = [4, 16] }      # integers, both ends included
    "mixers.prob" = { choice = [0.0, 0.5, 0.8] }      # any TOML values, drawn uniformly
    "train.max_epochs" = 2                            # a plain value: fixed in every trial

Every key and every value a distribution can give is checked against the config before any trial
runs (the config's own validation, so an unknown key lists the valid ones); errors name the key.
Trial ``i`` draws its settings from ``numpy.random.default_rng([seed, i])``, key by key in file
order, so a resumed search (or a rerun) reproduces the same trials.

Files
-----
Under ``<work>/search/<name>/``::

    search.json   the search's settings (target, base config, space, seed, folds, epochs); a
                  resumed search must have the same ones
    trials.csv    trial, name, lwlrap, seconds, then one column per searched key; rewritten
                  atomically after every finished trial, so a killed search resumes and never
                  repeats a finished trial (an interrupted trial continues its folds' training)
    progress.png  OOF lwlrap per trial and the best so far

and the best trial's config, after every trial, as an experiment (or ensemble) file, by default
``experiments/<name>-best.toml``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.config import (
    ConfigError,
    EnsembleConfig,
    Experiment,
    StackerConfig,
    dump_ensemble,
    dump_experiment,
    dump_toml,
    experiment_from_dict,
    load_config,
    merge_table,
    read_toml,
    stacker_from_dict,
)
from freesound.data.dataset import Dataset, multi_hot
from freesound.data.folds import read_folds
from freesound.ensembling.stack import stacker_inputs, train_stacker_fold
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv, atomic_write_text
from freesound.metrics import lwlrap
from freesound.paths import fold_dir, search_dir
from freesound.progress import progress_bar
from freesound.tools.plots import plot_search_progress
from freesound.training.oof import ensure_oof, predict_fold_tiles
from freesound.training.trainer import check_experiment, train_fold

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TRIALS_CSV = "trials.csv"
SETTINGS_JSON = "search.json"
PROGRESS_PNG = "progress.png"
#: The columns of ``trials.csv`` before the searched keys.
TRIAL_COLUMNS = ["trial", "name", "lwlrap", "seconds"]

DEFAULT_EXPERIMENT_SPACE = """\
"train.lr" = { loguniform = [1e-4, 1e-2] }
"model.params.dropout" = { uniform = [0.0, 0.5] }
"mixers.prob" = { uniform = [0.4, 1.0] }
"transforms.spec_augment_prob" = { uniform = [0.2, 0.8] }
"""

DEFAULT_STACKER_SPACE = """\
lr = { loguniform = [1e-4, 1e-2] }
p_dropout = { uniform = [0.0, 0.5] }
base_size = { choice = [32, 64, 128, 256] }
reduction_scale = { choice = [1, 2, 4, 8] }
"""


class SearchSpaceError(ConfigError):
    """A bad search space; the message names the key and what is wrong."""


# --------------------------------------------------------------------------------------------
# Search spaces


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

    def sample(self, rng: np.random.Generator):
        """One value (a fixed value draws nothing from ``rng``)."""
        if self.kind == "uniform":
            return float(rng.uniform(*self.args))
        if self.kind == "loguniform":
            return float(np.exp(rng.uniform(math.log(self.args[0]), math.log(self.args[1]))))
        if self.kind == "int":
            return int(rng.integers(self.args[0], self.args[1] + 1))
        if self.kind == "choice":
            return copy.deepcopy(self.args[int(rng.integers(len(self.args)))])
        return copy.deepcopy(self.args[0])

    def extremes(self) -> list:
        """Values spanning what ``sample`` can give (both bounds, every option), for checking."""
        if self.kind in ("uniform", "loguniform"):
            return [float(v) for v in self.args]
        return list(self.args)

    def to_json(self):
        return self.args[0] if self.kind == "fixed" else {self.kind: list(self.args)}


@dataclass(frozen=True)
class SearchSpace:
    """Searched settings: dotted config key -> ``Distribution``, in file order."""

    params: dict

    def sample(self, seed: int, trial: int) -> dict:
        """Trial ``trial``'s settings, a function of ``(seed, trial)`` only."""
        rng = np.random.default_rng([seed, trial])
        return {key: distribution.sample(rng) for key, distribution in self.params.items()}

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


def _finite_lwlrap(truth: np.ndarray, probs: np.ndarray) -> float:
    """lwlrap, or NaN for predictions that are not finite (a diverged trial)."""
    return float(lwlrap(truth, probs)) if np.isfinite(probs).all() else math.nan


def fold_oof_lwlrap(name: str, setup: TrialSetup) -> float:
    """OOF lwlrap of a trained experiment on the validation clips of ``setup.folds``: each fold's
    model on its held-out curated clips, as ``freesound predict`` does for all folds."""
    oof = predict_fold_tiles(name, setup.dataset, setup.work, setup.folds, device=setup.device, progress=False,
                             log=lambda *_: None)
    labels = setup.dataset.curated.set_index("fname").loc[list(oof.fnames), "labels"]
    return _finite_lwlrap(multi_hot(labels, setup.dataset.classes), oof.clip_means())


class ExperimentTarget:
    """Searches a first-level experiment's settings (dotted keys of its TOML file)."""

    kind = "experiment"
    default_space = DEFAULT_EXPERIMENT_SPACE

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.name = experiment.name

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

    def prepare(self, setup: TrialSetup, log=print):
        """A ``run(trial_name, params) -> OOF lwlrap`` that trains a trial on ``setup.folds``."""

        def run(trial_name: str, params: dict) -> float:
            experiment = self.config(params, trial_name)
            resolved = dump_experiment(experiment)
            for fold in setup.folds:
                # Continue an interrupted fold of this very trial; anything else there is stale.
                config_file = fold_dir(setup.work, trial_name, fold) / "config.toml"
                resume = config_file.is_file() and config_file.read_text() == resolved
                train_fold(experiment, setup.dataset, setup.work, fold, device=setup.device,
                           max_epochs=setup.max_epochs, resume=resume, progress=False, log=log)
            return fold_oof_lwlrap(trial_name, setup)

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

    def __init__(self, ensemble: EnsembleConfig):
        self.ensemble = ensemble
        self.name = ensemble.name
        self.stacker = ensemble.stackers[0] if ensemble.stackers else StackerConfig()

    def template(self) -> dict:
        return dataclasses.asdict(self.stacker)

    def base_json(self):
        return {"experiments": list(self.ensemble.experiments), "stacker": self.template()}

    def config(self, params: dict, max_epochs: int | None = None) -> StackerConfig:
        values = self.template()
        for key, value in params.items():
            _set_path(values, key, value)
        stacker = stacker_from_dict(values)
        return stacker if max_epochs is None else dataclasses.replace(stacker, max_epochs=max_epochs)

    def check(self, params: dict) -> None:
        self.config(params)

    def prepare(self, setup: TrialSetup, log=print):
        """Loads the experiments' OOF tiles once (predicting them first where missing)."""
        classes = setup.dataset.classes
        ensure_oof(self.ensemble.experiments, setup.dataset, setup.work, device=setup.device, log=log)
        oof, truth = stacker_inputs(self.ensemble.experiments, setup.dataset, setup.work)

        def run(trial_name: str, params: dict) -> float:
            stacker = self.config(params, setup.max_epochs)
            clips, probs = [], []
            for fold in setup.folds:
                _, fold_clips, fold_probs = train_stacker_fold(
                    stacker, oof, truth, fold, fold_dir(setup.work, trial_name, fold), classes=classes,
                    device=setup.device, log=log)
                clips.append(fold_clips)
                probs.append(fold_probs)
            return _finite_lwlrap(truth[np.concatenate(clips)], np.concatenate(probs))

        return run

    def best_text(self, params: dict, out: Path, header: str) -> str:
        """The ensemble with the best stacker in place of the searched one."""
        stackers = (self.config(params),) + tuple(self.ensemble.stackers[1:])
        return dump_ensemble(self.ensemble.experiments, stackers, header)


def load_target(spec, experiments_dir="experiments"):
    """An ``ExperimentTarget`` for an experiment file, a ``StackerTarget`` for an ensemble file."""
    config = load_config(spec, experiments_dir)
    return StackerTarget(config) if isinstance(config, EnsembleConfig) else ExperimentTarget(config)


# --------------------------------------------------------------------------------------------
# The search loop


@dataclass(frozen=True)
class SearchResult:
    """A finished (or resumed and finished) search.

    Attributes
    ----------
    trials : DataFrame of ``trials.csv``, by trial
    best_trial : int
    best_score : float, the best trial's OOF lwlrap
    best_params : dict, the best trial's settings (dotted key -> value)
    paths : dict with ``csv``, ``png`` and ``best`` (the best config file)
    """

    trials: pd.DataFrame
    best_trial: int
    best_score: float
    best_params: dict
    paths: dict


def _cell(value):
    """A setting as a CSV cell: numbers and strings as they are, anything else as JSON."""
    return value if isinstance(value, (int, float, str)) else json.dumps(value)


def _check_settings(path: Path, settings: dict) -> None:
    """Start a search's record, or check that a resumed one was started the same way."""
    settings = json.loads(json.dumps(settings))
    if not path.is_file():
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
        return
    previous = json.loads(path.read_text())
    differ = [key for key in settings if previous.get(key) != settings[key]]
    if differ:
        raise FreesoundError(f"{path.parent} holds a search started with another {', '.join(differ)}; resume it with "
                             f"the same settings, or give the new search another --name")


def read_trials(path) -> pd.DataFrame:
    """``trials.csv`` (empty with the fixed columns when there is none yet)."""
    path = Path(path)
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=TRIAL_COLUMNS)


def format_trials(trials: pd.DataFrame, top: int = 5) -> str:
    """The best finished trials as a text table."""
    ranked = trials[np.isfinite(trials.lwlrap.astype(float))].sort_values(["lwlrap", "trial"],
                                                                           ascending=[False, True]).head(top)
    keys = [c for c in trials.columns if c not in TRIAL_COLUMNS]
    lines = [f"  {'trial':>5}  {'lwlrap':>7}  settings"]
    lines += [f"  {int(row.trial):>5}  {row.lwlrap:7.4f}  " + ", ".join(f"{k}={row[k]}" for k in keys)
              for _, row in ranked.iterrows()]
    return "\n".join(lines)


def run_search(target, space: SearchSpace, setup: TrialSetup, *, trials: int, seed: int = 0, name: str | None = None,
               out=None, experiments_dir="experiments", log=print, progress: bool = True) -> SearchResult:
    """Run trials ``0 .. trials-1`` of a random search, skipping those already finished.

    Parameters
    ----------
    target : ``ExperimentTarget`` or ``StackerTarget``
    space : the searched settings
    setup : dataset, work directory, folds, device and epoch override of every trial
    trials : total number of trials (a resumed search runs only the missing ones)
    seed : trial ``i``'s settings are ``space.sample(seed, i)``
    name : the search's name (default: the target's): trials are ``<name>-trial<i>``, files go to
        ``<work>/search/<name>/``
    out : the best config's file (default ``<experiments_dir>/<name>-best.toml``)
    log : callable for progress lines
    progress : show a progress bar over trials

    Raises
    ------
    FreesoundError
        When ``<work>/search/<name>/`` holds a search with other settings, or no trial scored.
    """
    name = name or target.name
    directory = search_dir(setup.work, name)
    paths = {"csv": directory / TRIALS_CSV, "png": directory / PROGRESS_PNG,
             "best": Path(out) if out is not None else Path(experiments_dir) / f"{name}-best.toml"}
    _check_settings(directory / SETTINGS_JSON, {
        "target": target.name, "kind": target.kind, "base": target.base_json(), "space": space.to_json(),
        "seed": seed, "folds": list(setup.folds), "epochs": setup.max_epochs,
    })
    frame = read_trials(paths["csv"])
    todo = [i for i in range(trials) if i not in set(frame.trial)]
    if todo:
        log(f"search {name}: {len(todo)} trial(s) to run on fold(s) {', '.join(map(str, setup.folds))}, "
            f"{trials - len(todo)} already finished")
        run = target.prepare(setup, log=log)
    bar = progress_bar(total=trials, initial=trials - len(todo), desc=f"search {name}", unit="trial",
                       enabled=progress)
    best = None
    for trial in todo:
        params = space.sample(seed, trial)
        trial_name = f"{name}-trial{trial}"
        started = time.perf_counter()
        score = run(trial_name, params)
        row = {"trial": trial, "name": trial_name, "lwlrap": score, "seconds": round(time.perf_counter() - started, 2),
               **{key: _cell(value) for key, value in params.items()}}
        frame = pd.DataFrame(frame.to_dict("records") + [row]).sort_values("trial", ignore_index=True)
        atomic_write_csv(paths["csv"], frame, index=False)
        log(f"trial {trial}: OOF lwlrap {score:.4f}  " + ", ".join(f"{k}={_cell(v)}" for k, v in params.items()))
        best = _write_best(target, space, frame, seed, paths, name)
        bar.update(1)
        bar.set_postfix(best=f"{best[1]:.4f}")
    bar.close()
    best_trial, best_score = best or _write_best(target, space, frame, seed, paths, name)
    return SearchResult(frame, best_trial, best_score, space.sample(seed, best_trial), paths)


def _write_best(target, space: SearchSpace, frame: pd.DataFrame, seed: int, paths: dict, name: str) -> tuple:
    """Write the best trial's config file and the progress plot; returns (best trial, its score)."""
    scored = frame[np.isfinite(frame.lwlrap.astype(float))].sort_values("trial")
    if scored.empty:
        raise FreesoundError(f"search {name}: no trial has a score yet (ask for more --trials)")
    best = scored.loc[scored.lwlrap.idxmax()]
    best_trial, best_score = int(best.trial), float(best.lwlrap)
    params = space.sample(seed, best_trial)
    header = (f"Best of {len(frame)} trials of `freesound search {target.name}` (seed {seed}): trial {best_trial}, "
              f"OOF lwlrap {best_score:.4f}\n"
              + "\n".join(f"  {key} = {json.dumps(value)}" for key, value in params.items()))
    atomic_write_text(paths["best"], target.best_text(params, paths["best"], header))
    plot_search_progress(frame, paths["png"], f"search {name}: OOF lwlrap per trial")
    return best_trial, best_score
