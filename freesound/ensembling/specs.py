"""From resolved configs to trained things: prediction specs and taggers.

A command's ``EXPERIMENT|ENSEMBLE`` argument is read once (``freesound.config.load_config``);
``prediction_spec`` turns the resolved config into the plain, JSON-able spec that
``freesound.predict.ensemble`` predicts with and the kernels embed: every fold checkpoint of every
experiment and stacker, relative to ``<work>/experiments``. Every fold of ``<work>/folds.csv``
must be there, so a prediction never silently uses some of the folds.
"""

from __future__ import annotations

from freesound.config import EnsembleConfig, Experiment
from freesound.data.folds import recorded_folds
from freesound.paths import experiment_checkpoints, experiment_dir, weights_root
from freesound.predict import Tagger


def trained_checkpoints(work, name: str, folds=None, allow_unfinished: bool = False) -> list:
    """A trained experiment's (or stacker's) fold checkpoints; every fold of ``<work>/folds.csv``
    must be there unless ``folds`` names the ones wanted, and have finished training unless
    ``allow_unfinished`` (then a warning names it; ``experiment_checkpoints``)."""
    return experiment_checkpoints(experiment_dir(work, name), folds, required=recorded_folds(work),
                                  allow_unfinished=allow_unfinished)


def _relative_checkpoints(work, name: str, folds=None, allow_unfinished: bool = False) -> list:
    root = weights_root(work)
    return [path.relative_to(root).as_posix() for path in trained_checkpoints(work, name, folds, allow_unfinished)]


def experiment_spec(name: str, work, folds=None, allow_unfinished: bool = False) -> dict:
    """The spec of one trained (or imported) experiment: its fold checkpoints, no stackers."""
    return {"name": name, "experiments": {name: _relative_checkpoints(work, name, folds, allow_unfinished)},
            "stackers": {}}


def ensemble_spec(ensemble: EnsembleConfig, work, allow_unfinished: bool = False) -> dict:
    """The spec of a trained ensemble: its experiments in stacking order, then its stackers."""
    def checkpoints(name):
        return _relative_checkpoints(work, name, allow_unfinished=allow_unfinished)

    return {
        "name": ensemble.name,
        "experiments": {name: checkpoints(name) for name in ensemble.experiments},
        "stackers": {ensemble.stacker_dir_name(s): checkpoints(ensemble.stacker_dir_name(s)) for s in ensemble.stackers},
    }


def prediction_spec(config: Experiment | EnsembleConfig | str, work, allow_unfinished: bool = False) -> dict:
    """The spec of an experiment or an ensemble; a plain string names a trained (or imported)
    experiment under ``<work>/experiments`` that may have no experiment file. Folds that have
    not finished training are refused unless ``allow_unfinished``."""
    if isinstance(config, EnsembleConfig):
        return ensemble_spec(config, work, allow_unfinished)
    return experiment_spec(config if isinstance(config, str) else config.name, work,
                           allow_unfinished=allow_unfinished)


def trained_tagger(work, name: str, **kwargs) -> Tagger:
    """A ``Tagger`` on every fold of a trained experiment (``tag``, ``listen``, ``relabel``);
    ``kwargs`` go to ``Tagger`` (device, batch size...)."""
    return Tagger.from_checkpoints(trained_checkpoints(work, name), **kwargs)
