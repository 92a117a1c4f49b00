"""Turn a labeled audio collection into the FSDKaggle2019 layout (``freesound prepare``).

Three kinds of input, each read into one table with a row per clip (``file`` plus named fields):

- a folder per class: ``SRC/<class>/**/<audio>`` (fields ``label``);
- a CSV naming the file and its label(s), in the style of ESC-50, UrbanSound8K or FSD50K (every
  column of the CSV is a field; audio under ``SRC/<audio_dir>``, where ``audio_dir`` may name
  columns, e.g. ``audio/fold{fold}`` for UrbanSound8K);
- a file-name pattern: ``{label}_{group}_{index}.wav`` (FSDD) parses each audio file's name
  below ``SRC`` into the fields in braces;
- a BirdCLEF competition folder (``SRC/train.csv`` with ``primary_label`` and ``filename``,
  ``freesound.data.birdclef``): the primary label is the clip's label, its secondary labels go to
  a ``secondary_labels`` column of ``train_curated.csv``, its author is its group, and the class
  order is the competition's.

From that table, ``label_column`` (split on ``separator`` for multi-label), ``group_column``,
``fold_column`` and ``test_column``/``test_values`` (the rows that are test clips) make the layout::

    OUT/train_curated.csv  train_curated/   the training clips (fname,labels; labels comma-separated;
                                            a BirdCLEF folder adds secondary_labels, the same way)
    OUT/train_noisy.csv    train_noisy/     empty: a collection has no noisy part
    OUT/test/  sample_submission.csv  test_labels.csv
    OUT/train_unlabeled.csv  train_unlabeled/  with ``unlabeled``: clips without labels (fname only)
    OUT/metadata.csv       fname, split, source, labels, group, fold (what make-folds reads)

Audio is hard-linked (a symlink where that fails) or copied, never re-encoded, and the source
files are never opened for writing. Everything is built in a temporary folder beside ``OUT`` and
renamed into place at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from freesound.audio.files import AUDIO_EXTENSIONS, find_audio_files
from freesound.data import birdclef
from freesound.data.dataset import SECONDARY_COLUMN, DatasetError, read_csv
from freesound.data.folds import METADATA_FILE
from freesound.fileio import atomic_write_csv

#: The layout's label separator (``train_curated.csv``'s labels are comma-separated).
LAYOUT_SEPARATOR = ","
#: Columns of ``metadata.csv``; ``group`` and ``fold`` are empty when the collection has none.
METADATA_COLUMNS = ("fname", "split", "source", "labels", "group", "fold")
#: Column names tried, in order, when no file or label column is named.
FILE_COLUMNS = ("fname", "filename", "file_name", "file", "path", "slice_file_name")
LABEL_COLUMNS = ("labels", "label", "category", "class")
LINK_MODES = ("link", "copy")


class PrepareError(DatasetError):
    """The collection cannot be turned into a dataset; the message names the file, row or column."""


@dataclass(frozen=True)
class Clip:
    """One clip of the collection, resolved.

    Attributes
    ----------
    source : Path, the audio file
    where : str, the file or row it came from (for messages)
    labels : tuple of str
    group : str, empty for none
    fold : str, empty for none (the dataset's own fold, as written in the collection)
    test : bool, whether it goes to ``test/``
    secondary : tuple of str, weak labels of background sounds (BirdCLEF's secondary labels)
    """

    source: Path
    where: str
    labels: tuple
    group: str = ""
    fold: str = ""
    test: bool = False
    secondary: tuple = ()


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` wrote.

    Attributes
    ----------
    out : Path
    classes : tuple of str, sorted
    train, test : int, clips in each part
    linked, symlinked, copied : int, how the audio got there
    renamed : list of (source, fname): name collisions and how each was resolved
    missing : list of (where, path): missing files skipped with ``skip_missing``
    has_groups, has_folds : bool
    unlabeled : int, clips without labels (``train_unlabeled/``)
    dropped_secondary : dict, secondary labels outside the vocabulary (left out) and their counts
    """

    out: Path
    classes: tuple = ()
    train: int = 0
    test: int = 0
    unlabeled: int = 0
    linked: int = 0
    symlinked: int = 0
    copied: int = 0
    renamed: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    has_groups: bool = False
    has_folds: bool = False
    dropped_secondary: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reading the three kinds of input into a table (a DataFrame of strings with a ``file`` column
# of paths and a ``where`` column naming the origin of each row)


def folder_table(src) -> pd.DataFrame:
    """A folder per class: every audio file below ``src/<class>/`` is one clip of that class.

    Raises
    ------
    PrepareError
        ``src`` missing, no class folders, an empty class folder, or audio directly in ``src``.
    """
    src = _existing_dir(src)
    loose = [p for p in sorted(src.iterdir()) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
    if loose:
        raise PrepareError(f"{loose[0]}: audio file outside any class folder (a folder per class "
                           f"expects {src}/<class>/<file>)")
    rows = []
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise PrepareError(f"{src}: no class folders (expected {src}/<class>/<audio files>)")
    for class_dir in class_dirs:
        files = find_audio_files(class_dir)
        if not files:
            raise PrepareError(f"{class_dir}: class folder holds no audio files")
        rows += [{"file": str(path), "where": str(path), "label": class_dir.name} for path in files]
    return pd.DataFrame(rows)


def pattern_regex(pattern: str) -> re.Pattern:
    """``"{label}_{group}_{index}.wav"`` -> a regex with one named group per field.

    A field matches one or more characters other than ``/``, as few as possible, so with
    ``{label}_{group}`` the first ``_`` ends the label. Text outside braces matches literally.

    Raises
    ------
    PrepareError
        No field, a field name that is not an identifier, or a field used twice.
    """
    parts = re.split(r"\{([^{}]*)\}", pattern)
    regex, names = "", []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex += re.escape(part)
            continue
        if not part.isidentifier():
            raise PrepareError(f"pattern {pattern!r}: field {{{part}}} must be a name like {{label}}")
        if part in names:
            raise PrepareError(f"pattern {pattern!r}: field {{{part}}} appears twice")
        names.append(part)
        regex += f"(?P<{part}>[^/]+?)"
    if not names:
        raise PrepareError(f"pattern {pattern!r} has no fields; write e.g. '{{label}}_{{group}}_{{index}}.wav'")
    return re.compile(regex)


def pattern_table(src, pattern: str) -> pd.DataFrame:
    """Parse every audio file's path below ``src`` with a file-name pattern.

    The pattern is matched against the path relative to ``src`` when it contains ``/``, else
    against the file name alone; it must match all of it.

    Raises
    ------
    PrepareError
        A bad pattern, no audio files, or an audio file whose name does not match (named).
    """
    src = _existing_dir(src)
    regex = pattern_regex(pattern)
    files = find_audio_files(src)
    if not files:
        raise PrepareError(f"{src}: no audio files")
    rows = []
    for path in files:
        name = path.relative_to(src).as_posix() if "/" in pattern else path.name
        match = regex.fullmatch(name)
        if match is None:
            raise PrepareError(f"{path}: name does not match the pattern {pattern!r}")
        rows.append({"file": str(path), "where": str(path), **match.groupdict()})
    return pd.DataFrame(rows)


def csv_table(src, csv_path, *, file_column: str | None = None, audio_dir: str = "") -> pd.DataFrame:
    """Read a metadata CSV; each row's audio is ``src/<audio_dir>/<file_column>``.

    ``audio_dir`` may name columns in braces (``audio/fold{fold}``, UrbanSound8K's per-fold
    folders). Every column is read as text.

    Raises
    ------
    PrepareError
        An unreadable CSV, an unknown column, an empty file name, or a file named twice.
    """
    src = _existing_dir(src)
    csv_path = Path(csv_path)
    if not csv_path.is_file() and not csv_path.is_absolute() and (src / csv_path).is_file():
        csv_path = src / csv_path
    frame = read_csv(csv_path, dtype=str, keep_default_na=False)
    file_column = _column(frame, file_column, FILE_COLUMNS, csv_path, "file", "--file-column")
    template_columns = re.findall(r"\{([^{}]*)\}", audio_dir)
    for name in template_columns:
        _column(frame, name, (), csv_path, "audio folder", "--audio-dir")
    rows = []
    first_row = {}
    for i, record in enumerate(frame.to_dict("records")):
        where = f"{csv_path}, row {i + 2}"
        name = record[file_column].strip()
        if not name:
            raise PrepareError(f"{where}: empty file name in column {file_column!r}")
        folder = audio_dir.format(**{c: record[c].strip() for c in template_columns}) if audio_dir else ""
        path = src / folder / name
        key = os.path.normpath(path)
        if key in first_row:
            raise PrepareError(f"{where}: file {name!r} is already named in row {first_row[key]}")
        first_row[key] = i + 2
        rows.append({**record, "file": str(path), "where": where})
    if not rows:
        raise PrepareError(f"{csv_path}: no rows")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# From a table to clips


def table_clips(
    table: pd.DataFrame,
    *,
    label_column: str | None = None,
    separator: str | None = LAYOUT_SEPARATOR,
    group_column: str | None = None,
    fold_column: str | None = None,
    test_column: str | None = None,
    test_values=(),
    source: str = "the collection",
) -> list:
    """Resolve each row of an input table into a ``Clip``.

    Parameters
    ----------
    table : DataFrame with ``file`` and ``where`` columns and the input's fields
    label_column : the labels' field (default: the first of ``LABEL_COLUMNS`` present)
    separator : splits a multi-label field (None: one label a row); labels are stripped of spaces
    group_column, fold_column : optional fields
    test_column, test_values : rows whose ``test_column`` is one of ``test_values`` are test clips
    source : names the input in errors about a column

    Raises
    ------
    PrepareError
        An unknown column, an empty label, a label containing the layout's separator ``,`` (or
        named ``fname``), test values given without a column, or a test value that no row has.
    """
    fields = [c for c in table.columns if c not in ("file", "where")]
    label_column = _column(table, label_column, LABEL_COLUMNS, source, "label", "--label-column", fields)
    for name, option in ((group_column, "--group-column"), (fold_column, "--fold-column"),
                         (test_column, "--test-column")):
        if name is not None:
            _column(table, name, (), source, option.removeprefix("--").removesuffix("-column"), option, fields)
    test_values = {str(value).strip() for value in test_values}
    if test_values and test_column is None:
        raise PrepareError("--test-value needs --test-column (the field that marks test clips)")
    if test_column is not None and not test_values:
        raise PrepareError(f"--test-column {test_column!r} needs at least one --test-value")
    if test_values:
        present = set(table[test_column].astype(str).str.strip())
        absent = sorted(test_values - present)
        if absent:
            raise PrepareError(f"no row has {test_column!r} equal to {absent[0]!r} (a --test-value)")
    clips = []
    for record in table.to_dict("records"):
        labels = split_labels(record[label_column], separator, where=f"{record['where']} ({label_column!r})")
        clips.append(Clip(
            source=Path(record["file"]),
            where=record["where"],
            labels=labels,
            group=str(record[group_column]).strip() if group_column else "",
            fold=str(record[fold_column]).strip() if fold_column else "",
            test=bool(test_values) and str(record[test_column]).strip() in test_values,
        ))
    return clips


def split_labels(text, separator: str | None, *, where: str) -> tuple:
    """Split a label field on ``separator`` (None: the field is one label); labels are stripped,
    duplicates dropped in order.

    Raises
    ------
    PrepareError
        An empty field or label, a label with the layout's separator ``,`` in it (it would read
        back as two labels), or a label named ``fname`` (the submission's first column).
    """
    if separator == "":
        raise PrepareError("the label separator must not be empty")
    text = "" if text is None else str(text)
    parts = [text] if separator is None else text.split(separator)
    labels = tuple(dict.fromkeys(label.strip() for label in parts))
    if not text.strip() or "" in labels:
        raise PrepareError(f"{where}: empty label in {text!r}")
    for label in labels:
        if LAYOUT_SEPARATOR in label:
            raise PrepareError(f"{where}: label {label!r} contains the separator {LAYOUT_SEPARATOR!r}"
                               + ("" if separator == LAYOUT_SEPARATOR else
                                  f" (labels are split on {separator!r}; the layout joins them with ',')"))
        if label == "fname":
            raise PrepareError(f"{where}: a class may not be named 'fname' (the submission's first column)")
    return labels


# --------------------------------------------------------------------------------------------
# Writing the layout


def unique_names(clips, root=None) -> tuple:
    """A unique file name for each clip, and the collisions that were resolved.

    A name used by one clip stays as it is. Clips sharing a name (files of the same name in
    different folders) are named after their path relative to ``root`` (their common folder by
    default) with ``/`` turned into ``__``; a name still taken gets ``-2``, ``-3``, ... before its
    extension, in the order of the clips' paths. The result depends only on the paths.

    Returns
    -------
    names : list of str, one per clip
    renamed : list of (source path, new name), for the clips whose name changed
    """
    sources = [clip.source for clip in clips]
    if root is None:  # absolute, since a CSV may name some files by absolute and some by relative paths
        root = Path(os.path.commonpath([os.path.abspath(p.parent) for p in sources])) if sources else Path(".")
    counts = pd.Series([p.name for p in sources]).value_counts()
    wanted = []
    for path in sources:
        if counts[path.name] == 1:
            wanted.append(path.name)
        else:
            relative = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
            wanted.append(relative.replace("/", "__"))
    taken = {name for name, path in zip(wanted, sources) if counts[path.name] == 1}
    names = list(wanted)
    for i in sorted(range(len(sources)), key=lambda i: str(sources[i])):
        if counts[sources[i].name] == 1:
            continue
        name, n = wanted[i], 1
        while name in taken:
            n += 1
            stem, dot, ext = wanted[i].rpartition(".")
            name = f"{stem}-{n}.{ext}" if dot else f"{wanted[i]}-{n}"
        taken.add(name)
        names[i] = name
    renamed = [(path, name) for path, name in zip(sources, names) if name != path.name]
    return names, renamed


def place_file(source: Path, target: Path, mode: str = "link") -> str:
    """Put ``source`` at ``target`` without changing a byte of it.

    ``mode="link"`` makes a hard link, or an absolute symlink where a hard link is refused
    (another filesystem, a read-only or foreign source); ``"copy"`` copies the bytes.

    Returns
    -------
    "linked", "symlinked" or "copied"
    """
    if mode == "copy":
        shutil.copyfile(source, target)
        return "copied"
    try:
        os.link(source, target)
        return "linked"
    except OSError:
        os.symlink(source.resolve(), target)
        return "symlinked"


def prepare_dataset(clips, out, *, mode: str = "link", skip_missing: bool = False, unlabeled=(),
                    classes=None) -> PrepareReport:
    """Write the FSDKaggle2019 layout for ``clips`` into a new folder ``out``.

    Parameters
    ----------
    clips : list of Clip
    unlabeled : list of Path, audio files without labels, for ``train_unlabeled/`` (named as
        ``unique_names`` names clips)
    out : path of a folder that does not exist yet (or is empty)
    mode : "link" (hard link, symlink fallback) or "copy"
    skip_missing : leave out clips whose audio file is missing (listed in the report) instead
        of stopping
    classes : the vocabulary in submission column order (default: the clips' labels, sorted)

    Raises
    ------
    PrepareError
        ``out`` exists and is not empty, a missing audio file (without ``skip_missing``), no
        training clip, or a training clip without a group or fold where others have one.
    """
    if mode not in LINK_MODES:
        raise ValueError(f"mode must be one of {LINK_MODES}, got {mode!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out} already exists and is not empty; name a new folder")
    report = PrepareReport(out=out)
    present = []
    for clip in clips:
        if clip.source.is_file():
            present.append(clip)
        elif skip_missing:
            report.missing.append((clip.where, clip.source))
        else:
            raise PrepareError(f"{clip.where}: audio file {clip.source} not found "
                               f"(--skip-missing goes on without it)")
    train = [clip for clip in present if not clip.test]
    pool = [Clip(source=Path(path), where=str(path), labels=()) for path in unlabeled]
    if not train:
        raise PrepareError("no training clips left: every clip is a test clip or missing")
    names, report.renamed = unique_names(present)
    report.classes = tuple(classes) if classes is not None else tuple(
        sorted({label for clip in present for label in clip.labels}))
    report.train, report.test = len(train), len(present) - len(train)
    report.has_groups = any(clip.group for clip in present)
    report.has_folds = any(clip.fold for clip in present)
    if report.has_groups and not all(clip.group for clip in train):
        where = next(clip.where for clip in train if not clip.group)
        raise PrepareError(f"{where}: empty group (every clip needs one when some have)")
    if report.has_folds and not all(clip.fold for clip in train):
        where = next(clip.where for clip in train if not clip.fold)
        raise PrepareError(f"{where}: empty fold (every training clip needs one when some have)")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_layout(staging, present, names, report, mode)
        _write_unlabeled(staging, pool, report, mode)
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _write_layout(root: Path, clips, names, report: PrepareReport, mode: str) -> None:
    for split in ("train_curated", "train_noisy", "test"):
        (root / split).mkdir()
    rows = []
    for clip, name in zip(clips, names):
        split = "test" if clip.test else "train_curated"
        how = place_file(clip.source, root / split / name, mode)
        setattr(report, how, getattr(report, how) + 1)
        rows.append({"fname": name, "split": split, "source": str(clip.source),
                     "labels": LAYOUT_SEPARATOR.join(clip.labels), "group": clip.group, "fold": clip.fold})
    meta = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    train, test = meta[meta.split == "train_curated"], meta[meta.split == "test"]
    label_columns = ["fname", "labels"]
    if any(clip.secondary for clip in clips):  # only then: other collections' files stay as they were
        meta[SECONDARY_COLUMN] = [LAYOUT_SEPARATOR.join(clip.secondary) for clip in clips]
        train = meta[meta.split == "train_curated"]
        label_columns.append(SECONDARY_COLUMN)
        meta = meta.drop(columns=SECONDARY_COLUMN)
    atomic_write_csv(root / "train_curated.csv", train[label_columns])
    atomic_write_csv(root / "train_noisy.csv", pd.DataFrame(columns=["fname", "labels"]))
    atomic_write_csv(root / "test_labels.csv", test[["fname", "labels"]])
    submission = pd.DataFrame(0.0, index=range(len(test)), columns=list(report.classes))
    submission.insert(0, "fname", test.fname.tolist())
    atomic_write_csv(root / "sample_submission.csv", submission)
    atomic_write_csv(root / METADATA_FILE, meta)


def _write_unlabeled(root: Path, pool, report: PrepareReport, mode: str) -> None:
    """``train_unlabeled/`` and ``train_unlabeled.csv`` (``fname`` only) for ``pool``, when it has clips."""
    if not pool:
        return
    (root / "train_unlabeled").mkdir()
    names, renamed = unique_names(pool)
    for clip, name in zip(pool, names):
        how = place_file(clip.source, root / "train_unlabeled" / name, mode)
        setattr(report, how, getattr(report, how) + 1)
    report.renamed += renamed
    report.unlabeled = len(pool)
    atomic_write_csv(root / "train_unlabeled.csv", pd.DataFrame({"fname": names}))


def birdclef_clips(src, csv=None) -> tuple:
    """The clips of a BirdCLEF folder (``freesound.data.birdclef.read_train_csv``): each
    recording's primary label as its label, its secondary labels, its author as its group.

    Returns
    -------
    (list of Clip, the vocabulary in submission column order, the secondary labels left out)
    """
    table, classes, dropped = birdclef.read_train_csv(_existing_dir(src), csv)
    clips = [Clip(source=Path(row.file), where=row.where, labels=(row.primary,), group=row.group,
                  secondary=row.secondary) for row in table.itertuples()]
    return clips, classes, dropped


def _birdclef_csv(src, csv) -> Path | None:
    """The BirdCLEF ``train.csv`` that ``prepare`` reads from ``src`` (``csv``, or ``SRC/train.csv``
    when no CSV is named), or None when it is not one."""
    path = Path(csv) if csv is not None else Path(src) / birdclef.TRAIN_CSV
    if csv is not None and not path.is_file() and not path.is_absolute():
        path = Path(src) / path
    return path if birdclef.is_birdclef_csv(path) else None


# --------------------------------------------------------------------------------------------
# helpers


def _existing_dir(src) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: folder not found")
    return src


def _column(frame, name, defaults, source, what: str, option: str, columns=None) -> str:
    """The column ``name`` of ``frame`` (or the first of ``defaults`` present), checked."""
    columns = list(frame.columns) if columns is None else list(columns)
    if name is None:
        with contextlib.suppress(StopIteration):
            return next(c for c in defaults if c in columns)
        raise PrepareError(f"{source}: no {what} column among {columns}; name it with {option}")
    if name not in columns:
        raise PrepareError(f"{source}: no column {name!r} ({option}); its columns are {', '.join(map(str, columns))}")
    return name


def prepare_collection(
    src,
    out,
    *,
    csv=None,
    pattern: str | None = None,
    file_column: str | None = None,
    audio_dir: str = "",
    label_column: str | None = None,
    separator: str = LAYOUT_SEPARATOR,
    group_column: str | None = None,
    fold_column: str | None = None,
    test_column: str | None = None,
    test_values=(),
    mode: str = "link",
    skip_missing: bool = False,
    unlabeled=None,
) -> PrepareReport:
    """``freesound prepare``: read a collection (a CSV, a file-name pattern, a BirdCLEF folder, or
    else a folder per class) and write its FSDKaggle2019 layout to ``out`` (see the module
    docstring); every audio file below the folder ``unlabeled``, when given, becomes a clip without
    labels. A BirdCLEF ``train.csv`` (``SRC/train.csv``, or ``csv`` when its header has
    ``primary_label`` and ``filename``) is read by ``birdclef_clips``, the column options aside.

    With a pattern, ``label_column`` defaults to the field ``label`` and ``group_column`` to the
    field ``group`` when the pattern has one.

    Raises
    ------
    PrepareError
        ``out`` inside ``src`` or ``unlabeled``, an ``unlabeled`` folder without audio, or bad input,
        named (see ``folder_table``, ``csv_table``, ``pattern_table``, ``table_clips``,
        ``prepare_dataset``).
    """
    pool = []
    if unlabeled is not None:
        if Path(out).resolve().is_relative_to(Path(unlabeled).resolve()):
            raise PrepareError(f"{out} is inside the unlabelled folder {unlabeled}; name a folder outside it")
        pool = find_audio_files(_existing_dir(unlabeled))
        if not pool:
            raise PrepareError(f"{unlabeled}: no audio files (the unlabelled folder)")
    if Path(out).resolve().is_relative_to(Path(src).resolve()):
        # Refused rather than skipped: the next run over SRC would read the dataset's own audio back.
        raise PrepareError(f"{out} is inside the collection {src}: a later prepare of {src} would take the dataset's "
                           "own audio for clips of the collection; name a folder outside it")
    if csv is not None and pattern is not None:
        raise PrepareError("give either a CSV (--csv) or a file-name pattern (--pattern), not both")
    competition_csv = _birdclef_csv(src, csv) if pattern is None else None
    if competition_csv is not None:
        given = [option for option, value in (
            ("--file-column", file_column), ("--audio-dir", audio_dir), ("--label-column", label_column),
            ("--group-column", group_column), ("--fold-column", fold_column), ("--test-column", test_column),
            ("--test-value", test_values), ("--separator", separator != LAYOUT_SEPARATOR)) if value]
        if given:
            raise PrepareError(f"{competition_csv} is a BirdCLEF train.csv, read as BirdCLEF lays it out "
                               f"(primary_label, secondary_labels, filename, author): {', '.join(given)} do not apply")
        clips, classes, dropped = birdclef_clips(src, competition_csv)
        report = prepare_dataset(clips, out, mode=mode, skip_missing=skip_missing, unlabeled=pool, classes=classes)
        report.dropped_secondary = dropped
        return report
    if csv is not None:
        table, source = csv_table(src, csv, file_column=file_column, audio_dir=audio_dir), str(csv)
    elif pattern is not None:
        table, source = pattern_table(src, pattern), f"pattern {pattern!r}"
        if group_column is None and "group" in table.columns:
            group_column = "group"
    else:
        for option, value in (("--file-column", file_column), ("--audio-dir", audio_dir)):
            if value:
                raise PrepareError(f"{option} needs --csv (a folder per class has no columns)")
        table, source = folder_table(src), f"{src} (a folder per class)"
        separator = None  # a folder name is one class, whatever it contains
    clips = table_clips(table, label_column=label_column, separator=separator, group_column=group_column,
                        fold_column=fold_column, test_column=test_column, test_values=test_values,
                        source=source)
    return prepare_dataset(clips, out, mode=mode, skip_missing=skip_missing, unlabeled=pool)
