"""The model registry and the checkpoint format.

Every network is registered under a name, so an experiment file, a checkpoint and the kernel can
refer to it by that name and its constructor arguments::

    >>> from freesound.models import create_model, list_models
    >>> list_models()
    ['aux_skip_attention', 'fcnet', 'simple_cnn']
    >>> model = create_model("aux_skip_attention", num_classes=80, base_size=64)

A checkpoint is a ``torch.save`` of a plain dictionary that ``torch.load(weights_only=True)``
reads (tensors, strings, numbers, lists, dicts), so loading one never runs pickled code::

    {"model_name": str, "model_params": dict, "state_dict": {str: Tensor},
     "classes": [str, ...], "audio_config": dict, "format_version": 1, **extra}

First-level models (``aux_skip_attention``, ``simple_cnn``) take ``(B, 3, n_mels, frames)`` and
return a tuple whose first element is the main head's logits ``(B, num_classes)``; the stacker
``fcnet`` takes ``(B, in_channels)`` and returns a logits tensor.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from freesound.errors import FreesoundError
from freesound.fileio import atomic_path

__all__ = [
    "CheckpointError",
    "canonical_name",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_checkpoint",
]

CHECKPOINT_FORMAT_VERSION = 1
REQUIRED_CHECKPOINT_KEYS = ("model_name", "model_params", "state_dict", "classes", "audio_config")


class CheckpointError(FreesoundError, ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model it names."""


class _Entry(NamedTuple):
    name: str  # the canonical name; aliases point to the same entry
    factory: Callable[..., nn.Module]


# The one piece of global state: registered name or alias -> entry.
_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, aliases: tuple[str, ...] = ()):
    """Class or function decorator that registers a model factory under ``name``.

    Parameters
    ----------
    name : str
        The canonical name, stored in checkpoints and listed by :func:`list_models`.
    aliases : tuple of str
        Other names :func:`create_model` accepts (e.g. the original team's class names).

    Examples
    --------
    >>> @register_model("tiny")
    ... class Tiny(nn.Module):
    ...     def __init__(self, num_classes): ...
    """

    def decorator(factory):
        keys = (name, *aliases)
        for key in keys:
            existing = _REGISTRY.get(key)
            # Re-registering the same definition (a module reload) is harmless; a clash is not.
            if existing is not None and _qualname(existing.factory) != _qualname(factory):
                raise ValueError(f"model name {key!r} is already registered to {_qualname(existing.factory)}")
        for key in keys:
            _REGISTRY[key] = _Entry(name, factory)
        return factory

    return decorator


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def list_models(*, aliases: bool = False) -> list[str]:
    """Sorted names of the registered models (with ``aliases=True``, their aliases too)."""
    return sorted(key for key, entry in _REGISTRY.items() if aliases or key == entry.name)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())} "
            f"(aliases: {', '.join(sorted(set(list_models(aliases=True)) - set(list_models())))})"
        ) from None


def canonical_name(name: str) -> str:
    """The canonical registered name for ``name`` or one of its aliases (``KeyError`` if unknown)."""
    return _entry(name).name


def create_model(name: str, **params) -> nn.Module:
    """Build the registered model ``name`` with constructor arguments ``params``.

    Raises
    ------
    KeyError
        ``name`` is not registered; the message lists the registered names.
    TypeError
        ``params`` has unknown or lacks required arguments; the message names all of them.
    """
    entry = _entry(name)
    signature = inspect.signature(entry.factory)
    accepted = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = [] if takes_any else sorted(set(params) - set(accepted))
    missing = [
        p.name
        for p in accepted.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in params
    ]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown parameter(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"missing required parameter(s) {', '.join(missing)}")
        raise TypeError(f"{entry.name}: {'; '.join(problems)}; it accepts {', '.join(accepted)}")
    return entry.factory(**params)


def _check_plain(value, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse, naming where it sits."""
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a weights_only checkpoint cannot hold; "
        "use tensors, str, int, float, bool, None, lists, tuples and dicts"
    )


def save_checkpoint(
    path,
    model: nn.Module,
    *,
    model_name: str,
    model_params: Mapping[str, Any],
    classes,
    audio_config,
    **extra,
) -> Path:
    """Write ``model`` and what is needed to rebuild and use it, atomically.

    Parameters
    ----------
    path : path-like
        Destination file; its folder is created. A temporary file in the same folder is renamed
        over it, so an interruption leaves the old file or the new one, never half of one.
    model : nn.Module
        Its ``state_dict()`` is saved on the CPU.
    model_name : str
        A registered name (an alias is stored as its canonical name).
    model_params : mapping
        The keyword arguments ``create_model(model_name, **model_params)`` rebuilds it with.
    classes : sequence of str
        Class names in output order.
    audio_config : mapping or dataclass
        The front-end settings the model was trained on; a dataclass is stored as a dict.
    **extra
        Further plain values to keep (epoch, score, provenance...).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if dataclasses.is_dataclass(audio_config) and not isinstance(audio_config, type):
        audio_config = dataclasses.asdict(audio_config)
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_name": canonical_name(model_name),
        "model_params": dict(model_params),
        "classes": [str(name) for name in classes],
        "audio_config": dict(audio_config),
        **extra,
    }
    _check_plain(checkpoint, "checkpoint")
    checkpoint["state_dict"] = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` as its raw dictionary.

    Raises
    ------
    CheckpointError
        The file is missing, is not a ``weights_only``-readable ``torch.save`` file, or lacks
        one of the keys ``model_name``, ``model_params``, ``state_dict``, ``classes``,
        ``audio_config``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dictionary, found a {type(checkpoint).__name__}")
    missing = [key for key in REQUIRED_CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a freesound checkpoint, missing key(s) {', '.join(missing)}")
    return checkpoint


def load_model(path, device="cpu") -> nn.Module:
    """Rebuild the model a checkpoint names, load its weights strictly, and return it in eval mode.

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_checkpoint`.
    device : str or torch.device
        Where the weights are loaded and the model is moved to.
    """
    checkpoint = load_checkpoint(path, map_location=device)
    name, params = checkpoint["model_name"], checkpoint["model_params"]
    try:
        model = create_model(name, **params)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot build model {name!r} from {params}: {error}") from error
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit {name}({params}): {error}") from error
    return model.to(device).eval()


# Registering the families is importing them (timm does the same).
from freesound.models import aux_skip_attention, fcnet, simple_cnn  # noqa: E402,F401
