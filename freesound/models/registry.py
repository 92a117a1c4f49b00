"""The model registry: every network under a name, built by ``create_model(name, **params)``.

An experiment file, a checkpoint and the kernel refer to a model by its registered name and its
constructor arguments (timm's pattern). The families register themselves when
``freesound.models`` imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

from torch import nn


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
