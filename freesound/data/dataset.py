"""The FSDKaggle2019 dataset layout: label files, the class vocabulary and corrections files.

A dataset directory holds::

    train_curated.csv  train_noisy.csv     fname,labels (labels comma-separated)
    train_curated/     train_noisy/  test/ audio files
    sample_submission.csv                  fname + one column per class (the class order)
    train_unlabeled.csv  train_unlabeled/  optional: clips without labels (fname only), the pool
                                           that self-training pseudo-labels; nothing else reads them

``train_curated.csv`` / ``train_noisy.csv`` may have a ``secondary_labels`` column (comma-separated,
often empty): weak labels of sounds in the background of a recording (BirdCLEF's secondary
species; ``freesound prepare`` writes it). Only ``[train] secondary_weight`` uses them; every
other reader takes ``fname`` and ``labels`` alone.

Everything here reads files and returns plain pandas / numpy objects; nothing is cached.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.audio.files import find_audio_files
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.fileio import atomic_write_text

#: The 80 FSDKaggle2019 classes, in ``sample_submission.csv`` column order (the default vocabulary).
FSD2019_CLASSES = (
    "Accelerating_and_revving_and_vroom",
    "Accordion",
    "Acoustic_guitar",
    "Applause",
    "Bark",
    "Bass_drum",
    "Bass_guitar",
    "Bathtub_(filling_or_washing)",
    "Bicycle_bell",
    "Burping_and_eructation",
    "Bus",
    "Buzz",
    "Car_passing_by",
    "Cheering",
    "Chewing_and_mastication",
    "Child_speech_and_kid_speaking",
    "Chink_and_clink",
    "Chirp_and_tweet",
    "Church_bell",
    "Clapping",
    "Computer_keyboard",
    "Crackle",
    "Cricket",
    "Crowd",
    "Cupboard_open_or_close",
    "Cutlery_and_silverware",
    "Dishes_and_pots_and_pans",
    "Drawer_open_or_close",
    "Drip",
    "Electric_guitar",
    "Fart",
    "Female_singing",
    "Female_speech_and_woman_speaking",
    "Fill_(with_liquid)",
    "Finger_snapping",
    "Frying_(food)",
    "Gasp",
    "Glockenspiel",
    "Gong",
    "Gurgling",
    "Harmonica",
    "Hi-hat",
    "Hiss",
    "Keys_jangling",
    "Knock",
    "Male_singing",
    "Male_speech_and_man_speaking",
    "Marimba_and_xylophone",
    "Mechanical_fan",
    "Meow",
    "Microwave_oven",
    "Motorcycle",
    "Printer",
    "Purr",
    "Race_car_and_auto_racing",
    "Raindrop",
    "Run",
    "Scissors",
    "Screaming",
    "Shatter",
    "Sigh",
    "Sink_(filling_or_washing)",
    "Skateboard",
    "Slam",
    "Sneeze",
    "Squeak",
    "Stream",
    "Strum",
    "Tap",
    "Tick-tock",
    "Toilet_flush",
    "Traffic_noise_and_roadway_noise",
    "Trickle_and_dribble",
    "Walk_and_footsteps",
    "Water_tap_and_faucet",
    "Waves_and_surf",
    "Whispering",
    "Writing",
    "Yell",
    "Zipper_(clothing)",
)


SPLITS = ("train_curated", "train_noisy", "test", "train_unlabeled")
#: The split of the clips without labels (``Dataset.unlabeled``).
UNLABELED = "train_unlabeled"
REMOVE = "remove"


class DatasetError(FreesoundError, ValueError):
    """The dataset's files are missing or malformed; the message names the file and the row."""


@dataclass(frozen=True)
class Dataset:
    """One FSDKaggle2019-layout directory, read.

    Attributes
    ----------
    root : Path
    classes : tuple of str, the vocabulary in submission column order
    curated, noisy : DataFrame with columns ``fname`` (str) and ``labels`` (tuple of str)
    test_fnames : tuple of str, ``sample_submission.csv`` row order
    unlabeled : tuple of str, the clips without labels (``train_unlabeled.csv``; empty without one),
        paths relative to ``unlabeled_dir`` (default ``root/train_unlabeled``)
    secondary : dict, ``{split: {fname: tuple of str}}``, the secondary labels of the splits whose
        label file has a ``secondary_labels`` column (``read_secondary_labels``); empty without
    """

    root: Path
    classes: tuple
    curated: pd.DataFrame
    noisy: pd.DataFrame
    test_fnames: tuple
    unlabeled: tuple = ()
    unlabeled_dir: Path | None = None
    secondary: dict = field(default_factory=dict)

    def secondary_labels(self, split: str, fnames) -> list:
        """The secondary labels of ``fnames`` of ``split`` (an empty tuple for a clip without)."""
        known = self.secondary.get(split, {})
        return [known.get(fname, ()) for fname in fnames]

    def audio_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if split == UNLABELED and self.unlabeled_dir is not None:
            return self.unlabeled_dir
        return self.root / split

    def fnames(self, split: str) -> list:
        if split == "train_curated":
            return list(self.curated.fname)
        if split == "train_noisy":
            return list(self.noisy.fname)
        if split == "test":
            return list(self.test_fnames)
        if split == UNLABELED:
            return list(self.unlabeled)
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")

    def paths(self, split: str) -> list:
        directory = self.audio_dir(split)
        return [directory / fname for fname in self.fnames(split)]


def read_csv(path, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv``, with a missing or unreadable file (not text, not a table, lacking the
    asked-for columns or types) as one ``DatasetError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return pd.read_csv(path, **kwargs)
    except ValueError as error:  # pandas' ParserError and EmptyDataError, and UnicodeDecodeError, are ValueErrors
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DatasetError(f"{path}: not a readable CSV file ({reason})") from error


def read_classes(sample_submission) -> tuple:
    """The class vocabulary: ``sample_submission.csv``'s columns after ``fname``."""
    path = Path(sample_submission)
    header = read_csv(path, nrows=0).columns.tolist()
    if not header or header[0] != "fname" or len(header) < 2:
        raise DatasetError(f"{path}: expected a header 'fname,<class>,...', got {header[:3]}")
    return tuple(header[1:])


def parse_labels(text, classes, *, where: str) -> tuple:
    """Split a comma-separated label string, checking every label against the vocabulary.

    ``where`` names the file and row for the error message.
    """
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{where}: empty labels")
    labels = tuple(label.strip() for label in text.split(","))
    known = set(classes)
    for label in labels:
        if label not in known:
            raise DatasetError(f"{where}: label {label!r} is not in the class vocabulary")
    return labels


def read_labels_csv(path, classes) -> pd.DataFrame:
    """Read a ``fname,labels`` file into ``fname`` (str) and ``labels`` (tuple of str)."""
    path = Path(path)
    frame = read_csv(path, dtype=str, keep_default_na=False)
    missing = {"fname", "labels"} - set(frame.columns)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)}; expected 'fname,labels'")
    labels = [
        parse_labels(text, classes, where=f"{path}, row {row + 2} ({fname})")
        for row, (fname, text) in enumerate(zip(frame.fname, frame.labels))
    ]
    duplicated = frame.fname[frame.fname.duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{path}: fname {duplicated[0]!r} appears more than once")
    return pd.DataFrame({"fname": frame.fname.tolist(), "labels": labels})


#: The optional column of a label file holding each clip's secondary labels.
SECONDARY_COLUMN = "secondary_labels"


def read_secondary_labels(path, classes) -> dict:
    """The ``secondary_labels`` column of a ``fname,labels`` file: ``{fname: tuple of str}`` for the
    clips that have any (comma-separated; an empty cell is none); ``{}`` without the column.

    Raises
    ------
    DatasetError
        A secondary label outside ``classes`` (named with its file and row).
    """
    path = Path(path)
    frame = read_csv(path, dtype=str, keep_default_na=False)
    if SECONDARY_COLUMN not in frame.columns:
        return {}
    return {
        fname: parse_labels(text, classes, where=f"{path}, row {row + 2} ({fname}), {SECONDARY_COLUMN}")
        for row, (fname, text) in enumerate(zip(frame.fname, frame[SECONDARY_COLUMN])) if text.strip()
    }


def read_unlabeled_csv(path) -> tuple:
    """The ``fname`` column of ``train_unlabeled.csv`` (other columns are not read: no labels).

    Raises
    ------
    DatasetError
        No ``fname`` column, an empty name, or a name given twice.
    """
    path = Path(path)
    frame = read_csv(path, dtype=str, keep_default_na=False)
    if "fname" not in frame.columns:
        raise DatasetError(f"{path}: missing column 'fname'; expected a header 'fname'")
    empty = frame.index[frame.fname.str.strip() == ""].tolist()
    if empty:
        raise DatasetError(f"{path}, row {empty[0] + 2}: empty fname")
    duplicated = frame.fname[frame.fname.duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{path}: fname {duplicated[0]!r} appears more than once")
    return tuple(frame.fname)


def with_unlabeled(dataset: Dataset, folder) -> Dataset:
    """``dataset`` with every audio file below ``folder`` as its unlabelled clips (in place of
    its ``train_unlabeled/``): ``self-train --unlabeled DIR``.

    Raises
    ------
    DatasetError
        ``folder`` is missing or holds no audio, or two of its files share a file name (the
        feature cache keys a clip by its file name).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"unlabelled folder {folder} does not exist")
    files = find_audio_files(folder)
    if not files:
        raise DatasetError(f"unlabelled folder {folder} holds no audio files")
    seen = {}
    for path in files:
        if path.name in seen:
            raise DatasetError(f"unlabelled folder {folder}: {seen[path.name]} and {path} share a file name; "
                               "rename one (clips are cached by file name)")
        seen[path.name] = path
    fnames = tuple(path.relative_to(folder).as_posix() for path in files)
    return dataclasses.replace(dataset, unlabeled=fnames, unlabeled_dir=folder)


def load_dataset(root) -> Dataset:
    """Read a dataset directory's label files (no audio is decoded)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    sample_submission = root / "sample_submission.csv"
    if not sample_submission.is_file():
        raise DatasetError(f"{sample_submission}: file not found (is {root} an FSDKaggle2019 directory?)")
    classes = read_classes(sample_submission)
    test_fnames = tuple(read_csv(sample_submission, usecols=["fname"], dtype=str).fname)
    secondary = {split: labels for split in ("train_curated", "train_noisy")
                 if (labels := read_secondary_labels(root / f"{split}.csv", classes))}
    return Dataset(
        root=root,
        classes=classes,
        curated=read_labels_csv(root / "train_curated.csv", classes),
        noisy=read_labels_csv(root / "train_noisy.csv", classes),
        test_fnames=test_fnames,
        unlabeled=read_unlabeled_csv(unlabeled) if (unlabeled := root / f"{UNLABELED}.csv").is_file() else (),
        secondary=secondary,
    )


def multi_hot(labels, classes) -> np.ndarray:
    """Label tuples to a float32 (N, C) 0/1 matrix in ``classes`` order."""
    index = {name: i for i, name in enumerate(classes)}
    target = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, clip_labels in enumerate(labels):
        target[row, [index[label] for label in clip_labels]] = 1.0
    return target


def weak_targets(labels, secondary, classes, secondary_weight: float) -> np.ndarray:
    """Targets of weakly labelled recordings: float32 (N, C), 1 for each clip's ``labels`` (the
    primary), ``secondary_weight`` for its ``secondary`` labels that are not also primary, 0 else.

    Parameters
    ----------
    labels, secondary : sequences of N label tuples
    secondary_weight : float in [0, 1]; 0 gives ``multi_hot(labels, classes)``
    """
    return np.maximum(multi_hot(labels, classes), np.float32(secondary_weight) * multi_hot(secondary, classes))


class Corrections(dict):
    """A corrections file, read: ``{fname: tuple of labels, or None for a clip to remove}``, with
    ``path``, the file it was read from (for messages)."""

    def __init__(self, entries, path):
        super().__init__(entries)
        self.path = Path(path)


def load_corrections(path, classes) -> Corrections:
    """Read a corrections file: ``{fname: "label,label" | "remove"}``.

    Returns
    -------
    Corrections mapping fname to a tuple of labels, or to ``None`` for a clip to remove.

    Raises
    ------
    DatasetError
        A missing file, invalid JSON, not an object, a value that is not a string (named with its
        type), or a label outside ``classes``.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: corrections file not found") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping fname to labels or 'remove'")
    for fname, value in raw.items():
        if not isinstance(value, str):
            kind = {list: "a list", dict: "an object", bool: "true/false", type(None): "null"}.get(type(value), "a number")
            raise DatasetError(f"{path}, entry {fname!r}: {kind} ({json.dumps(value)}); expected a string, the labels "
                               f"comma-separated (\"Bark,Meow\") or \"{REMOVE}\"")
    return Corrections({
        fname: None if value == REMOVE else parse_labels(value, classes, where=f"{path}, entry {fname!r}")
        for fname, value in raw.items()
    }, path)


def apply_corrections(frame: pd.DataFrame, corrections: dict, *, only_corrected: bool = False,
                      unknown: str = "check") -> pd.DataFrame:
    """Relabel or drop rows of a ``fname,labels`` frame.

    With ``only_corrected`` the result keeps just the relabelled rows: that is how the trusted
    "corrected noisy" set is made from the noisy set.

    ``unknown`` is what corrections naming no row of ``frame`` do. ``"check"``: where they are
    certainly mistakes (a clip named without its extension, or a file none of whose clips is
    in ``frame``) they are refused; the others are named in a ``FreesoundWarning`` and skipped
    (a sample of a dataset, such as a replica of part of FSDKaggle2019, with the full dataset's
    corrections). ``"ignore"``: skipped without a word (``frame`` is knowingly a sample).

    Raises
    ------
    DatasetError
        With ``unknown="check"``, a certain mistake: the file (for ``Corrections``), how many
        clips, the first five, and the clip meant where only the extension is missing.
    """
    if unknown not in ("check", "ignore"):
        raise ValueError(f"unknown must be 'check' or 'ignore', got {unknown!r}")
    present = set(frame.fname)
    missing = [fname for fname in corrections if fname not in present] if unknown == "check" else []
    if missing:
        by_stem = {Path(fname).stem: fname for fname in frame.fname}
        shown = [f"{fname!r} (meant {by_stem[fname]!r}?)" if fname in by_stem else repr(fname)
                 for fname in missing[:5]]
        source = corrections.path if isinstance(corrections, Corrections) else "corrections"
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        message = (f"{source} names {len(missing)} clip(s) that are not among the {len(frame)} clips it applies to: "
                   f"{', '.join(shown)}{more}")
        without_extension = [fname for fname in missing if fname in by_stem]
        if without_extension or len(missing) == len(corrections):
            raise DatasetError(message + ("; name each clip with its extension" if without_extension else
                                          "; is it another dataset's file?"))
        warnings.warn(message + "; skipped: right for a sample of the dataset the file is for, a typo otherwise",
                      FreesoundWarning, stacklevel=2)
    relabel = {fname: labels for fname, labels in corrections.items() if labels is not None}
    removed = {fname for fname, labels in corrections.items() if labels is None}
    keep = ~frame.fname.isin(removed)
    if only_corrected:
        keep &= frame.fname.isin(relabel.keys())
    result = frame[keep].copy()
    result["labels"] = [relabel.get(fname, labels) for fname, labels in zip(result.fname, result.labels)]
    return result.reset_index(drop=True)


def write_corrections(path, corrections: dict) -> None:
    """Write ``{fname: tuple | None}`` in the corrections format (sorted, one entry per line)."""
    payload = {fname: REMOVE if labels is None else ",".join(labels) for fname, labels in sorted(corrections.items())}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def probability_frame(fnames, probs: np.ndarray, classes) -> pd.DataFrame:
    """The submission layout: ``fname`` then one column per class."""
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "fname", list(fnames))
    return frame
