"""A fold's resumable state (``state.pt``): its format, the upgrade of older ones, and what a resume checks.

A state holds every module's state dict (model, optimizer, scheduler, scaler, the averaged model),
the run's ``FitState`` (``freesound.training.engine``), each process's random generators
(``rank_rng``, with process 0's also at the top level as ``rng`` / ``cuda_rng``), the number of
processes that trained it (``world_size``), its settings (``experiment``), device, AMP setting and
``format`` (``STATE_FORMAT``). ``upgrade_state`` turns a state of any earlier format into this one,
so the resume path reads one format only.
"""

from __future__ import annotations

import json

from collections.abc import Callable
from pathlib import Path

import torch

from freesound.config import Experiment, experiment_from_dict, read_toml
from freesound.errors import FreesoundError
from freesound.paths import fold_dir, train_state_path
from freesound.training.engine import load_state, restore_rng_states

#: The format of the states this version writes. States without a number are format 1: from
#: before the settings, device, AMP setting and per-process generators were recorded.
STATE_FORMAT = 2
#: Where a run is logged, not how it trains: a resumed fold or search may log elsewhere.
TRACKING_SETTINGS = ("tracking.trackers", "tracking.uri")
#: Settings a resumed run may change: how long it trains, how many loader processes it uses,
#: whether it insists on deterministic algorithms and where it is tracked. Any other change would
#: continue old weights under new rules, so resuming then is refused.
RESUMABLE_SETTINGS = ("train.max_epochs", "train.workers", "train.deterministic", *TRACKING_SETTINGS)


class StaleTrainingStateError(FreesoundError):
    """``--resume`` on a fold whose saved state was trained with other settings."""


def upgrade_state(state: dict, fold_settings: Callable[[], dict | None] = lambda: None) -> dict:
    """``state`` (read by ``engine.load_state``) in format ``STATE_FORMAT``; every branch for an
    older format is here, each keyed by the entry that format lacks:

    - no settings: they are ``fold_settings()`` (the fold's config.toml, or None when there is none);
    - no device: unrecorded (None);
    - no AMP setting: AMP was on exactly when the gradient scaler's state is not empty (a disabled
      ``GradScaler`` saves ``{}``);
    - no per-process generators (``rank_rng``): the top-level ones, saved by one process.

    Settings added to ``Experiment`` since a state was saved count as their defaults there
    (``changed_settings``).

    Returns
    -------
    dict: a new dict
    """
    upgraded = dict(state, format=STATE_FORMAT)
    if "experiment" not in state:
        upgraded["experiment"] = fold_settings()
    upgraded.setdefault("device", None)
    upgraded.setdefault("amp", bool(state.get("scaler")))
    if not state.get("rank_rng"):
        upgraded["rank_rng"] = [{key: state[key] for key in ("rng", "cuda_rng") if key in state}]
        upgraded["world_size"] = 1
    return upgraded


def fold_config_settings(work, name: str, fold: int) -> dict | None:
    """The settings in a fold's config.toml (``Experiment.to_dict()``), or None when it has none."""
    config = fold_dir(work, name, fold) / "config.toml"
    return experiment_from_dict(read_toml(config), name=name).to_dict() if config.is_file() else None


def read_fold_state(path: Path, work, name: str, fold: int) -> dict:
    """The state at ``path`` (of fold ``fold`` of experiment ``name``), upgraded to the current format."""
    return upgrade_state(load_state(path), lambda: fold_config_settings(work, name, fold))


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(settings: dict) -> dict:
    """``settings`` as JSON holds them (tuples as lists): a state keeps tuples, a search study's
    JSON does not, and the two must compare alike."""
    return json.loads(json.dumps(settings))


def changed_settings(saved: dict, current: dict, ignored=RESUMABLE_SETTINGS) -> list:
    """Dotted keys (``"model.params.base_size"``) whose values differ between two
    ``Experiment.to_dict()`` dicts, except ``ignored`` ones; sorted. A setting added since
    ``saved`` was written counts as its default there (it did not exist, so it was off); the
    entries of table-valued settings (model params, losses) are another model's or loss's own, so
    they have no such default."""
    defaults = {key: value for key, value in _flatten(_plain(Experiment().to_dict())).items()
                if not key.startswith(("model.params.", "loss."))}
    saved, current = _flatten(_plain(saved)), _flatten(_plain(current))
    return sorted(key for key in saved.keys() | current.keys()
                  if key not in ignored and saved.get(key, defaults.get(key)) != current.get(key))


def state_conflicts(state: dict, experiment: Experiment) -> list:
    """The settings that differ between ``experiment`` and an upgraded state's (none when the
    state's settings are unknown)."""
    saved = state["experiment"]
    return [] if saved is None else changed_settings(saved, experiment.to_dict())


def resume_conflicts(experiment: Experiment, work, fold: int) -> list:
    """The settings that differ between ``experiment`` and the fold's saved training state
    (empty when there is no saved state, or it matches)."""
    path = train_state_path(work, experiment.name, fold)
    if not path.is_file():
        return []
    return state_conflicts(read_fold_state(path, work, experiment.name, fold), experiment)


def refuse_conflicts(state: dict, experiment: Experiment, fold: int, path: Path) -> None:
    """Raise ``StaleTrainingStateError`` naming the changed settings unless ``state`` (upgraded)
    was trained with ``experiment``'s."""
    conflicts = state_conflicts(state, experiment)
    if conflicts:
        raise StaleTrainingStateError(
            f"fold {fold} of {experiment.name!r} was trained with other settings "
            f"({', '.join(conflicts)} changed), so it cannot be resumed; train it again without "
            f"--resume (its state in {path.parent} is then replaced)")


def saved_run(state: dict) -> tuple:
    """The device and AMP setting a training state (of any format) was saved under.

    Returns
    -------
    (device str or None, amp bool)
    """
    upgraded = upgrade_state(state)
    return upgraded["device"], upgraded["amp"]


def restore_generators(state: dict, device: torch.device, rank: int, world_size: int) -> bool:
    """Set this process's (``rank`` of ``world_size``) random generators from its entry of an
    upgraded state's ``rank_rng``. False (nothing restored) when the state was saved by another
    number of processes, or ``restore_rng_states`` could not restore every generator."""
    saved = state["rank_rng"]
    return len(saved) == world_size and restore_rng_states(saved[rank], device)


def resume_note(fold: int, saved_device, saved_amp: bool, device: torch.device, use_amp: bool,
                generators_restored: bool, *, saved_processes: int = 1, processes: int = 1) -> str | None:
    """The one log line for a fold resumed under another device, AMP setting or number of
    (torchrun) processes, or without every generator it draws from (None when the resume is exact).

    A change of AMP setting starts the gradient scaler afresh: a disabled scaler saves nothing to
    continue from, and an enabled one's loss scale means nothing without AMP. An unrecorded device
    (a state from before it was recorded) counts as a change only through the others.
    """
    same_device = saved_device is None or torch.device(saved_device).type == device.type
    if same_device and saved_amp == use_amp and generators_restored and saved_processes == processes:
        return None

    def under(where, amp, count):
        return (f"{where or 'an unrecorded device'} {'with' if amp else 'without'} AMP"
                f"{f' in {count} processes' if count != 1 else ''}")

    consequences = ["the gradient scaler starts fresh"] if saved_amp != use_amp else []
    consequences.append("the resumed epochs will not repeat an uninterrupted run bit for bit")
    return (f"fold {fold}: saved on {under(saved_device, saved_amp, saved_processes)}, resumed on "
            f"{under(device, use_amp, processes)}: {' and '.join(consequences)}")
