"""``freesound distill``: train a small student on a teacher's soft predictions.

The teacher is a trained experiment or an ensemble (its stacked blend); the student is an
ordinary experiment file (``experiments/small_student.toml``) trained with its ``[targets]``
pointed at the teacher for every training source: curated clips learn from the teacher's
out-of-fold predictions, noisy ones from its fold models' geometric mean, each mixed with the
given labels by the student's ``[targets] weight`` (``freesound.training.teacher``). The student
lands under ``<work>/experiments/<student>/fold_<k>/`` with its OOF scores like any experiment,
so ``predict``, ensembles and ``build-kernel --experiment`` use it as they use any other: a
kernel that must run on CPUs bundles one small model instead of the whole ensemble.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from freesound.config import TARGET_SOURCES, Experiment, find_experiment_file
from freesound.data.dataset import Dataset, multi_hot
from freesound.metrics import lwlrap
from freesound.paths import experiment_dir
from freesound.training.teacher import curated_teacher_predictions, resolve_teacher
from freesound.training.context import RunContext
from freesound.training.experiment_training import TrainingReport, train_folds


@dataclass(frozen=True)
class DistillReport:
    """What ``distill`` did: the student's ``TrainingReport``, and the teacher's OOF lwlrap on
    the same curated clips (None when the student's folds are not all trained yet)."""

    student: Experiment
    training: TrainingReport
    teacher_lwlrap: float | None


def student_experiment(student: Experiment, teacher: str, *, weight: float | None = None,
                       sources=TARGET_SOURCES) -> Experiment:
    """``student`` with its ``[targets]`` taking ``teacher``'s predictions for ``sources``
    (``weight``: the student's own ``[targets] weight`` when None)."""
    targets = dataclasses.replace(student.targets, teacher=teacher, sources=tuple(sources),
                                  weight=student.targets.weight if weight is None else weight)
    return dataclasses.replace(student, targets=targets)


def teacher_reference(teacher: str, work, experiments_dir) -> str:
    """How the student's config names the teacher: a trained experiment by its name, an
    experiment or ensemble file by its path (found in ``experiments_dir`` or the presets), so
    that training finds it wherever the student's own file lives."""
    if experiment_dir(work, teacher).is_dir():
        return teacher
    return str(find_experiment_file(teacher, experiments_dir).resolve())


def distill(teacher: str, student: Experiment, dataset: Dataset, work, folds=None, *, experiments_dir="experiments",
            weight: float | None = None, context: RunContext | None = None, **options) -> DistillReport:
    """Train ``student`` on ``teacher``'s soft predictions for every training source, then score it.

    ``context`` (default: ``RunContext()``) and ``options`` go to
    ``freesound.training.experiment_training.train_folds`` (``where``, ``max_epochs``, ``resume``,
    ``score_oof``).

    Raises
    ------
    FreesoundError
        The teacher is unknown or untrained, or an ensemble teacher's stackers or blend are
        missing (the message names the command to run first).
    """
    reference = teacher_reference(teacher, work, experiments_dir)
    resolve_teacher(reference, work, experiments_dir)  # an unknown teacher stops here, before any training
    student = student_experiment(student, reference, weight=weight)
    context = context or RunContext()
    report = train_folds(student, dataset, work, folds, context=context, **options)
    teacher_score = None
    if report.oof_scores is not None:
        curated = curated_teacher_predictions(resolve_teacher(reference, work, experiments_dir), dataset, work,
                                              device=context.device, progress=False, log=context.log)
        labels = dataset.curated.set_index("fname").labels.loc[curated.index]
        teacher_score = float(lwlrap(multi_hot(labels, dataset.classes), curated.to_numpy()))
    return DistillReport(student, report, teacher_score)
