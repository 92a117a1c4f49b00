"""``freesound self-train``: rounds of pseudo-labelling unlabelled clips and training a student.

Round 0 is the experiment ``EXP`` trained as usual (folds already trained are skipped). Round
``k >= 1`` is the experiment ``EXP_r<k>``: the student (``EXP`` itself, or ``--student``) with
``[self_training] teacher = EXP_r<k-1>`` (``EXP`` for round 1), its ``noise`` laid over its tables
(stronger dropout or augmentation), and with ``warm_start`` its folds started from the previous
round's (``[pretrained]``) for ``warm_epochs`` epochs. ``freesound.training.pseudo_labels`` makes
the pseudo-labels while each fold trains, so a round is an ordinary experiment:
``self-train`` writes ``<experiments>/EXP_r<k>.toml``, and ``train``, ``predict``, ``stack``,
``select-ensemble`` and ``build-kernel`` find it by name like any other.

Re-running the command continues: finished folds and rounds are skipped, an unfinished fold
resumes from its saved state (``train --resume``). A round file whose settings differ from what
the command derives now is refused once any fold of that round has trained.

Written to ``<work>/self_training/EXP/``: ``rounds.csv`` (one row per round: CV, pool, pseudo-label
changes, CPU time) and ``rounds.png`` (CV per round; share of confident pool clips and top-label
flips between rounds).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.config import ConfigError, Experiment, dump_experiment, experiment_from_dict, merge_table, read_toml
from freesound.data.dataset import Dataset, with_unlabeled
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv, atomic_write_text
from freesound.paths import experiment_dir, predictions_dir
from freesound.predict import geometric_mean
from freesound.tools.plots import plot_self_training
from freesound.training.context import RunContext
from freesound.training.experiment_training import train_folds
from freesound.training.oof import oof_is_current, predict_oof
from freesound.training.pseudo_labels import pool_predictions, top_label_flips, unlabeled_pool
from freesound.training.resume_state import changed_settings

ROUNDS_CSV = "rounds.csv"
ROUNDS_PNG = "rounds.png"
#: A pool clip counts as confidently pseudo-labelled when its highest probability reaches this.
CONFIDENT = 0.5
ROUND_COLUMNS = ("round", "experiment", "cv_lwlrap", "pool", "pseudo_labelled", "confident_share", "top_label_flips",
                 "cpu_seconds", "wall_seconds")


@dataclass(frozen=True)
class RoundResult:
    """One round, as ``rounds.csv`` records it.

    Attributes
    ----------
    round : int; experiment : its name (``EXP``, ``EXP_r1``, ...)
    cv_lwlrap : out-of-fold lwlrap (None until every fold is trained)
    pool : unlabelled clips pseudo-labelled by this round's teacher (0 in round 0)
    pseudo_labelled : those the confidence floor keeps (teacher's folds' geometric mean)
    confident_share : share of the pool whose highest teacher probability is at least ``CONFIDENT``
    top_label_flips : share of the pool whose most probable class changed since the previous
        round's teacher (None in rounds 0 and 1)
    cpu_seconds, wall_seconds : what the command's runs spent on the round (this process and its
        finished children), summed over the runs that trained it
    """

    round: int
    experiment: str
    cv_lwlrap: float | None
    pool: int = 0
    pseudo_labelled: int = 0
    confident_share: float | None = None
    top_label_flips: float | None = None
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def round_name(experiment: str, k: int) -> str:
    """``EXP`` for round 0, ``EXP_r<k>`` after."""
    return experiment if k == 0 else f"{experiment}_r{k}"


def round_experiment(student: Experiment, name: str, teacher: str, *, unlabeled: str = "",
                     round_index: int = 1) -> Experiment:
    """The experiment of round ``round_index`` (1 or later): ``student`` named ``name``, its
    ``[self_training] noise`` laid over its tables, taught by ``teacher`` (with ``warm_start``,
    from round ``warm_from_round`` on, also started from it).

    Paths (corrections files, the pool folder) are made absolute, since the round's file may be
    written elsewhere than the student's. ``unlabeled`` (a folder) replaces the student's pool.

    Raises
    ------
    ConfigError
        ``noise`` names an unknown table or key, or the student has no ``[self_training] share``
        nor ``mix_prob`` (the pool would not be used).
    """
    config = student.self_training
    if not (config.share > 0 or config.mix_prob > 0):
        raise ConfigError(f"experiment {student.name!r}: [self_training] share and mix_prob are both 0, so a round "
                          "would not train on the pseudo-labelled clips; set one above 0")
    values = student.to_dict()
    for table, overrides in config.noise.items():
        if table not in values or not isinstance(values[table], dict) or not isinstance(overrides, dict):
            raise ConfigError(f"experiment {student.name!r}: [self_training] noise names {table!r}, which is not a "
                              f"table of an experiment")
        values[table] = merge_table(values[table], overrides)
    pool = unlabeled or config.unlabeled
    values["self_training"] = {**values["self_training"], "teacher": teacher, "noise": {},
                               "unlabeled": str(Path(student.resolve_path(pool)).resolve()) if pool else ""}
    for key in ("corrections", "noisy_corrections"):
        path = student.resolve_path(values["data"][key])
        values["data"][key] = str(path.resolve()) if path else ""
    if config.warm_start and round_index >= config.warm_from_round:
        values["pretrained"] = {"experiment": teacher}
        if config.warm_epochs:
            values["train"]["max_epochs"] = config.warm_epochs
    values["name"] = name
    return experiment_from_dict(values, name=name, where=f"round experiment {name}")


def write_round_file(experiment: Experiment, experiments_dir, work, header: str) -> Path:
    """Write ``<experiments_dir>/<name>.toml``, unless the file holds the same settings already.

    Raises
    ------
    FreesoundError
        The file holds other settings and the round has trained folds (the settings are named).
    """
    path = Path(experiments_dir) / f"{experiment.name}.toml"
    if path.is_file():
        existing = experiment_from_dict(read_toml(path), name=experiment.name, where=str(path))
        changed = changed_settings(existing.to_dict(), experiment.to_dict(), ignored=())
        if not changed:
            return path
        if any(experiment_dir(work, experiment.name).glob("fold_*")):
            raise FreesoundError(f"{path} was trained with other settings than self-train derives now "
                                 f"({', '.join(changed[:5])}); restore them, or delete {path} and "
                                 f"{experiment_dir(work, experiment.name)} to train the round again (and the later rounds' "
                                 "files and folders: their pseudo-labels came from it)")
    lines = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, lines + dump_experiment(experiment))
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader and feature workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def earlier_time(rounds_csv) -> dict:
    """experiment -> (cpu_seconds, wall_seconds) that earlier runs of the command recorded in
    ``rounds_csv`` (empty when there is none): an interrupted round's time adds up over its runs."""
    path = Path(rounds_csv)
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    return {row.experiment: (float(row.cpu_seconds), float(row.wall_seconds)) for row in table.itertuples()}


def round_cv(experiment: Experiment, dataset: Dataset, work, untrained: list, context: RunContext) -> float | None:
    """The round's OOF lwlrap: read when current, predicted when every fold is trained, else None."""
    if untrained:
        return None
    scores_path = predictions_dir(work, experiment.name) / "oof_scores.json"
    if oof_is_current(work, experiment.name):
        return float(json.loads(scores_path.read_text())["lwlrap"])
    return float(predict_oof(experiment.name, dataset, work, **context.predicting())["lwlrap"])


def self_train(experiment: Experiment, dataset: Dataset, work, rounds: int, *, student: Experiment | None = None,
               unlabeled=None, experiments_dir="experiments", folds=None, context: RunContext | None = None,
               on_round: Callable[[RoundResult, Experiment], None] | None = None) -> list:
    """Rounds 0..``rounds`` of self-training (the module docstring); return their ``RoundResult``s.

    Parameters
    ----------
    experiment : round 0
    student : the experiment every later round trains (default: ``experiment``); its
        ``[self_training]`` table holds the pseudo-label and noise settings
    unlabeled : a folder of unlabelled audio, in place of the dataset's ``train_unlabeled/``
    experiments_dir : where the round files ``EXP_r<k>.toml`` are written
    folds : the folds to train (default: all of ``folds.csv``); CV needs every fold
    on_round : called with each finished round and its experiment (a tracker's run per round)

    Raises
    ------
    FreesoundError
        No unlabelled clips, a round file changed after its folds trained, or what training refuses.
    """
    if rounds < 1:
        raise FreesoundError(f"--rounds {rounds}: self-training needs at least 1 round after round 0")
    context = context or RunContext()
    student = student or experiment
    folder = unlabeled if unlabeled is not None else student.resolve_path(student.self_training.unlabeled)
    pool_dir = str(Path(folder).resolve()) if folder else ""
    if pool_dir:
        dataset = with_unlabeled(dataset, pool_dir)
    pool = unlabeled_pool(dataset)  # refuses an empty pool and warns of scored clips before any training
    out_dir = Path(work) / "self_training" / experiment.name
    spent = earlier_time(out_dir / ROUNDS_CSV)
    results, previous_probs = [], None
    for k in range(rounds + 1):
        name = round_name(experiment.name, k)
        config = experiment
        if k:
            config = round_experiment(student, name, round_name(experiment.name, k - 1), unlabeled=pool_dir,
                                      round_index=k)
            write_round_file(config, experiments_dir, work, f"Round {k} of `freesound self-train {experiment.name}`: "
                             f"{student.name} taught by {config.self_training.teacher}. Written by self-train; "
                             "a change is refused once a fold of it has trained.")
        cpu, wall = cpu_seconds(), time.perf_counter()
        context.log(f"self-train: round {k} ({name})")
        report = train_folds(config, dataset, work, folds, context=context, resume=True, score_oof=False)
        cv = round_cv(config, dataset, work, report.untrained, context)
        stats = {}
        if k:
            per_fold = pool_predictions(config.self_training.teacher, dataset, work, pool, **context.predicting())
            probs = geometric_mean(np.stack([per_fold[fold] for fold in sorted(per_fold)]))
            stats = dict(pool=len(pool), pseudo_labelled=int((probs.max(axis=1) >= config.self_training.floor).sum()),
                         confident_share=float(np.mean(probs.max(axis=1) >= CONFIDENT)),
                         top_label_flips=None if previous_probs is None else top_label_flips(previous_probs, probs))
            previous_probs = probs
        before = spent.get(name, (0.0, 0.0))
        result = RoundResult(k, name, cv, **stats, cpu_seconds=before[0] + cpu_seconds() - cpu,
                             wall_seconds=before[1] + time.perf_counter() - wall)
        context.log(f"self-train: round {k} ({name}) CV lwlrap "
                    f"{'not yet (folds untrained)' if cv is None else f'{cv:.4f}'}"
                    + (f"; {result.pseudo_labelled} of {result.pool} unlabelled clips pseudo-labelled, "
                       f"{result.confident_share:.0%} confident" if k else "")
                    + (f", {result.top_label_flips:.0%} top labels flipped" if result.top_label_flips is not None
                       else ""))
        results.append(result)
        write_summary(results, out_dir)
        if on_round is not None:
            on_round(result, config)
    return results


def rounds_table(results) -> pd.DataFrame:
    """``RoundResult``s as ``rounds.csv``'s rows (``ROUND_COLUMNS``)."""
    return pd.DataFrame([dataclasses.asdict(result) for result in results], columns=list(ROUND_COLUMNS))


def write_summary(results, out_dir) -> tuple:
    """Write ``rounds.csv`` and ``rounds.png`` into ``out_dir``; return their paths."""
    table = rounds_table(results)
    csv = Path(out_dir) / ROUNDS_CSV
    atomic_write_csv(csv, table, index=False)
    return csv, plot_self_training(table, Path(out_dir) / ROUNDS_PNG, confident=CONFIDENT)
