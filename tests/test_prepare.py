"""`freesound prepare` on small collections written here (a folder per class, a CSV, a file-name
pattern), every bad input it must name, and `make-folds --group-by / --stratify / --from-column`."""

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import run_cli

from freesound.data.dataset import load_dataset, multi_hot
from freesound.data.folds import check_folds, dataset_folds, folds_from_values, make_folds
from freesound.data.prepare import (
    PrepareError,
    pattern_regex,
    prepare_collection,
    unique_names,
)
from freesound.errors import FreesoundError, FreesoundWarning


def write_wav(path, seconds=0.2, sr=8000, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_16")
    return path


def snapshot(root):
    """Every file below ``root``: relative path -> (bytes, mtime_ns)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def no_leftovers(parent, name):
    """Nothing of a failed prepare left in ``parent``: no ``name`` and no staging folder."""
    return not (parent / name).exists() and not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


# ----------------------------------------------------------------------------- a folder per class


@pytest.fixture
def class_folders(tmp_path):
    src = tmp_path / "src"
    write_wav(src / "dog" / "x" / "1.wav")
    write_wav(src / "dog" / "y" / "1.wav", freq=300)
    write_wav(src / "dog" / "2.flac")
    write_wav(src / "cat" / "3.wav")
    write_wav(src / "cat" / "1.wav", freq=500)
    (src / "cat" / "notes.txt").write_text("not audio")
    return src


def test_folder_per_class_layout_links_and_reports_collisions(class_folders, tmp_path):
    before = snapshot(class_folders)
    report = prepare_collection(class_folders, tmp_path / "out")
    out = tmp_path / "out"
    dataset = load_dataset(out)
    assert dataset.classes == ("cat", "dog")  # sorted
    assert sorted(dataset.curated.fname) == ["2.flac", "3.wav", "cat__1.wav", "dog__x__1.wav", "dog__y__1.wav"]
    labels = dict(zip(dataset.curated.fname, dataset.curated.labels))
    assert labels["dog__x__1.wav"] == ("dog",) and labels["cat__1.wav"] == ("cat",) and labels["2.flac"] == ("dog",)
    assert sorted(name for _, name in report.renamed) == ["cat__1.wav", "dog__x__1.wav", "dog__y__1.wav"]
    assert (report.train, report.test, report.linked + report.symlinked) == (5, 0, 5)
    assert len(dataset.noisy) == 0 and dataset.test_fnames == ()
    # The same bytes, the very same file where a hard link works; sources untouched.
    placed = out / "train_curated" / "dog__y__1.wav"
    assert placed.read_bytes() == (class_folders / "dog" / "y" / "1.wav").read_bytes()
    if report.linked:
        assert os.path.samefile(placed, class_folders / "dog" / "y" / "1.wav")
    assert snapshot(class_folders) == before
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False)
    assert list(meta.columns) == ["fname", "split", "source", "labels", "group", "fold"]
    assert set(meta.split) == {"train_curated"} and set(meta.group) == {""}


def test_copy_mode_copies_bytes(class_folders, tmp_path):
    report = prepare_collection(class_folders, tmp_path / "out", mode="copy")
    assert report.copied == 5 and report.linked == report.symlinked == 0
    placed = tmp_path / "out" / "train_curated" / "3.wav"
    assert not os.path.samefile(placed, class_folders / "cat" / "3.wav")
    assert placed.read_bytes() == (class_folders / "cat" / "3.wav").read_bytes()


def test_unique_names_are_deterministic_and_resolve_second_collisions(tmp_path):
    from freesound.data.prepare import Clip

    paths = [tmp_path / "b" / "a.wav", tmp_path / "a.wav", tmp_path / "b__a.wav", tmp_path / "c" / "d.wav"]
    clips = [Clip(source=p, where=str(p), labels=("x",)) for p in paths]
    names, renamed = unique_names(clips, root=tmp_path)
    assert names == ["b__a-2.wav", "a.wav", "b__a.wav", "d.wav"]
    assert unique_names(list(reversed(clips)), root=tmp_path)[0] == list(reversed(names))
    assert renamed == [(paths[0], "b__a-2.wav")]


def test_empty_class_folder_and_loose_audio_are_named(tmp_path):
    src = tmp_path / "src"
    write_wav(src / "dog" / "1.wav")
    (src / "cat").mkdir()
    with pytest.raises(PrepareError, match=r"cat: class folder holds no audio files"):
        prepare_collection(src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
    (src / "cat").rmdir()
    write_wav(src / "loose.wav")
    with pytest.raises(PrepareError, match=r"loose\.wav: audio file outside any class folder"):
        prepare_collection(src, tmp_path / "out")


def test_class_folder_with_the_separator_in_its_name(tmp_path):
    src = tmp_path / "src"
    write_wav(src / "dog" / "1.wav")
    write_wav(src / "cats,dogs" / "2.wav")
    with pytest.raises(PrepareError, match=r"2\.wav.*label 'cats,dogs' contains the separator ','"):
        prepare_collection(src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_an_existing_output_is_refused_and_left_alone(class_folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PrepareError, match=r"already exists and is not empty"):
        prepare_collection(class_folders, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------- a CSV


@pytest.fixture
def urban(tmp_path):
    """UrbanSound8K-style: per-fold audio folders, multi-label ';'-separated, a group column."""
    src = tmp_path / "urban"
    rows = []
    for i in range(8):
        fold = 1 + i % 2
        name = f"{i}.wav"
        write_wav(src / "audio" / f"fold{fold}" / name, freq=200 + 50 * i)
        labels = "siren;dog" if i % 3 == 0 else ("dog" if i % 2 else "siren")
        rows.append({"slice_file_name": name, "fsID": f"s{i // 2}", "fold": fold, "tags": labels,
                     "split": "eval" if i >= 6 else "dev"})
    pd.DataFrame(rows).to_csv(src / "meta.csv", index=False)
    return src


def test_csv_with_per_fold_folders_groups_folds_and_a_test_split(urban, tmp_path):
    report = prepare_collection(urban, tmp_path / "out", csv="meta.csv", audio_dir="audio/fold{fold}",
                                label_column="tags", separator=";", group_column="fsID", fold_column="fold",
                                test_column="split", test_values=["eval"])
    dataset = load_dataset(tmp_path / "out")
    assert dataset.classes == ("dog", "siren")
    assert (report.train, report.test, report.has_groups, report.has_folds) == (6, 2, True, True)
    assert dict(zip(dataset.curated.fname, dataset.curated.labels))["0.wav"] == ("siren", "dog")
    assert set(dataset.test_fnames) == {"6.wav", "7.wav"}
    test_labels = pd.read_csv(tmp_path / "out" / "test_labels.csv")
    assert dict(zip(test_labels.fname, test_labels.labels)) == {"6.wav": "siren,dog", "7.wav": "dog"}
    meta = pd.read_csv(tmp_path / "out" / "metadata.csv", dtype=str).set_index("fname")
    assert meta.loc["3.wav", "group"] == "s1" and meta.loc["3.wav", "fold"] == "2"
    assert meta.loc["3.wav", "source"] == str(urban / "audio" / "fold2" / "3.wav")
    submission = pd.read_csv(tmp_path / "out" / "sample_submission.csv")
    assert list(submission.columns) == ["fname", "dog", "siren"] and len(submission) == 2


def test_csv_bad_inputs_are_one_sentence_naming_file_row_or_column(urban, tmp_path):
    out = tmp_path / "out"
    common = {"csv": "meta.csv", "audio_dir": "audio/fold{fold}", "label_column": "tags", "separator": ";"}
    with pytest.raises(PrepareError, match=r"no column 'speaker' \(--group-column\); its columns are slice_file_name"):
        prepare_collection(urban, out, group_column="speaker", **common)
    with pytest.raises(PrepareError, match=r"meta\.csv: no column 'fold_id' \(--audio-dir\)"):
        prepare_collection(urban, out, **{**common, "audio_dir": "audio/fold{fold_id}"})
    # a label containing the layout's separator (labels split on ';' here)
    meta = pd.read_csv(urban / "meta.csv")
    meta.loc[2, "tags"] = "dog,barking"
    meta.to_csv(urban / "bad.csv", index=False)
    with pytest.raises(PrepareError, match=r"bad\.csv, row 4 \('tags'\): label 'dog,barking' contains the separator"):
        prepare_collection(urban, out, **{**common, "csv": "bad.csv"})
    # a file named twice
    meta = pd.read_csv(urban / "meta.csv")
    meta.loc[5] = meta.loc[3]
    meta.to_csv(urban / "dup.csv", index=False)
    with pytest.raises(PrepareError, match=r"dup\.csv, row 7: file '3\.wav' is already named in row 5"):
        prepare_collection(urban, out, **{**common, "csv": "dup.csv"})
    # an empty label
    meta = pd.read_csv(urban / "meta.csv")
    meta.loc[1, "tags"] = ""
    meta.to_csv(urban / "empty.csv", index=False)
    with pytest.raises(PrepareError, match=r"empty\.csv, row 3 \('tags'\): empty label"):
        prepare_collection(urban, out, **{**common, "csv": "empty.csv"})
    # an unreadable CSV
    (urban / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(FreesoundError, match=r"binary\.csv: not a readable CSV file"):
        prepare_collection(urban, out, **{**common, "csv": "binary.csv"})
    with pytest.raises(FreesoundError, match=r"nope\.csv: file not found"):
        prepare_collection(urban, out, **{**common, "csv": "nope.csv"})
    # a test value no row has
    with pytest.raises(PrepareError, match=r"no row has 'split' equal to 'test'"):
        prepare_collection(urban, out, test_column="split", test_values=["test"], **common)
    assert no_leftovers(tmp_path, "out")


def test_missing_files_stop_or_are_skipped_and_listed(urban, tmp_path):
    (urban / "audio" / "fold2" / "5.wav").unlink()
    common = {"csv": urban / "meta.csv", "audio_dir": "audio/fold{fold}", "label_column": "tags", "separator": ";"}
    with pytest.raises(PrepareError, match=r"meta\.csv, row 7: audio file .*fold2/5\.wav not found \(--skip-missing"):
        prepare_collection(urban, tmp_path / "out", **common)
    assert no_leftovers(tmp_path, "out")
    report = prepare_collection(urban, tmp_path / "out", skip_missing=True, **common)
    assert [(where.rsplit(", ", 1)[1], path.name) for where, path in report.missing] == [("row 7", "5.wav")]
    assert "5.wav" not in set(load_dataset(tmp_path / "out").curated.fname) and report.train == 7


# ----------------------------------------------------------------------------- a file-name pattern


@pytest.fixture
def digits(tmp_path):
    """FSDD-style names: {label}_{group}_{index}.wav."""
    src = tmp_path / "digits"
    for label in ("0", "1", "2"):
        for speaker in ("ann", "bob", "cy"):
            for index in range(4):
                write_wav(src / f"{label}_{speaker}_{index}.wav", freq=200 + 100 * int(label) + 10 * index)
    return src


def test_pattern_parses_labels_groups_and_the_test_split(digits, tmp_path):
    report = prepare_collection(digits, tmp_path / "out", pattern="{label}_{group}_{index}.wav",
                                test_column="index", test_values=["0"])
    dataset = load_dataset(tmp_path / "out")
    assert dataset.classes == ("0", "1", "2") and (report.train, report.test) == (27, 9)
    assert all(name.endswith("_0.wav") for name in dataset.test_fnames)
    meta = pd.read_csv(tmp_path / "out" / "metadata.csv", dtype=str).set_index("fname")
    assert meta.loc["2_bob_3.wav", "group"] == "bob" and meta.loc["2_bob_3.wav", "labels"] == "2"


def test_pattern_errors(digits, tmp_path):
    write_wav(digits / "readme-tone.wav")
    with pytest.raises(PrepareError, match=r"readme-tone\.wav: name does not match the pattern"):
        prepare_collection(digits, tmp_path / "out", pattern="{label}_{group}_{index}.wav")
    with pytest.raises(PrepareError, match=r"has no fields"):
        pattern_regex("digits.wav")
    with pytest.raises(PrepareError, match=r"field \{label\} appears twice"):
        pattern_regex("{label}_{label}.wav")
    assert pattern_regex("{label}_{group}_{index}.wav").fullmatch("a_b_c_1.wav").groupdict() == \
        {"label": "a", "group": "b", "index": "c_1"}
    assert no_leftovers(tmp_path, "out")


def test_prepare_cli_prints_the_summary_and_errors_in_one_line(digits, tmp_path):
    result = run_cli("prepare", digits, tmp_path / "out", "--pattern", "{label}_{group}_{index}.wav",
                     "--test-column", "index", "--test-value", "0,1")
    assert "prepared: 18 training and 18 test clips of 3 classes" in result.output
    result = run_cli("prepare", digits, tmp_path / "out2", "--pattern", "{label}_{group}_{index}.wav",
                     "--label-column", "digit", expect=1)
    assert result.output.strip().splitlines() == [
        "error: pattern '{label}_{group}_{index}.wav': no column 'digit' (--label-column); "
        "its columns are label, group, index"]


# ----------------------------------------------------------------------------- make-folds


def test_default_folds_are_still_the_shuffled_kfold():
    from sklearn.model_selection import KFold

    fnames = [f"{i}.wav" for i in range(23)]
    expected = np.zeros(23, dtype=int)
    for k, (_, valid) in enumerate(KFold(5, shuffle=True, random_state=42).split(fnames)):
        expected[valid] = k
    assert make_folds(fnames, 5, 42).fold.tolist() == expected.tolist()


def test_grouped_and_stratified_folds_keep_groups_apart():
    rng = np.random.default_rng(0)
    n, classes = 120, 4
    groups = [f"g{i % 12}" for i in range(n)]
    single = np.eye(classes)[rng.integers(0, classes, n)]
    multi = (rng.random((n, classes)) < 0.35).astype(float)
    multi[multi.sum(1) == 0, 0] = 1
    for targets, stratify in ((None, False), (single, True), (multi, True)):
        folds = make_folds([str(i) for i in range(n)], 4, 0, targets=targets, groups=groups, stratify=stratify)
        per_group = pd.DataFrame({"g": groups, "f": folds.fold}).groupby("g").f.nunique()
        assert (per_group == 1).all() and folds.fold.nunique() == 4
    # stratified without groups: every class in every fold, in about equal shares
    folds = make_folds([str(i) for i in range(n)], 4, 0, targets=multi, stratify=True)
    shares = pd.DataFrame(multi).groupby(folds.fold.to_numpy()).sum() / multi.sum(0)
    assert shares.to_numpy().min() > 0.15 and shares.to_numpy().max() < 0.35
    with pytest.raises(FreesoundError, match=r"cannot make 13 folds from 12 groups"):
        make_folds([str(i) for i in range(n)], 13, 0, groups=groups)


def test_given_folds_and_the_checks():
    folds, mapping = folds_from_values(["a", "b", "c", "d"], ["10", "2", "2", "1"])
    assert mapping == {"1": 0, "2": 1, "10": 2} and folds.fold.tolist() == [2, 1, 1, 0]
    targets = np.array([[1, 0], [1, 0], [1, 1], [1, 0]])
    messages = check_folds(folds, targets, ["dog", "cat"])
    assert messages == ["class 'cat' has no training clip when fold(s) 1 are held out (1 clip(s) in all)"]
    with pytest.raises(FreesoundError, match=r"group 'x' is in folds \[0, 1\]"):
        check_folds(folds, targets, ["dog", "cat"], groups=["y", "x", "z", "x"])


def test_make_folds_cli_reads_groups_and_given_folds_from_metadata(urban, tmp_path):
    prepare_collection(urban, tmp_path / "data", csv="meta.csv", audio_dir="audio/fold{fold}", label_column="tags",
                       separator=";", group_column="fsID", fold_column="fold")
    work = tmp_path / "work"
    result = run_cli("make-folds", "--data", tmp_path / "data", "--work", work, "--folds", "2", "--group-by", "group")
    assert "4 groups kept apart" in result.output
    folds = pd.read_csv(work / "folds.csv").merge(pd.read_csv(tmp_path / "data" / "metadata.csv"), on="fname")
    assert (folds.groupby("group").fold_x.nunique() == 1).all()
    result = run_cli("make-folds", "--data", tmp_path / "data", "--work", work, "--from-column", "fold")
    folds = pd.read_csv(work / "folds.csv").merge(pd.read_csv(tmp_path / "data" / "metadata.csv"), on="fname")
    assert (folds.fold_x == folds.fold_y - 1).all() and "'1' -> 0, '2' -> 1" in result.output
    result = run_cli("make-folds", "--data", tmp_path / "data", "--work", work, "--group-by", "speaker", expect=1)
    assert "metadata.csv: no column 'speaker'; its columns are fname, split, source, labels, group, fold" in result.output


def test_a_class_missing_from_a_training_part_is_a_warning(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        write_wav(src / "common" / f"{i}.wav")
    write_wav(src / "rare" / "r.wav")
    prepare_collection(src, tmp_path / "data")
    dataset = load_dataset(tmp_path / "data")
    with pytest.warns(FreesoundWarning, match=r"class 'rare' has no training clip when fold\(s\) \d are held out"):
        result = dataset_folds(dataset, n_folds=3, seed=0)
    assert multi_hot(dataset.curated.labels, dataset.classes).shape == (7, 2) and len(result.folds) == 7


def test_a_refused_hard_link_falls_back_to_a_symlink(class_folders, tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("freesound.data.prepare.os.link", refuse)
    report = prepare_collection(class_folders, tmp_path / "out")
    placed = tmp_path / "out" / "train_curated" / "3.wav"
    assert report.symlinked == 5 and report.linked == 0
    assert placed.is_symlink() and placed.resolve() == (class_folders / "cat" / "3.wav").resolve()


def test_the_real_data_experiment_is_the_method_at_cpu_size():
    """experiments/fsdd.toml changes only the size and schedule: model family, transforms,
    mixers, losses and sampling are the method's own (default.toml)."""
    from pathlib import Path

    from freesound.config import load_experiment

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    fsdd, default = load_experiment("fsdd", experiments), load_experiment("default", experiments)
    for section in ("transforms", "mixers", "loss", "sampling", "audio"):
        assert getattr(fsdd, section) == getattr(default, section), section
    assert fsdd.model.name == default.model.name and fsdd.model.aux_weights == default.model.aux_weights
    assert fsdd.model.params["base_size"] == 4 and fsdd.train.epoch_size * fsdd.train.max_epochs >= 30_000
