"""The BirdCLEF layout (Kaggle's BirdCLEF 2021-2026 competitions), read.

A BirdCLEF competition folder holds::

    train.csv              primary_label, secondary_labels ("['a', 'b']" or "[]"), filename
                           ("<class>/XC12345.ogg", below train_audio/), author, and columns this
                           package does not read (type, rating, latitude, longitude, url, ...)
    train_audio/<class>/   the recordings, 32 kHz OGG, seconds to minutes long, weakly labelled
    taxonomy.csv           primary_label, common_name, scientific_name, class_name, ...
    test_soundscapes/      one-minute soundscapes (hidden on Kaggle until the kernel runs)
    sample_submission.csv  row_id (``<soundscape stem>_<end second>``, one row per 5 s window) then
                           one column per class: the class order

``freesound prepare`` turns it into this package's layout (``birdclef_clips``): one training clip
per recording, its ``labels`` the primary label and a ``secondary_labels`` column, the author as
the group for ``make-folds --group-by group``. The soundscapes are scored per 5 s window, not
per file, so they are not the layout's test split.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from freesound.data.dataset import DatasetError, read_csv

TRAIN_CSV = "train.csv"
TRAIN_AUDIO = "train_audio"
TAXONOMY_CSV = "taxonomy.csv"
SOUNDSCAPES = "test_soundscapes"
SUBMISSION_CSV = "sample_submission.csv"
#: The first column of BirdCLEF's submission: ``<soundscape stem>_<end second>``.
ROW_ID = "row_id"
#: Seconds of a scored window of a soundscape.
WINDOW_SECONDS = 5
#: The columns of ``train.csv`` this package reads; the first two are required.
REQUIRED_COLUMNS = ("primary_label", "filename")
SECONDARY_COLUMN = "secondary_labels"
GROUP_COLUMN = "author"


def is_birdclef_csv(path) -> bool:
    """Whether ``path`` is a CSV whose header names BirdCLEF's ``primary_label`` and ``filename``."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (ValueError, OSError):
        return False
    return all(column in header for column in REQUIRED_COLUMNS)


def parse_label_list(text, *, where: str) -> tuple:
    """A BirdCLEF label list: the Python-list string ``"['a', 'b']"`` (or ``"[]"``, or an empty cell)
    as a tuple of str, in order, without duplicates.

    Raises
    ------
    DatasetError
        Not a list of strings (named with ``where``).
    """
    text = "" if text is None else str(text).strip()
    if not text:
        return ()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise DatasetError(f"{where}: {text!r} is not a list of labels such as \"['a', 'b']\" or \"[]\"")
    return tuple(dict.fromkeys(item.strip() for item in value if item.strip()))


def read_vocabulary(src, labels=()) -> tuple:
    """The class order of a BirdCLEF folder: ``sample_submission.csv``'s columns after ``row_id``,
    else ``taxonomy.csv``'s ``primary_label`` column sorted, else ``labels`` sorted.

    Raises
    ------
    DatasetError
        A ``sample_submission.csv`` that does not start with ``row_id``, or a ``taxonomy.csv``
        without ``primary_label``.
    """
    src = Path(src)
    submission, taxonomy = src / SUBMISSION_CSV, src / TAXONOMY_CSV
    if submission.is_file():
        header = read_csv(submission, nrows=0).columns.tolist()
        if not header or header[0] != ROW_ID or len(header) < 2:
            raise DatasetError(f"{submission}: expected a header 'row_id,<class>,...', got {header[:3]}")
        return tuple(header[1:])
    if taxonomy.is_file():
        frame = read_csv(taxonomy, dtype=str, keep_default_na=False)
        if "primary_label" not in frame.columns:
            raise DatasetError(f"{taxonomy}: no column 'primary_label'; its columns are {', '.join(frame.columns)}")
        return tuple(sorted(frame.primary_label))
    return tuple(sorted(set(labels)))


def read_train_csv(src, csv=None) -> tuple:
    """Read a BirdCLEF ``train.csv`` (default ``SRC/train.csv``) into one row per recording.

    Returns
    -------
    table : DataFrame with ``file`` (the audio path, below ``SRC/train_audio``), ``filename`` (as
        written, relative to ``train_audio/``), ``where`` (the row, for messages), ``primary``
        (str), ``secondary`` (tuple of str, in the vocabulary) and ``group`` (the author; empty
        without the column)
    classes : tuple of str, the vocabulary (``read_vocabulary``)
    dropped : dict, secondary labels outside the vocabulary and how many rows named each (left
        out: BirdCLEF's recordists name background species the competition does not score)

    Raises
    ------
    DatasetError
        A missing file or required column, an empty primary label or file name, a file name that
        leaves ``train_audio/``, a primary label outside the vocabulary, or a secondary label list
        that is not one.
    """
    src = Path(src)
    path = Path(csv) if csv is not None else src / TRAIN_CSV
    if not path.is_file() and not path.is_absolute() and (src / path).is_file():
        path = src / path
    frame = read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: no column(s) {', '.join(missing)}; a BirdCLEF train.csv has "
                           f"{', '.join(REQUIRED_COLUMNS)}, {SECONDARY_COLUMN}, {GROUP_COLUMN}")
    classes = read_vocabulary(src, frame.primary_label.str.strip())
    known = set(classes)
    rows, dropped = [], {}
    for i, record in enumerate(frame.to_dict("records")):
        where = f"{path}, row {i + 2}"
        primary, name = record["primary_label"].strip(), record["filename"].strip()
        if not primary or not name:
            raise DatasetError(f"{where}: empty {'primary_label' if not primary else 'filename'}")
        if primary not in known:
            raise DatasetError(f"{where}: primary_label {primary!r} is not a class of {src} "
                               f"(sample_submission.csv or taxonomy.csv)")
        secondary = parse_label_list(record.get(SECONDARY_COLUMN, ""), where=f"{where} ({SECONDARY_COLUMN})")
        for label in secondary:
            if label not in known:
                dropped[label] = dropped.get(label, 0) + 1
        if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
            raise DatasetError(f"{where}: filename {name!r} is not a path below {TRAIN_AUDIO}/")
        rows.append({"file": str(src / TRAIN_AUDIO / name), "filename": name, "where": where, "primary": primary,
                     "secondary": tuple(label for label in secondary if label in known and label != primary),
                     "group": record.get(GROUP_COLUMN, "").strip()})
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return pd.DataFrame(rows), classes, dropped


def window_row_ids(stem: str, seconds: float, window: int = WINDOW_SECONDS) -> list:
    """BirdCLEF's row ids of a soundscape of ``seconds``: ``<stem>_<end second>`` for each whole
    ``window``-second window (``stem_5``, ``stem_10``, ... ``stem_60`` for a minute)."""
    return [f"{stem}_{end}" for end in range(window, int(seconds + 1e-6) + 1, window)]
