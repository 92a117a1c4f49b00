"""Start a fold from another experiment's checkpoint of the same fold (``[pretrained] experiment``).

Noisy pretraining then curated fine-tuning, the 7th place's recipe in Freesound Audio Tagging
2019 (reported about +0.01 CV): a pretraining experiment samples only noisy clips (its fold's
validation is still the curated fold), and the fine-tuning experiment starts each fold from it.
The same fold, because fold ``k``'s pretrained model chose its best epoch on fold ``k``'s curated
clips and has seen no other curated clip: starting fold ``k`` from another fold's model would
carry that fold's training clips, fold ``k``'s validation clips among them, into its training.
"""

from __future__ import annotations

import torch

from freesound.config import Experiment
from freesound.errors import FreesoundError
from freesound.models import load_checkpoint
from freesound.paths import checkpoint_path


def check_pretrained(experiment: Experiment, work, folds) -> None:
    """Refuse, before any training, an experiment whose ``[pretrained]`` experiment lacks one
    of ``folds`` (the message says what to train)."""
    source = experiment.pretrained.experiment
    if source == experiment.name:
        raise FreesoundError(f"experiment {experiment.name!r} names itself in [pretrained] experiment; name the "
                             f"pretraining experiment it starts from")
    missing = [fold for fold in folds if source and not checkpoint_path(work, source, fold).is_file()]
    if missing:
        raise FreesoundError(f"experiment {experiment.name!r} starts from {source!r}, whose fold(s) "
                             f"{', '.join(map(str, missing))} have no model.pt under {checkpoint_path(work, source, 0).parents[1]}; "
                             f"train it first (freesound train {source} --data ...)")


def load_pretrained(model: torch.nn.Module, experiment: Experiment, classes, work, fold: int) -> None:
    """Copy fold ``fold`` of ``experiment.pretrained.experiment`` into ``model`` (in place).

    Raises
    ------
    FreesoundError
        The pretrained fold has no ``model.pt`` (train it first), or its model is another
        architecture, predicts other classes, or has parameters that shape other weights than
        ``experiment``'s (a different dropout is fine).
    """
    source = experiment.pretrained.experiment
    path = checkpoint_path(work, source, fold)
    if not path.is_file():
        raise FreesoundError(f"experiment {experiment.name!r} starts from {source!r}, whose fold {fold} has no "
                             f"{path}; train it first (freesound train {source} --data ... --fold {fold})")
    checkpoint = load_checkpoint(path)
    ours = {"model": experiment.model.name, "classes": list(classes)}
    theirs = {"model": checkpoint["model_name"], "classes": list(checkpoint["classes"])}
    different = [key for key in ours if ours[key] != theirs[key]]
    if different:
        raise FreesoundError(f"experiment {experiment.name!r} cannot start from {path}: other "
                             f"{' and '.join(different)} ({'; '.join(f'{theirs[k]} there, {ours[k]} here' for k in different)})")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:
        # Settings that do not shape weights (dropout) may differ; any that do fail here.
        raise FreesoundError(f"experiment {experiment.name!r} cannot start from {path}: its weights do not fit "
                             f"this experiment's model (parameters {checkpoint['model_params']} there, "
                             f"{experiment.model.params} here)") from None
