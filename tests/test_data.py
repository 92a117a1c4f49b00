"""Dataset layout reading, the vocabulary, multi-hot targets and corrections files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from freesound.data.dataset import (
    FSD2019_CLASSES,
    DatasetError,
    apply_corrections,
    load_corrections,
    load_dataset,
    multi_hot,
    read_labels_csv,
    write_corrections,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
#: Corrections files in the reference format, written by tests/data/make_fixtures.py (run everywhere).
FIXTURES = Path(__file__).resolve().parent / "data"


def write_layout(root, curated_rows, noisy_rows=(), classes=("Bark", "Meow", "Purr"), test=("t1.wav",)):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curated_rows, columns=["fname", "labels"]).to_csv(root / "train_curated.csv", index=False)
    pd.DataFrame(list(noisy_rows), columns=["fname", "labels"]).to_csv(root / "train_noisy.csv", index=False)
    submission = pd.DataFrame({"fname": list(test), **{c: 0 for c in classes}})
    submission.to_csv(root / "sample_submission.csv", index=False)
    return root


def test_default_vocabulary_is_the_80_classes():
    assert len(FSD2019_CLASSES) == 80
    assert len(set(FSD2019_CLASSES)) == 80
    assert list(FSD2019_CLASSES) == sorted(FSD2019_CLASSES)
    assert FSD2019_CLASSES[0] == "Accelerating_and_revving_and_vroom"
    assert FSD2019_CLASSES[-1] == "Zipper_(clothing)"


def test_load_dataset_reads_vocabulary_and_labels(tmp_path):
    root = write_layout(tmp_path / "d", [("a.wav", "Bark"), ("b.wav", "Meow,Purr")], [("n.wav", "Purr")],
                        test=("t2.wav", "t1.wav"))
    dataset = load_dataset(root)
    assert dataset.classes == ("Bark", "Meow", "Purr")
    assert list(dataset.curated.labels) == [("Bark",), ("Meow", "Purr")]
    assert dataset.test_fnames == ("t2.wav", "t1.wav")
    assert dataset.paths("train_noisy") == [root / "train_noisy" / "n.wav"]
    target = multi_hot(dataset.curated.labels, dataset.classes)
    np.testing.assert_array_equal(target, [[1, 0, 0], [0, 1, 1]])
    assert target.dtype == np.float32


def test_unknown_label_names_file_label_and_row(tmp_path):
    root = write_layout(tmp_path / "d", [("a.wav", "Bark"), ("b.wav", "Bark,Moo")])
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "train_curated.csv" in message and "'Moo'" in message and "row 3" in message and "b.wav" in message


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    root = write_layout(tmp_path / "d", [("a.wav", "Bark")])
    (root / "train_noisy.csv").unlink()
    with pytest.raises(DatasetError, match="train_noisy.csv: file not found"):
        load_dataset(root)
    (root / "bad.csv").write_text("name,tags\na.wav,Bark\n")
    with pytest.raises(DatasetError, match="missing column"):
        read_labels_csv(root / "bad.csv", ("Bark",))


@pytest.mark.parametrize("name,entries,removed", [("corrections.json", 73, 15), ("noisy_corrections.json", 8744, 6999)])
def test_reference_corrections_load(name, entries, removed):
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference corrections file {path} is not available on this machine")
    corrections = load_corrections(path, FSD2019_CLASSES)
    assert len(corrections) == entries
    assert sum(labels is None for labels in corrections.values()) == removed
    relabelled = [labels for labels in corrections.values() if labels is not None]
    assert all(isinstance(labels, tuple) and labels for labels in relabelled)
    assert all(label in FSD2019_CLASSES for labels in relabelled for label in labels)


def test_reference_curated_corrections_content():
    path = REFERENCE / "corrections.json"
    if not path.is_file():
        pytest.skip(f"reference corrections file {path} is not available on this machine")
    corrections = load_corrections(path, FSD2019_CLASSES)
    assert corrections["6a1f682a.wav"] is None
    assert corrections["275dae40.wav"] == ("Traffic_noise_and_roadway_noise", "Walk_and_footsteps")


@pytest.mark.parametrize("name,entries,removed",
                         [("corrections_tiny.json", 5, 2), ("noisy_corrections_tiny.json", 6, 3)])
def test_shipped_corrections_fixtures_load(name, entries, removed):
    """The reference files' format (indented JSON, comma-separated labels or "remove") in every checkout."""
    corrections = load_corrections(FIXTURES / name, FSD2019_CLASSES)
    assert len(corrections) == entries
    assert sum(labels is None for labels in corrections.values()) == removed
    relabelled = [labels for labels in corrections.values() if labels is not None]
    assert all(isinstance(labels, tuple) and labels for labels in relabelled)
    assert all(label in FSD2019_CLASSES for labels in relabelled for label in labels)


def test_shipped_curated_corrections_fixture_content(tmp_path):
    corrections = load_corrections(FIXTURES / "corrections_tiny.json", FSD2019_CLASSES)
    assert corrections["1b2c3d4e.wav"] is None
    assert corrections["2c3d4e5f.wav"] == ("Meow", "Purr")
    assert corrections["4e5f6071.wav"] == ("Walk_and_footsteps", "Traffic_noise_and_roadway_noise", "Car_passing_by")
    frame = pd.DataFrame({"fname": ["0a1b2c3d.wav", "1b2c3d4e.wav", "ffffffff.wav"],
                          "labels": [("Purr",), ("Bark",), ("Meow",)]})
    fixed = apply_corrections(frame, corrections, unknown="ignore")  # a sample of the clips it names
    assert list(fixed.fname) == ["0a1b2c3d.wav", "ffffffff.wav"]
    assert list(fixed.labels) == [("Bark",), ("Meow",)]
    # write_corrections writes the same format back, byte for byte
    write_corrections(tmp_path / "again.json", corrections)
    assert (tmp_path / "again.json").read_text() == (FIXTURES / "corrections_tiny.json").read_text()


def test_apply_corrections_relabels_and_removes():
    frame = pd.DataFrame({"fname": ["a", "b", "c"], "labels": [("Bark",), ("Meow",), ("Purr",)]})
    corrections = {"a": ("Meow", "Purr"), "b": None}
    fixed = apply_corrections(frame, corrections)
    assert list(fixed.fname) == ["a", "c"]
    assert list(fixed.labels) == [("Meow", "Purr"), ("Purr",)]
    trusted = apply_corrections(frame, corrections, only_corrected=True)
    assert list(trusted.fname) == ["a"]


def test_corrections_round_trip_and_bad_files(tmp_path):
    corrections = {"b.wav": None, "a.wav": ("Bark", "Meow")}
    path = tmp_path / "c.json"
    write_corrections(path, corrections)
    assert path.read_text().index('"a.wav"') < path.read_text().index('"b.wav"')
    assert load_corrections(path, ("Bark", "Meow")) == corrections
    with pytest.raises(DatasetError, match="'Moo'"):
        path.write_text('{"a.wav": "Moo"}')
        load_corrections(path, ("Bark",))
    with pytest.raises(DatasetError, match="not valid JSON"):
        path.write_text("{")
        load_corrections(path, ("Bark",))
