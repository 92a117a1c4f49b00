"""The checkpoint format: one ``torch.save`` of a plain dictionary per trained model.

``torch.load(weights_only=True)`` reads it (tensors, strings, numbers, lists, dicts), so loading
one never runs pickled code::

    {"model_name": str, "model_params": dict, "state_dict": {str: Tensor},
     "classes": [str, ...], "audio_config": dict, "format_version": 1, **extra}
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from freesound.errors import FreesoundError, FreesoundWarning
from freesound.fileio import atomic_path
from freesound.models.registry import canonical_name, create_model

CHECKPOINT_FORMAT_VERSION = 1
REQUIRED_CHECKPOINT_KEYS = ("model_name", "model_params", "state_dict", "classes", "audio_config")
#: Model parameters that only say where a model's first weights came from (a timm backbone's
#: ``pretrained`` file or hub weights): kept in a checkpoint as a record, never used to rebuild it,
#: since its state dict holds every weight (a kernel bundles the fine-tuned weights only).
START_ONLY_PARAMS = ("pretrained",)
#: How many names of missing, unexpected or misshapen keys a message lists (``state_dict_misfit``).
SHOWN_KEYS = 3


class CheckpointError(FreesoundError, ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model it names."""


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
    if hasattr(audio_config, "to_dict"):  # an AudioConfig records itself (its added fields at their defaults left out)
        audio_config = audio_config.to_dict()
    elif dataclasses.is_dataclass(audio_config) and not isinstance(audio_config, type):
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



def read_torch_file(path, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)``, with an unreadable file as one ``CheckpointError``
    naming it (``what`` says what it should have been).

    A damaged file fails in ``torch.load`` with whatever the layer that noticed raises: a truncated
    archive with ``OSError`` or ``RuntimeError``, text with ``KeyError``, a foreign pickle with
    ``UnpicklingError``; all of them are the file's fault, so all become the one error.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a readable {what} ({_unreadable_reason(error)})") from error


def read_released_weights(path, convert, *, what: str, model: str) -> tuple:
    """A released checkpoint for a pretrained start, read (``read_torch_file``) and converted by
    ``convert`` (a family's ``raw -> (model_name, params, state_dict)``).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable (named once, with the reason) or does not convert.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file {path} for {model} not found")
    raw = read_torch_file(path, what=what)  # its error names the file
    return convert_naming_file(convert, raw, f"pretrained weights file {path}")


def convert_naming_file(convert, raw, where: str) -> tuple:
    """``convert(raw)`` (a family's converter), its ``CheckpointError`` and its
    ``FreesoundWarning``s prefixed with ``where: `` (the file), since a converter sees no path.

    Raises
    ------
    CheckpointError
        What ``convert`` raised, naming ``where``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = convert(raw)
        except CheckpointError as error:
            raise CheckpointError(f"{where}: {error}") from None
    for warning in caught:
        named = issubclass(warning.category, FreesoundWarning)
        warnings.warn_explicit(f"{where}: {warning.message}" if named else warning.message, warning.category,
                               warning.filename, warning.lineno)
    return result


def _unreadable_reason(error: Exception) -> str:
    """The first sentence of what ``torch.load`` raised (torch appends paragraphs of advice), or
    what the file is when the error names nothing (a ``KeyError`` of a bare number: not a
    ``torch.save`` file at all)."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    reason = first_line.split(". ")[0].rstrip(".").strip("'\"")
    if isinstance(error, KeyError) or not reason or reason.isdigit():
        return "not a file torch.save wrote"
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError)):
        return f"truncated or damaged: {reason}"
    return reason


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
    checkpoint = read_torch_file(path, map_location)
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

    Notes
    -----
    ``model_params`` in ``START_ONLY_PARAMS`` (a ``pretrained`` weights file) are left out of the
    rebuild: the file is neither needed nor read.
    """
    checkpoint = load_checkpoint(path, map_location=device)
    name = checkpoint["model_name"]
    params = {key: value for key, value in checkpoint["model_params"].items() if key not in START_ONLY_PARAMS}
    try:
        model = create_model(name, **params)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot build model {name!r} from {params}: {error}") from error
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit {name}({params}): {error}") from error
    return model.to(device).eval()


def with_batch_counters(state: dict, expected: dict) -> dict:
    """``state`` with each batch norm's ``num_batches_tracked`` counter that ``expected`` has and
    ``state`` lacks (files saved by older torch) added as 0, which no output depends on."""
    counters = {key: torch.zeros_like(value) for key, value in expected.items()
                if key.endswith("num_batches_tracked") and key not in state}
    return {**state, **counters}


def state_dict_misfit(state: dict, expected: dict) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``expected`` ("" when
    nothing): counts and the first ``SHOWN_KEYS`` names of each kind of problem (missing,
    unexpected, misshapen keys), for one sentence about a weights file that does not fit."""

    def listed(keys):
        return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")

    def shape(tensor):
        return "x".join(map(str, tensor.shape)) or "scalar"

    missing = [key for key in expected if key not in state]
    unexpected = sorted(key for key in state if key not in expected)  # safetensors keeps no module order
    shapes = [f"{key} {shape(state[key])} in the file against {shape(expected[key])} here"
              for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = [f"{len(keys)} {kind} ({listed(keys)})" for kind, keys in
                (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("key(s) of another shape", shapes))
                if keys]
    return "; ".join(problems)
