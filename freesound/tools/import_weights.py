"""Import a released AudioSet tagger's checkpoint as a freesound experiment (``import-weights``).

``freesound import-weights FILE --format panns --name NAME`` reads FILE with
``torch.load(weights_only=True)``, converts it with the format's converter (every key and shape
checked against the architecture, the front-end weights it holds against the format's audio
preset), and writes

- ``<work>/experiments/NAME/fold_0/model.pt``: a freesound checkpoint whose classes are the 527
  AudioSet display names (``audioset/class_labels_indices.csv``, CC BY-SA 4.0, see
  ``audioset/LICENSE.md``), whose front end is the preset's and whose network input is
  ``[input] whole_clip`` (one pass over the whole clip, as the original predicts);
- ``<experiments>/NAME.toml``: the experiment file (model, ``[audio] preset``, ``[input]``).

``predict``, ``tag``, ``stack`` and ``build-kernel`` then use NAME as any trained experiment.

A format is an entry of ``FORMATS``: its converter ``convert(raw_checkpoint) -> (model_name,
model_params, state_dict)`` (freesound's names), the ``[audio]`` preset of its front end, and the
shortest input in frames its models take (``[input] tile_frames``: shorter clips are padded to
it). Another family registers its own with ``register_format``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from freesound.config import AUDIO_PRESETS, InputConfig, audio_preset, dump_toml
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_text, file_sha256
from freesound.models import CheckpointError, create_model, read_torch_file, save_checkpoint
from freesound.models.checkpoint import convert_naming_file
from freesound.models import efficientat, panns
from freesound.paths import IMPORTED_FILE, experiment_dir

__all__ = ["FORMATS", "WeightsFormat", "audioset_classes", "import_weights", "register_format"]

#: The AudioSet labels (``index,mid,display_name``) shipped with the package.
AUDIOSET_LABELS = Path(__file__).resolve().parent / "audioset" / "class_labels_indices.csv"
#: The first line of an experiment file ``import_weights`` writes: such a file may be replaced.
HEADER = "# Written by freesound import-weights"


@dataclass(frozen=True)
class WeightsFormat:
    """How to import one family's released checkpoints.

    Attributes
    ----------
    convert : callable
        ``convert(raw_checkpoint: dict) -> (model_name, model_params, state_dict)``: the registered
        model, its ``create_model`` parameters and its state dict in freesound's names, every key
        and shape checked; raises ``CheckpointError`` (one sentence) for a file it cannot import,
        and warns (``FreesoundWarning``) of what it imports unchecked; both are prefixed with the file.
    audio_preset : str
        The ``freesound.config.AUDIO_PRESETS`` entry of the checkpoints' front end.
    tile_frames : int
        The shortest input (frames) the family's models take: ``[input] tile_frames`` of the
        imported experiment, so a shorter clip is padded to it.
    description : str
        What the format is and where its files come from (``import-weights --help``).
    """

    convert: Callable[[dict], tuple]
    audio_preset: str
    tile_frames: int
    description: str


#: Format name -> ``WeightsFormat``.
FORMATS: dict[str, WeightsFormat] = {}


def register_format(name: str, weights_format: WeightsFormat) -> None:
    """Add ``weights_format`` to ``FORMATS`` as ``name`` (``import-weights --format NAME``).

    Raises
    ------
    ValueError
        ``name`` is taken, or its ``audio_preset`` is not in ``AUDIO_PRESETS``.
    """
    if name in FORMATS:
        raise ValueError(f"weights format {name!r} is already registered")
    if weights_format.audio_preset not in AUDIO_PRESETS:
        raise ValueError(f"weights format {name!r}: {weights_format.audio_preset!r} is not an audio preset")
    FORMATS[name] = weights_format


register_format("panns", WeightsFormat(
    convert=panns.convert_checkpoint, audio_preset=panns.AUDIO_PRESET,
    # Five 2x2 pools (CNN14) halve the frames five times: 32 frames leave one.
    tile_frames=32,
    description="PANNs CNN14 / CNN10 / CNN6 (Kong et al. 2020; Zenodo record 3987831, CC BY 4.0), "
                "e.g. Cnn14_mAP=0.431.pth",
))
register_format("efficientat", WeightsFormat(**efficientat.IMPORT_FORMAT))


def audioset_classes() -> list:
    """The 527 AudioSet display names, in the released taggers' output order."""
    with AUDIOSET_LABELS.open(newline="", encoding="utf-8") as handle:
        return [row["display_name"] for row in csv.DictReader(handle)]


def import_weights(path, weights_format: str, name: str, work, experiments_dir="experiments") -> tuple:
    """Convert a released checkpoint into the experiment ``name`` (see the module docstring).

    Returns
    -------
    (checkpoint path, experiment file path)

    Raises
    ------
    FreesoundError
        An unknown format, a bad name, an experiment file of that name that this command did not
        write, or a model of another number of classes than AudioSet's 527.
    CheckpointError
        The file is missing or unreadable, or does not convert (its one sentence, naming the file).
    """
    path = Path(path)
    if weights_format not in FORMATS:
        raise FreesoundError(f"unknown weights format {weights_format!r}; formats are {', '.join(sorted(FORMATS))}")
    if not name or Path(name).name != name or name in (".", ".."):
        raise FreesoundError(f"experiment name {name!r} must be a plain file name")
    toml_path = Path(experiments_dir) / f"{name}.toml"
    if toml_path.is_file() and not toml_path.read_text(encoding="utf-8").startswith(HEADER):
        raise FreesoundError(f"{toml_path} exists and was not written by import-weights; choose another --name")
    spec = FORMATS[weights_format]
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    raw = read_torch_file(path, what=f"{weights_format} checkpoint")  # its errors name the file
    model_name, params, state = convert_naming_file(spec.convert, raw, str(path))
    classes = audioset_classes()
    if params.get("num_classes") != len(classes):
        raise FreesoundError(f"{path} predicts {params.get('num_classes')} classes, not AudioSet's {len(classes)}: "
                             "fine-tune it with [pretrained] weights instead")
    model = create_model(model_name, **params)
    model.load_state_dict(state, strict=True)
    network_input = InputConfig(tile_frames=spec.tile_frames, whole_clip=True)
    source = {"file": str(path.resolve()), "format": weights_format, "sha256": file_sha256(path)}
    checkpoint = save_checkpoint(
        experiment_dir(work, name) / "fold_0" / "model.pt", model, model_name=model_name, model_params=params,
        classes=classes, audio_config=audio_preset(spec.audio_preset), network_input=network_input.to_dict(),
        imported_from=source,
    )
    atomic_write_text(experiment_dir(work, name) / IMPORTED_FILE, json.dumps(source, indent=2) + "\n")
    toml_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(toml_path, experiment_text(model_name, params, spec, path, weights_format))
    return checkpoint, toml_path


def experiment_text(model_name: str, params: dict, spec: WeightsFormat, source: Path, weights_format: str) -> str:
    """The imported experiment's TOML file: its model, front-end preset and whole-clip input."""
    header = (f"{HEADER} from {source.name} (format {weights_format}).\n"
              "# Predicts the 527 AudioSet classes over each whole clip, as the original does; to fine-tune on a\n"
              f"# dataset, copy the [model], [audio] and [input] tables and add [pretrained] weights = \"{source.name}\".\n")
    params = {key: value for key, value in params.items() if key != "num_classes"}  # the dataset's, when trained
    return header + dump_toml({
        "model": {"name": model_name, "params": params, "aux_weights": [1.0]},
        "audio": {"preset": spec.audio_preset},
        "input": {"tile_frames": spec.tile_frames, "whole_clip": True},
    })
