"""Import the original team's released pytorch-argus weights as freesound checkpoints.

The winners released one folder per experiment, ``<experiment>/fold_<k>/model-<epoch>-<score>.pth``,
each file a ``torch.save`` of ``{"model_name", "params", "nn_state_dict"}`` where
``params["nn_module"] == (architecture_name, kwargs)`` and some tensors are float16 (apex O2).
:func:`import_argus` picks each fold's best file, rebuilds the architecture from the registry,
checks every key and shape before loading anything, and writes
``<work>/experiments/<name>/fold_<k>/model.pt`` plus a provenance file ``imported.json``.
Nothing from pytorch-argus is imported: the files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from freesound.data.dataset import FSD2019_CLASSES
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_text, file_sha256
from freesound.models import CheckpointError, create_model, read_torch_file, save_checkpoint
from freesound.paths import experiment_dir

__all__ = ["ARCHITECTURES", "ArgusArchitecture", "ArgusImportError", "import_argus"]

_FOLD_DIR = re.compile(r"fold_(\d+)")
_CHECKPOINT_NAME = re.compile(r"model-(\d+)-([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\.pth")


class ArgusImportError(FreesoundError, ValueError):
    """The source folder or one of its checkpoints cannot be imported."""


@dataclass(frozen=True)
class ArgusArchitecture:
    """How one original architecture maps onto the registry.

    Attributes
    ----------
    model_name : str
        The registered freesound model.
    stacker : bool
        Whether it is a second-level model (inputs are probabilities, not spectrograms).
    key_renames : mapping
        Original state-dict key -> freesound key, for keys whose names differ (none do today:
        the freesound modules were named after the original's).
    """

    model_name: str
    stacker: bool
    key_renames: Mapping[str, str] = field(default_factory=dict)


ARCHITECTURES: dict[str, ArgusArchitecture] = {
    "AuxSkipAttention": ArgusArchitecture("aux_skip_attention", stacker=False),
    "FCNet": ArgusArchitecture("fcnet", stacker=True),
}


@dataclass(frozen=True)
class _Source:
    """One fold's chosen file and what was read from it."""

    fold: int
    path: Path
    epoch: int
    score: float
    argus_model_name: str
    arch: str
    kwargs: dict
    state_dict: dict


def import_argus(src, name: str, work, *, stacker: bool = False, audio_config=None, classes=None) -> list[Path]:
    """Convert one experiment of original argus weights into freesound checkpoints.

    Parameters
    ----------
    src : path-like
        One experiment folder holding ``fold_<k>/model-<epoch>-<score>.pth`` files. A folder of
        several experiments is refused (import each on its own, under its own ``name``).
    name : str
        The experiment name to write under ``<work>/experiments/``.
    work : path-like
        The work directory (``data/`` by default in the CLI).
    stacker : bool
        Whether ``src`` holds stacker (``FCNet``) weights rather than first-level ones; a
        mismatch is an error, so first-level weights are never filed as a stacker.
    audio_config : mapping or dataclass, optional
        The front-end settings stored with the models (default ``{}``).
    classes : sequence of str, optional
        Output class names (default: the 80 FSDKaggle2019 classes).

    Returns
    -------
    list of Path
        The written ``fold_<k>/model.pt`` files, by fold.

    Notes
    -----
    Each fold's best file is the one with the highest score in its name (the later epoch on a
    tie). Every fold is read and checked before anything is written, float16 tensors become
    float32, and ``imported.json`` records the source files, their epochs, scores and sha256
    sums, the architecture and its arguments. Existing files for the same folds are replaced.

    Raises
    ------
    ArgusImportError
        ``src`` is missing or misshapen, a file is unreadable, names an unknown architecture,
        disagrees with the other folds, or does not fit its architecture (the message lists
        every missing and unexpected key and every shape mismatch).
    """
    src, work = Path(src), Path(work)
    if not name or Path(name).name != name or name in (".", ".."):
        raise ArgusImportError(f"experiment name {name!r} must be a plain folder name")
    classes = list(FSD2019_CLASSES if classes is None else classes)
    audio_config = {} if audio_config is None else audio_config

    sources = [_read(fold, path, stacker) for fold, path in _best_files(src).items()]
    first = sources[0]
    for other in sources[1:]:
        if (other.arch, other.kwargs) != (first.arch, first.kwargs):
            raise ArgusImportError(
                f"{other.path} is {other.arch}({other.kwargs}) but {first.path} is {first.arch}({first.kwargs}); "
                "the folds of one experiment must share their architecture"
            )
    num_classes = first.kwargs.get("num_classes")
    if num_classes is not None and num_classes != len(classes):
        raise ArgusImportError(f"{first.path} predicts {num_classes} classes but {len(classes)} class names were given")

    model_name = ARCHITECTURES[first.arch].model_name
    out_dir = experiment_dir(work, name)
    written = []
    for source in sources:
        model = create_model(model_name, **source.kwargs)
        model.load_state_dict(source.state_dict, strict=True)
        written.append(
            save_checkpoint(
                out_dir / f"fold_{source.fold}" / "model.pt",
                model,
                model_name=model_name,
                model_params=source.kwargs,
                classes=classes,
                audio_config=audio_config,
                imported_from={"file": str(source.path), "epoch": source.epoch, "score": source.score},
            )
        )
    provenance = {
        "source": str(src.resolve()),
        "format": "pytorch-argus",
        "argus_model_name": first.argus_model_name,
        "arch": first.arch,
        "kwargs": first.kwargs,
        "model_name": model_name,
        "stacker": stacker,
        "folds": [
            {
                "fold": s.fold,
                "file": str(s.path.resolve()),
                "epoch": s.epoch,
                "score": s.score,
                "sha256": file_sha256(s.path),
                "output": f"fold_{s.fold}/model.pt",
            }
            for s in sources
        ],
    }
    atomic_write_text(out_dir / "imported.json", json.dumps(provenance, indent=2) + "\n")
    return written


def _best_files(src: Path) -> dict[int, tuple[Path, int, float]]:
    """Fold index -> (path, epoch, score) of the best-scoring ``model-<epoch>-<score>.pth``."""
    if src.is_file():
        raise ArgusImportError(f"{src} is a file; give the folder that holds fold_<k>/model-<epoch>-<score>.pth")
    if not src.is_dir():
        raise ArgusImportError(f"{src}: no such folder")
    folds = {int(m.group(1)): p for p in src.iterdir() if p.is_dir() and (m := _FOLD_DIR.fullmatch(p.name))}
    if not folds:
        nested = sorted(p.name for p in src.iterdir() if p.is_dir() and any(p.glob("fold_*")))
        if nested:
            raise ArgusImportError(
                f"{src} holds several experiments ({', '.join(nested)}); import each folder on its own"
            )
        raise ArgusImportError(f"{src}: no fold_<k> folders; expected <experiment>/fold_<k>/model-<epoch>-<score>.pth")
    best = {}
    for fold, folder in sorted(folds.items()):
        candidates = []
        for path in sorted(folder.glob("*.pth")):
            match = _CHECKPOINT_NAME.fullmatch(path.name)
            if match is None:
                raise ArgusImportError(f"{path}: cannot read the epoch and score; expected model-<epoch>-<score>.pth")
            candidates.append((float(match.group(2)), int(match.group(1)), path))
        if not candidates:
            raise ArgusImportError(f"{folder}: no model-<epoch>-<score>.pth files")
        score, epoch, path = max(candidates)
        best[fold] = (path, epoch, score)
    return best


def _argus_fields(checkpoint, path: Path) -> tuple[str, dict, Mapping]:
    """``(architecture name, kwargs, nn_state_dict)`` of a loaded argus file, or one error saying
    that the file is something else (a tensor, a list, a freesound checkpoint...)."""
    params = checkpoint.get("params") if isinstance(checkpoint, dict) else None
    module = params.get("nn_module") if isinstance(params, dict) else None
    state_dict = checkpoint.get("nn_state_dict") if isinstance(checkpoint, dict) else None
    if (not isinstance(module, (tuple, list)) or len(module) != 2 or not isinstance(module[0], str)
            or not isinstance(module[1], dict) or not isinstance(state_dict, Mapping)):
        if isinstance(checkpoint, dict):
            found = "a dictionary of " + ", ".join(map(repr, list(checkpoint)[:5]))
        else:
            found = f"a {type(checkpoint).__name__}"
        raise ArgusImportError(f"{path}: not an argus checkpoint (found {found}); expected params['nn_module'] = "
                               "(name, kwargs) and nn_state_dict")
    return module[0], module[1], state_dict


def _read(fold: int, chosen: tuple[Path, int, float], stacker: bool) -> _Source:
    path, epoch, score = chosen
    try:
        checkpoint = read_torch_file(path, what="argus checkpoint")
    except CheckpointError as error:
        raise ArgusImportError(str(error)) from error
    arch, kwargs, state_dict = _argus_fields(checkpoint, path)
    if arch not in ARCHITECTURES:
        raise ArgusImportError(f"{path}: unknown architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    spec = ARCHITECTURES[arch]
    if spec.stacker != stacker:
        kind = "stacker" if spec.stacker else "first-level"
        raise ArgusImportError(f"{path}: holds {kind} {arch} weights; call with stacker={spec.stacker}")
    kwargs = dict(kwargs)
    return _Source(
        fold=fold,
        path=path,
        epoch=epoch,
        score=score,
        argus_model_name=str(checkpoint.get("model_name", "")),
        arch=arch,
        kwargs=kwargs,
        state_dict=_convert(state_dict, spec, kwargs, path),
    )


#: The first convolution of a first-level model: its weight's dimension 1 is the input planes.
FIRST_CONV_WEIGHT = "conv1.conv1.0.weight"


def _check_input_planes(state_dict: Mapping, spec: ArgusArchitecture, path: Path) -> None:
    """Refuse first-level weights whose first convolution does not read the original's 3 planes
    (log-mel, delta, delta-delta): an imported checkpoint is predicted with that input."""
    weight = state_dict.get(FIRST_CONV_WEIGHT)
    if spec.stacker or weight is None or weight.dim() != 4 or weight.shape[1] == 3:
        return
    raise ArgusImportError(
        f"{path}: {FIRST_CONV_WEIGHT} reads {weight.shape[1]} input planes, but the original models and their "
        "import read 3 (log-mel, delta, delta-delta), so these weights cannot be imported")


def _convert(state_dict: Mapping, spec: ArgusArchitecture, kwargs: dict, path: Path) -> dict:
    """Rename keys, cast to float32, and check keys and shapes against a fresh model."""
    converted = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ArgusImportError(f"{path}: nn_state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        # apex O2 stored conv, linear and PReLU weights in float16; inference here is float32.
        converted[spec.key_renames.get(key, key)] = value.float() if value.is_floating_point() else value
    # A meta-device model has the shapes without allocating or initialising the weights.
    with torch.device("meta"):
        try:
            expected = {k: v.shape for k, v in create_model(spec.model_name, **kwargs).state_dict().items()}
        except (TypeError, ValueError) as error:
            raise ArgusImportError(f"{path}: cannot build {spec.model_name} from {kwargs}: {error}") from error
    _check_input_planes(converted, spec, path)
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    mismatched = [
        f"{k} {tuple(converted[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if k in converted and converted[k].shape != shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{path}: the weights do not fit {spec.model_name}({kwargs}):"]
        lines += [f"  missing key {k}" for k in missing]
        lines += [f"  unexpected key {k}" for k in unexpected]
        lines += [f"  shape mismatch {m}" for m in mismatched]
        raise ArgusImportError("\n".join(lines))
    return converted
