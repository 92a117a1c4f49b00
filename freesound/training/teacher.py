"""Targets from an earlier model's predictions: soft pseudo-labels and distillation.

An experiment's ``[targets]`` table (``freesound.config.TargetsConfig``) names a *teacher*, a
trained experiment or an ensemble, and the training sources whose clips train on a mix of their
given labels ``y`` and the teacher's probabilities ``p``::

    target = (1 - weight) * y + weight * p                    (``soft_targets``)

Where ``p`` comes from, so that no clip's target comes from a model that trained on that clip's
labels while it is held out:

- curated clips: the teacher's out-of-fold prediction (clip ``c`` of fold ``j`` is predicted by
  the teacher's fold-``j`` model, which never trained on it). An experiment's comes from
  ``predictions/<teacher>/oof_tiles.npz`` (predicted first when missing or older than its
  weights); an ensemble's is its blend, ``predictions/<ensemble>/blend_oof.csv`` from
  ``freesound stack`` (for an ensemble without stackers, the geometric mean of its experiments'
  OOF predictions). The teacher's folds must be this work folder's ``folds.csv``.
- noisy clips (never validated on): the geometric mean of the teacher's fold models (an
  ensemble's whole blend, stackers included), computed once and cached in
  ``predictions/<teacher>/teacher_noisy.npz``, keyed by the teacher's weight files and the noisy
  clips (a changed teacher or dataset recomputes it).

Validation targets are always the given labels. A student's validation score is still slightly
optimistic, as in any stacking on OOF predictions: the teacher's fold-``j`` model that labels a
training clip of fold ``j`` trained on the student's validation fold. Soft pseudo-labels for noisy clips are the 4th
place's method in Freesound Audio Tagging 2019; ``freesound distill`` applies the same mechanism
to every source to train a small student.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.config import ConfigError, EnsembleConfig, Experiment, load_config
from freesound.data.dataset import Dataset
from freesound.data.features import ensure_features, load_features
from freesound.data.folds import read_folds, recorded_folds
from freesound.errors import FreesoundError
from freesound.fileio import atomic_path
from freesound.models import load_model
from freesound.paths import experiment_checkpoints, experiment_dir, predictions_dir, weights_root
from freesound.predict import EnsemblePredictor, Tagger, geometric_mean
from freesound.progress import progress_bar
from freesound.training.fold_guard import StaleSplitError, check_oof_folds
from freesound.training.oof import load_oof_tiles, oof_is_current, predict_oof

NOISY_CACHE = "teacher_noisy.npz"


def soft_targets(labels: np.ndarray, probs: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * labels + weight * probs``, float32 of the inputs' shape ``(N, C)``.

    ``weight = 0`` gives the labels, ``weight = 1`` the teacher's probabilities (distillation on
    the teacher alone); in between, Hinton et al.'s (2015) mix of hard and soft targets.
    """
    return ((1.0 - weight) * np.asarray(labels, np.float64) + weight * np.asarray(probs, np.float64)).astype(np.float32)


@dataclass(frozen=True)
class TeacherPredictions:
    """A teacher's probabilities for the training clips.

    Attributes
    ----------
    name : the teacher (experiment or ensemble)
    curated : DataFrame indexed by fname, one column per class: out-of-fold probabilities
    noisy : DataFrame indexed by fname, one column per class: the fold models' geometric mean
    """

    name: str
    curated: pd.DataFrame
    noisy: pd.DataFrame

    def probabilities(self, split: str, fnames) -> np.ndarray:
        """(N, C) float32 probabilities of ``fnames`` of ``split`` (``train_curated`` or ``train_noisy``).

        Raises
        ------
        FreesoundError
            A clip the teacher has no prediction for (named).
        """
        frame = self.curated if split == "train_curated" else self.noisy
        fnames = list(fnames)
        missing = [f for f in fnames if f not in frame.index]
        if missing:
            raise FreesoundError(f"teacher {self.name!r} has no prediction for {split}/{missing[0]}"
                                 f"{f' and {len(missing) - 1} more clips' if len(missing) > 1 else ''}")
        return frame.loc[fnames].to_numpy(np.float32)


def resolve_teacher(name: str, work, experiments_dir) -> str | EnsembleConfig:
    """A teacher name as a trained experiment's name, or an ensemble.

    A folder ``<work>/experiments/<name>/`` is a trained (or imported) experiment; otherwise the
    name is looked up as an experiment or ensemble file (``freesound.config.load_config``).

    Raises
    ------
    FreesoundError
        Neither (the message says what to train).
    """
    if experiment_dir(work, name).is_dir():
        return name
    try:
        config = load_config(name, experiments_dir)
    except ConfigError:
        raise FreesoundError(f"teacher {name!r} is neither a trained experiment under {weights_root(work)} nor an "
                             f"experiment or ensemble file; train it first (freesound train {name} --data ...)") from None
    return config if isinstance(config, EnsembleConfig) else config.name


def _checkpoints(work, name: str, teacher: str) -> list:
    try:
        return experiment_checkpoints(experiment_dir(work, name), required=recorded_folds(work))
    except FreesoundError as error:
        raise FreesoundError(f"teacher {teacher!r}: {error}; train it first (freesound train {name} --data ...)") from None


def _teacher_weights(teacher: str | EnsembleConfig, work) -> dict:
    """name -> fold checkpoints of every experiment and stacker of the teacher, in blend order."""
    if isinstance(teacher, str):
        return {teacher: _checkpoints(work, teacher, teacher)}
    weights = {name: _checkpoints(work, name, teacher.name) for name in teacher.experiments}
    for stacker in teacher.stackers:
        name = teacher.stacker_dir_name(stacker)
        try:
            weights[name] = experiment_checkpoints(experiment_dir(work, name), required=recorded_folds(work))
        except FreesoundError:
            raise FreesoundError(f"teacher {teacher.name!r}: stacker {name!r} is not trained; run "
                                 f"`freesound stack {teacher.name} --data ...` first") from None
    return weights


def _predictor(teacher: str | EnsembleConfig, weights: dict, device, batch_size: int):
    """A ``Tagger`` (experiment) or ``EnsemblePredictor`` (ensemble) on the teacher's weights."""
    if isinstance(teacher, str):
        return Tagger.from_checkpoints(weights[teacher], device=device, batch_size=batch_size)
    taggers = {name: Tagger.from_checkpoints(weights[name], device=device, batch_size=batch_size)
               for name in teacher.experiments}
    stackers = {name: [load_model(path) for path in paths] for name, paths in weights.items() if name not in taggers}
    return EnsemblePredictor(taggers, stackers, device=device)


def predict_noisy(predictor, dataset: Dataset, work, *, progress: bool = True, desc: str = "noisy clips",
                  chunk: int = 256, feature_workers: int = 1, split: str = "train_noisy", fnames=None) -> np.ndarray:
    """A ``Tagger``'s or ``EnsemblePredictor``'s probabilities for every noisy clip, (N, C) float32
    in ``dataset.noisy`` order (or for ``fnames`` of another ``split``: the unlabelled pool).

    Log-mels not cached yet are computed first (``ensure_features``); the clips are then
    read and predicted ``chunk`` at a time (the real noisy split's log-mels are about 9 GB), with
    a progress bar over the clips unless ``progress`` is False.
    """
    ensure_features(dataset, work, predictor.audio_config, splits=(split,), workers=feature_workers,
                    progress=progress)
    fnames = dataset.fnames(split) if fnames is None else list(fnames)
    parts = [np.zeros((0, len(predictor.classes)), dtype=np.float32)]
    with progress_bar(total=len(fnames), desc=desc, unit="clip", enabled=progress) as bar:
        for start in range(0, len(fnames), chunk):
            names = fnames[start:start + chunk]
            logmels = load_features(dataset, work, split, names, predictor.audio_config)
            parts.append(predictor.predict_spectrograms(logmels).astype(np.float32, copy=False))
            bar.update(len(names))
    return np.concatenate(parts)


def _cache_key(weights: dict, dataset: Dataset, work) -> str:
    """What the noisy predictions depend on: every weight file (path under ``<work>/experiments``,
    so that ``--work`` may be given relative or absolute; size; mtime) and the clips."""
    root = weights_root(work)
    files = [[path.relative_to(root).as_posix(), path.stat().st_size, path.stat().st_mtime_ns]
             for paths in weights.values() for path in paths]
    return json.dumps({"weights": files, "data": str(Path(dataset.root).resolve()),
                       "noisy": list(dataset.noisy.fname)})


def noisy_teacher_predictions(teacher: str | EnsembleConfig, dataset: Dataset, work, *, device="cpu",
                              batch_size: int = 64, progress: bool = True, feature_workers: int = 1,
                              log=print) -> pd.DataFrame:
    """The teacher's probabilities for every noisy clip (indexed by fname), from the cache when it
    is current, else predicted (``predict_noisy``) and cached atomically."""
    name = teacher if isinstance(teacher, str) else teacher.name
    weights = _teacher_weights(teacher, work)
    path = predictions_dir(work, name) / NOISY_CACHE
    key = _cache_key(weights, dataset, work)
    classes = list(dataset.classes)
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return pd.DataFrame(cached["probs"], index=pd.Index(cached["fnames"], name="fname"), columns=classes)
    predictor = _predictor(teacher, weights, device, batch_size)
    if list(predictor.classes) != classes:
        raise FreesoundError(f"teacher {name!r} predicts other classes than {dataset.root}")
    log(f"teacher {name}: predicting {len(dataset.noisy)} noisy clips with {sum(map(len, weights.values()))} models")
    probs = predict_noisy(predictor, dataset, work, progress=progress, desc=f"teacher {name}: noisy clips",
                          feature_workers=feature_workers)
    fnames = np.array(dataset.noisy.fname, dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, fnames=fnames, probs=probs, key=np.array(key))
    return pd.DataFrame(probs, index=pd.Index(fnames, name="fname"), columns=classes)


def _experiment_oof(name: str, teacher: str, dataset: Dataset, work, assignment, *, device, progress,
                    feature_workers, log) -> pd.DataFrame:
    if not oof_is_current(work, name):
        predict_oof(name, dataset, work, device=str(device), progress=progress, feature_workers=feature_workers,
                    log=log)
    path = predictions_dir(work, name) / "oof_tiles.npz"
    oof = load_oof_tiles(path)
    try:  # the teacher's OOF must come from these folds: else a clip's target may come from a model trained on it
        check_oof_folds(path, oof.fnames, oof.folds, assignment, work)
    except StaleSplitError as error:
        raise StaleSplitError(f"teacher {teacher!r}: {error}") from None
    return pd.DataFrame(oof.clip_means(), index=pd.Index(oof.fnames, name="fname"), columns=list(dataset.classes))


def curated_teacher_predictions(teacher: str | EnsembleConfig, dataset: Dataset, work, *, device="cpu",
                                progress: bool = True, feature_workers: int = 1, log=print) -> pd.DataFrame:
    """The teacher's out-of-fold probabilities for every curated clip, indexed by fname.

    Raises
    ------
    FreesoundError
        Missing weights, an ensemble's stacked blend missing or older than its weights (run
        ``freesound stack`` first), or OOF predictions from other folds than ``folds.csv``.
    """
    assignment = read_folds(work, dataset.curated.fname)
    weights = _teacher_weights(teacher, work)
    if isinstance(teacher, str):
        return _experiment_oof(teacher, teacher, dataset, work, assignment, device=device, progress=progress,
                               feature_workers=feature_workers, log=log)
    levels = [_experiment_oof(name, teacher.name, dataset, work, assignment, device=device, progress=progress,
                              feature_workers=feature_workers, log=log) for name in teacher.experiments]
    if not teacher.stackers:
        first = levels[0]
        return pd.DataFrame(geometric_mean(np.stack([level.loc[first.index].to_numpy() for level in levels])),
                            index=first.index, columns=first.columns)
    blend = predictions_dir(work, teacher.name) / "blend_oof.csv"
    newest = max(path.stat().st_mtime for paths in weights.values() for path in paths)
    if not blend.is_file() or blend.stat().st_mtime < newest:
        raise FreesoundError(f"teacher {teacher.name!r}: {blend} is missing or older than its weights; run "
                             f"`freesound stack {teacher.name} --data ...` first")
    frame = pd.read_csv(blend, dtype={"fname": str}).set_index("fname")
    if list(frame.columns) != list(dataset.classes):
        raise FreesoundError(f"{blend}: its columns are not this dataset's classes")
    return frame


def teacher_predictions(experiment: Experiment, dataset: Dataset, work, *, device="cpu", progress: bool = True,
                        feature_workers: int = 1, log=print) -> TeacherPredictions | None:
    """The experiment's teacher's predictions for the sources that use them (None when its
    ``[targets]`` are off). Curated OOF predictions are made, and noisy ones made and cached,
    when missing; the teacher is looked up beside the experiment's file (``resolve_teacher``)."""
    targets = experiment.targets
    if not targets.enabled:
        return None
    teacher = resolve_teacher(targets.teacher, work, experiment.source_dir or "experiments")
    name = teacher if isinstance(teacher, str) else teacher.name
    if name == experiment.name:
        raise FreesoundError(f"experiment {experiment.name!r} names itself as its teacher")
    options = dict(device=device, progress=progress, feature_workers=feature_workers, log=log)
    empty = pd.DataFrame(columns=list(dataset.classes), index=pd.Index([], name="fname"), dtype=np.float32)
    curated = curated_teacher_predictions(teacher, dataset, work, **options) if "curated" in targets.sources else empty
    wants_noisy = {"corrected_noisy", "noisy"} & set(targets.sources) and len(dataset.noisy)
    noisy = noisy_teacher_predictions(teacher, dataset, work, **options) if wants_noisy else empty
    return TeacherPredictions(name, curated, noisy)
