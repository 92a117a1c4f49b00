"""Runs that are not a fold's in the experiment trackers: a search's trials and ``stack``'s
stackers and blend (``freesound.training.tracking`` logs the folds; docs/tracking.md).

A search ``<name>`` logs into the group ``search-<name>`` (the MLflow experiment, the W&B project,
``<work>/tracking/search-<name>/``). Each trial is one run named as its experiment
(``<name>-trial<i>``): the searched settings and Optuna's trial number as parameters, and at its
end ``oof_lwlrap`` (a complete trial), ``epochs`` (the epochs it reported, over its folds) and
``last_val_lwlrap``, with Optuna's state (``COMPLETE``, ``PRUNED``, ``FAIL``) as the note
``optuna.state``. A trial's folds log their epochs as runs nested under it (``<trial>/fold_<k>``:
MLflow's parent run, a TensorBoard folder inside the trial's, the trial as W&B's group).

``stack`` logs into the group named as the ensemble: one run per stacker (``<ensemble>_<stacker>``:
its settings, its overall, per-fold and per-class OOF lwlrap and its per-class PNG) and one run
``blend``: the blend's scores and every level's OOF lwlrap (``cv/<name>``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from freesound.config import ConfigError, EnsembleConfig, TrackingConfig
from freesound.data.dataset import Dataset
from freesound.ensembling.stack import stacker_inputs
from freesound.metrics import score_predictions
from freesound.paths import predictions_dir
from freesound.tools.plots import plot_per_class
from freesound.training.tracking import (
    RunPlace,
    SummaryRun,
    flat_settings,
    result_metrics,
    track_summary,
    without_trackers,
)

#: Optuna's trial state -> how MLflow says the run ended.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def ensemble_trackers(ensemble: EnsembleConfig, trackers=(), uri: str = "") -> TrackingConfig:
    """The trackers of ``stack --track`` or ``search --track`` on an ensemble (an ensemble file
    names none).

    Raises
    ------
    ConfigError
        A ``uri`` (``--tracking-uri``) without MLflow among the trackers.
    """
    try:
        return TrackingConfig(tuple(dict.fromkeys(trackers)), uri)
    except ValueError as error:
        raise ConfigError(f"ensemble {ensemble.name!r} --track: {error}") from None


def search_group(name: str) -> str:
    """The trackers' group of search ``name``'s trials (kept apart from the searched experiment's runs)."""
    return f"search-{name}"


def open_trial_run(config: TrackingConfig, work, search: str, number: int, trial_name: str, params: dict,
                   log: Callable[[str], None]) -> SummaryRun:
    """Trial ``number``'s run, started with its settings (``params``: dotted key -> value; a value
    that is not a number or string is logged as JSON); its folds' runs nest under ``run.parent()``."""
    logged = {"trial": number, **{key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
                                  for key, value in params.items()}}
    return SummaryRun(config, work, RunPlace(search_group(search), trial_name, family=trial_name), logged, log,
                      f"trial {number}")


def end_trial_run(run: SummaryRun, state: str, value: float | None, reported: list, config: TrackingConfig,
                  log: Callable[[str], None]) -> TrackingConfig:
    """End a trial's run with Optuna's ``state`` (``RUN_STATUS``'s keys), its OOF lwlrap ``value``
    when complete, and the val lwlrap it ``reported`` to the pruner after each epoch.

    Returns
    -------
    ``config`` (the search's trackers) less those that failed on this trial's run: a broken
    tracker is reported once, by the trial it failed on, and left out of the later trials' runs.
    """
    metrics = {"epochs": len(reported)}
    if reported:
        metrics["last_val_lwlrap"] = reported[-1]
    if state == "COMPLETE":
        metrics["oof_lwlrap"] = value
    run.end(metrics, status=RUN_STATUS[state], notes={"optuna.state": state})
    failed = [name for name in run.failed() if name in config.trackers]
    if failed:
        log(f"tracker(s) {', '.join(failed)} left out of the later trials' runs")
    return without_trackers(config, failed)


def track_stack(config: TrackingConfig, ensemble: EnsembleConfig, dataset: Dataset, work, cv: dict,
                log: Callable[[str], None], metric: str = "lwlrap") -> None:
    """``stack``'s result as runs (the module docstring), from the files ``train_stackers`` wrote
    (``<stacker>_oof.csv``, ``blend_scores.json``) and its ``cv`` (name -> OOF ``metric``, logged
    as ``cv/<name>`` for lwlrap, ``cv_<metric>/<name>`` for another). Each
    stacker's per-class PNG is written beside its predictions first
    (``<work>/predictions/<ensemble>/<stacker>_per_class.png``)."""
    if not config.trackers:
        return
    oof, targets = stacker_inputs(ensemble.experiments, dataset, work)
    folder = predictions_dir(work, ensemble.name)
    experiments = json.dumps(list(ensemble.experiments))
    for stacker in ensemble.stackers:
        name = ensemble.stacker_dir_name(stacker)
        probs = pd.read_csv(folder / f"{name}_oof.csv").set_index("fname").loc[list(oof.fnames), dataset.classes]
        scores = score_predictions(targets, probs.to_numpy(dtype=np.float64), dataset.classes, oof.folds)
        png = plot_per_class(scores, folder / f"{name}_per_class.png", f"{name}: out-of-fold lwlrap per class")
        failed = track_summary(config, work, ensemble.name, name,
                               params={**flat_settings(dataclasses.asdict(stacker)), "experiments": experiments},
                               metrics=result_metrics(scores), artifacts=[png], log=log, label=f"stacker {name}")
        config = without_trackers(config, failed)  # a broken tracker is reported once
    blend = json.loads((folder / "blend_scores.json").read_text())
    track_summary(config, work, ensemble.name, "blend",
                  params={"experiments": experiments,
                          "stackers": json.dumps([ensemble.stacker_dir_name(s) for s in ensemble.stackers])},
                  metrics={**result_metrics(blend),
                           **{f"{'cv' if metric == 'lwlrap' else f'cv_{metric}'}/{name}": score
                              for name, score in cv.items()}},
                  log=log, label="the blend")


def self_train_group(name: str) -> str:
    """The group a self-training of experiment ``name`` logs its rounds into."""
    return f"self-train-{name}"


def track_round(result, experiment, work, base: str, log: Callable[[str], None]) -> None:
    """Round ``result`` of ``self-train base`` (a ``freesound.tools.self_training.RoundResult``) as
    one run of ``experiment``'s trackers (the round's experiment, ``base_r<k>``), in the group
    ``self-train-<base>`` so that the rounds compare side by side: the round's settings, and its
    CV, pool size, pseudo-labelled clips, confident share, label flips and CPU seconds as metrics
    (those not known yet, such as round 1's flips, are left out)."""
    values = dataclasses.asdict(result)
    metrics = {name: float(values[name]) for name in ("cv_lwlrap", "pool", "pseudo_labelled", "confident_share",
                                                       "top_label_flips", "cpu_seconds", "wall_seconds")
               if values[name] is not None}
    params = {"round": result.round, **flat_settings(experiment.to_dict())}
    track_summary(experiment.tracking, work, self_train_group(base), result.experiment, params=params,
                  metrics=metrics, log=log, label=f"round {result.round} of self-train {base}")
