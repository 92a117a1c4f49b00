"""BirdCLEF: training on chunks of long, weakly labelled recordings ([train] chunk_seconds,
secondary_weight, valid_crop), the BirdCLEF layout read by prepare, synth --soundscapes and
synth --like for a BirdCLEF metadata folder."""

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import run_cli
from freesound.config import ConfigError, dump_experiment, experiment_from_dict, load_experiment
from freesound.data.birdclef import parse_label_list, read_train_csv, window_row_ids
from freesound.data.dataset import DatasetError, load_dataset, read_labels_csv, weak_targets
from freesound.data.features import LazyLogmels
from freesound.data.synth_soundscapes import (
    EVENTS_CSV, SOLUTION_CSV, ogg_bytes, plan_soundscapes, synthesize_birdclef_like, synthesize_soundscapes,
    window_truth,
)
from freesound.training.augment import train_transform, valid_transform
from freesound.training.sampling import ClipSource, SamplingDataset

# --------------------------------------------------------------------------------------------
# [train] chunk_seconds, secondary_weight, valid_crop


def test_new_train_keys_are_left_out_of_resolved_configs_at_their_defaults():
    for name in ("default", "small", "fsdd"):
        text = dump_experiment(load_experiment(name))
        assert "chunk_seconds" not in text and "secondary_weight" not in text and "valid_crop" not in text
    chunked = experiment_from_dict({"train": {"chunk_seconds": 5, "secondary_weight": 0.5}})
    text = dump_experiment(chunked)
    assert "chunk_seconds = 5.0" in text and "secondary_weight = 0.5" in text and "valid_crop" not in text


def test_chunk_frames_follow_the_audio_config_and_default_to_the_tile():
    assert experiment_from_dict({"input": {"tile_frames": 128}}).chunk_frames == 128
    chunked = experiment_from_dict({"train": {"chunk_seconds": 5.0},
                                    "audio": {"sample_rate": 32000, "hop_length": 320}})
    assert chunked.chunk_frames == 501  # 1 + 160000 // 320, as a 5 s file gives
    assert load_experiment("birdclef_sed").chunk_frames == load_experiment("birdclef_sed").input.tile_frames == 501


@pytest.mark.parametrize("train, message", [
    ({"chunk_seconds": -1.0}, "chunk_seconds = -1.0 is out of range"),
    ({"chunk_seconds": 0.01}, "a chunk needs at least 9"),
    ({"secondary_weight": 1.5}, "secondary_weight = 1.5 is out of range"),
    ({"valid_crop": "last"}, "valid_crop must be one of center, first, whole, got 'last'"),
])
def test_bad_chunk_settings_are_one_sentence(train, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({"train": train}, where="x.toml")


def test_weak_targets_put_primary_at_one_and_secondary_at_the_weight():
    targets = weak_targets([("a",), ("b",), ("c",)], [("b", "c"), (), ("c",)], ("a", "b", "c"), 0.5)
    np.testing.assert_array_equal(targets, [[1, 0.5, 0.5], [0, 1, 0], [0, 0, 1]])
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(weak_targets([("a",)], [("b",)], ("a", "b"), 0.0), [[1, 0]])


def test_valid_crops_take_the_first_centre_or_whole_clip():
    spec = np.arange(4 * 40, dtype=np.float32).reshape(4, 40)
    first = valid_transform(16, crop="first")(spec)
    centre = valid_transform(16)(spec)
    whole = valid_transform(16, crop="whole")(spec)
    np.testing.assert_allclose(first[0], spec[:, :16] / 100)
    np.testing.assert_allclose(centre[0], spec[:, 12:28] / 100)
    assert whole.shape == (3, 4, 40)
    with pytest.raises(ValueError, match="crop must be one of center, first, whole"):
        valid_transform(16, crop="last")


def test_whole_clip_validation_scores_clips_of_any_length_one_a_batch():
    import torch

    from freesound.models import create_model
    from freesound.training.fold_parts import validation_batch_size
    from freesound.training.sampling import ValidationDataset
    from freesound.training.trainer import _validate

    assert validation_batch_size(experiment_from_dict({"train": {"valid_crop": "whole", "batch_size": 8}})) == 1
    assert validation_batch_size(experiment_from_dict({"train": {"valid_crop": "first", "batch_size": 8}})) == 8
    rng = np.random.default_rng(0)
    specs = [rng.standard_normal((32, frames)).astype(np.float32) for frames in (20, 75, 140)]
    targets = np.eye(3, 2, dtype=np.float32)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=2, base_size=4)
    valid_set = ValidationDataset(specs, targets, valid_transform(32, crop="whole"))
    assert [tuple(valid_set[i][0].shape) for i in range(3)] == [(3, 32, 32), (3, 32, 75), (3, 32, 140)]
    loss, scores = _validate(model, valid_set, torch.nn.BCEWithLogitsLoss(), 1, torch.device("cpu"), False, 2)
    assert scores.shape == (3, 2) and np.isfinite(loss) and ((scores > 0) & (scores < 1)).all()
    model.eval()
    with torch.no_grad():  # each clip's score is the model on that whole clip
        np.testing.assert_allclose(scores[2], torch.sigmoid(model(valid_set[2][0][None])[0])[0].numpy(), rtol=1e-5)


def test_a_chunk_of_a_long_memory_mapped_log_mel_reads_only_the_chunk(tmp_path):
    # 128 mel bands x 40,000 frames (about 6.7 min at BirdCLEF's 10 ms hops): 20 MB of float32.
    long = np.random.default_rng(0).standard_normal((128, 40_000)).astype(np.float32)
    np.save(tmp_path / "long.npy", long)
    mapped = LazyLogmels([tmp_path / "long.npy"], mmap=True)
    assert isinstance(mapped[0], np.memmap)
    transform = train_transform(501, resize_prob=0.0)

    def peak_bytes(specs):
        dataset = SamplingDataset([ClipSource("curated", specs, np.ones((1, 2), np.float32), False)], [1.0], 4,
                                  transform)
        tracemalloc.start()
        image, target, _ = dataset[0]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert image.shape == (3, 128, 501)
        return peak

    chunk_bytes = 128 * 501 * 4
    assert peak_bytes(mapped) < 16 * chunk_bytes < long.nbytes / 2  # a few chunk-sized arrays, never the file
    assert peak_bytes(LazyLogmels([tmp_path / "long.npy"])) > long.nbytes  # what reading it whole costs


# --------------------------------------------------------------------------------------------
# The data model and the BirdCLEF layout


def test_secondary_labels_are_a_column_that_other_readers_ignore(tmp_path):
    (tmp_path / "train_curated.csv").write_text("fname,labels,secondary_labels\na.wav,x,\"y,z\"\nb.wav,y,\n")
    (tmp_path / "train_noisy.csv").write_text("fname,labels\n")
    (tmp_path / "sample_submission.csv").write_text("fname,x,y,z\n")
    dataset = load_dataset(tmp_path)
    assert list(dataset.curated.labels) == [("x",), ("y",)] and list(dataset.curated.columns) == ["fname", "labels"]
    assert dataset.secondary == {"train_curated": {"a.wav": ("y", "z")}}
    assert dataset.secondary_labels("train_curated", ["b.wav", "a.wav"]) == [(), ("y", "z")]
    assert read_labels_csv(tmp_path / "train_curated.csv", ("x", "y", "z")).shape == (2, 2)
    (tmp_path / "train_curated.csv").write_text("fname,labels,secondary_labels\na.wav,x,w\n")
    with pytest.raises(DatasetError, match=r"train_curated.csv, row 2 \(a.wav\), secondary_labels: label 'w' is not"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("text, labels", [("['a', 'b']", ("a", "b")), ("[]", ()), ("", ()), ('["a", "a"]', ("a",))])
def test_label_lists_parse_as_birdclef_writes_them(text, labels):
    assert parse_label_list(text, where="row 2") == labels


def test_a_label_list_that_is_not_one_is_named():
    with pytest.raises(DatasetError, match=r"row 2: 'a; b' is not a list of labels"):
        parse_label_list("a; b", where="row 2")


def test_window_row_ids_end_every_five_seconds():
    assert window_row_ids("S01", 60) == [f"S01_{end}" for end in range(5, 65, 5)]
    assert window_row_ids("S01", 12.0) == ["S01_5", "S01_10"]


@pytest.fixture(scope="module")
def birdclef_meta(tmp_path_factory):
    """A tiny fake BirdCLEF metadata folder: train.csv with the real columns (extra ones
    included) and taxonomy.csv, plus stand-in audio files (prepare does not decode them)."""
    root = tmp_path_factory.mktemp("birdclef_meta")
    pd.DataFrame({
        "primary_label": ["asbfly", "asbfly", "ashdro1", "grnsan"],
        "secondary_labels": ["[]", "['ashdro1', 'unknown1']", "['asbfly']", "[]"],
        "type": ["['call']"] * 4, "latitude": [39.2, 51.4, 12.0, ""], "longitude": [118.1, 1.5, 77.0, ""],
        "scientific_name": ["Muscicapa dauurica"] * 4, "common_name": ["Asian Brown Flycatcher"] * 4,
        "author": ["Matt Slaymaker", "Stuart Fisher", "Matt Slaymaker", "Hu Bin"],
        "license": ["Creative Commons Attribution-NonCommercial-ShareAlike 4.0"] * 4,
        "rating": [5.0, 2.5, 4.0, 0.0], "url": ["https://www.xeno-canto.org/134896"] * 4,
        "filename": ["asbfly/XC134896.ogg", "asbfly/XC164848.ogg", "ashdro1/XC175797.ogg", "grnsan/XC207738.ogg"],
    }).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"primary_label": ["grnsan", "asbfly", "ashdro1"], "inat_taxon_id": [1, 2, 3],
                  "common_name": ["Green Sandpiper", "Asian Brown Flycatcher", "Ashy Drongo"],
                  "scientific_name": ["Tringa ochropus", "Muscicapa dauurica", "Dicrurus leucophaeus"],
                  "class_name": ["Aves"] * 3}).to_csv(root / "taxonomy.csv", index=False)
    for name in pd.read_csv(root / "train.csv").filename:
        (root / "train_audio" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "train_audio" / name).write_bytes(b"stand-in")
    return root


def test_train_csv_reads_primary_secondary_and_author(birdclef_meta):
    table, classes, dropped = read_train_csv(birdclef_meta)
    assert classes == ("asbfly", "ashdro1", "grnsan")  # taxonomy's, sorted (the submission's order)
    assert list(table.primary) == ["asbfly", "asbfly", "ashdro1", "grnsan"]
    assert list(table.secondary) == [(), ("ashdro1",), ("asbfly",), ()]
    assert list(table.group) == ["Matt Slaymaker", "Stuart Fisher", "Matt Slaymaker", "Hu Bin"]
    assert dropped == {"unknown1": 1}


def test_prepare_writes_the_layout_with_secondary_labels_and_authors_as_groups(birdclef_meta, tmp_path):
    result = run_cli("prepare", birdclef_meta, tmp_path / "data")
    assert "prepared: 4 training and 0 test clips of 3 classes" in result.output
    assert "missing skipped, a group column (make-folds --group-by group))" in result.output
    assert "left out 1 secondary label(s) of 1 species outside the class list" in result.output
    curated = pd.read_csv(tmp_path / "data" / "train_curated.csv", keep_default_na=False)
    assert list(curated.columns) == ["fname", "labels", "secondary_labels"]
    assert curated.values.tolist() == [["XC134896.ogg", "asbfly", ""], ["XC164848.ogg", "asbfly", "ashdro1"],
                                       ["XC175797.ogg", "ashdro1", "asbfly"], ["XC207738.ogg", "grnsan", ""]]
    assert pd.read_csv(tmp_path / "data" / "metadata.csv").group.tolist() == [
        "Matt Slaymaker", "Stuart Fisher", "Matt Slaymaker", "Hu Bin"]
    dataset = load_dataset(tmp_path / "data")
    assert dataset.classes == ("asbfly", "ashdro1", "grnsan") and dataset.test_fnames == ()
    assert dataset.secondary["train_curated"] == {"XC164848.ogg": ("ashdro1",), "XC175797.ogg": ("asbfly",)}


def test_prepare_refuses_column_options_for_a_birdclef_folder(birdclef_meta, tmp_path):
    result = run_cli("prepare", birdclef_meta, tmp_path / "data", "--group-column", "url", expect=1)
    assert "is a BirdCLEF train.csv, read as BirdCLEF lays it out" in result.output
    assert "--group-column do not apply" in result.output and "Traceback" not in result.output


def test_a_primary_label_outside_the_classes_is_named(birdclef_meta, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").write_text("primary_label,filename\nzzz,zzz/XC1.ogg\n")
    (src / "taxonomy.csv").write_bytes((birdclef_meta / "taxonomy.csv").read_bytes())
    result = run_cli("prepare", src, tmp_path / "data", expect=1)
    assert "train.csv, row 2: primary_label 'zzz' is not a class of" in result.output


# --------------------------------------------------------------------------------------------
# synth --soundscapes and synth --like


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("soundscapes") / "bc"
    synthesize_soundscapes(root, num_classes=3, num_recordings=6, num_soundscapes=1, seed=3,
                           recording_seconds=(3.0, 8.0), progress=False)
    return root


def test_soundscapes_write_the_birdclef_layout(soundscapes):
    train = pd.read_csv(soundscapes / "train.csv")
    assert list(train.columns[:2]) == ["primary_label", "secondary_labels"] and train.columns[-1] == "filename"
    assert sorted(train.primary_label) == ["sp01", "sp01", "sp02", "sp02", "sp03", "sp03"]
    for row in train.itertuples():
        assert row.filename.startswith(f"{row.primary_label}/XC") and row.filename.endswith(".ogg")
        audio, rate = sf.read(soundscapes / "train_audio" / row.filename)
        assert rate == 32000 and 3.0 <= len(audio) / rate <= 8.0
        assert set(parse_label_list(row.secondary_labels, where="")) <= {"sp01", "sp02", "sp03"} - {row.primary_label}
    taxonomy = pd.read_csv(soundscapes / "taxonomy.csv")
    assert list(taxonomy.columns) == ["primary_label", "common_name", "scientific_name", "class_name"]
    (stem,) = [path.stem for path in (soundscapes / "test_soundscapes").glob("*.ogg")]
    audio, rate = sf.read(soundscapes / "test_soundscapes" / f"{stem}.ogg")
    assert (rate, len(audio)) == (32000, 60 * 32000)
    submission = pd.read_csv(soundscapes / "sample_submission.csv")
    assert list(submission.columns) == ["row_id", "sp01", "sp02", "sp03"]
    assert list(submission.row_id) == window_row_ids(stem, 60) and (submission.iloc[:, 1:] == 0).all().all()


def test_solution_marks_the_windows_the_events_overlap(soundscapes):
    events = pd.read_csv(soundscapes / EVENTS_CSV)
    solution = pd.read_csv(soundscapes / SOLUTION_CSV).set_index("row_id")
    assert 3 <= len(events) <= 6 and list(solution.columns) == ["sp01", "sp02", "sp03"]
    for event in events.itertuples():
        middle = (event.start + event.end) / 2
        window = f"{event.soundscape}_{int(middle // 5 + 1) * 5}"
        assert solution.loc[window, event.primary_label] == 1
    (plan,) = plan_soundscapes(3, 1, seed=3)
    np.testing.assert_array_equal(solution.to_numpy(), window_truth(plan, 3))
    assert 0 < solution.to_numpy().sum() < solution.size


def test_soundscapes_are_byte_identical_per_seed(tmp_path):
    for name in ("a", "b"):
        synthesize_soundscapes(tmp_path / name, num_classes=2, num_recordings=2, num_soundscapes=0, seed=5,
                               recording_seconds=(3.0, 3.5), progress=False)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*") if path.is_file())
    assert len(files) == 8  # 2 recordings, 5 tables, the manifest
    for path in files:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path


def test_ogg_bytes_fix_the_stream_serial_libsndfile_draws():
    x = np.sin(np.arange(32000, dtype=np.float32) / 10) * 0.1
    assert ogg_bytes(x, 7) == ogg_bytes(x, 7) != ogg_bytes(x, 8)
    decoded, rate = sf.read(io.BytesIO(ogg_bytes(x, 7)))
    assert rate == 32000 and decoded.shape == (32000,)


def test_a_recording_of_minutes_is_written_without_crashing_libsndfile():
    # 90 s at 32 kHz in one sf.write call is a segmentation fault under libsndfile 1.2.2 (synth
    # --like plans recordings of up to 120 s); written in blocks, it decodes whole.
    x = (0.01 * np.random.default_rng(0).standard_normal(90 * 32000)).astype(np.float32)
    decoded, rate = sf.read(io.BytesIO(ogg_bytes(x, 7)))
    assert rate == 32000 and decoded.shape == (90 * 32000,)


def test_like_replicates_a_birdclef_metadata_folder(birdclef_meta, tmp_path):
    summary = synthesize_birdclef_like(tmp_path / "like", birdclef_meta, duration_scale=0.02, seed=1, progress=False)
    assert summary.classes == ("asbfly", "ashdro1", "grnsan") and summary.num_recordings == 4
    assert (tmp_path / "like" / "train.csv").read_bytes() == (birdclef_meta / "train.csv").read_bytes()
    assert (tmp_path / "like" / "taxonomy.csv").read_bytes() == (birdclef_meta / "taxonomy.csv").read_bytes()
    for name in pd.read_csv(birdclef_meta / "train.csv").filename:
        audio, rate = sf.read(tmp_path / "like" / "train_audio" / name)
        assert rate == 32000 and 0.04 <= len(audio) / rate <= 2.4  # 2-120 s times 0.02


# --------------------------------------------------------------------------------------------
# The chain: synth --soundscapes -> prepare -> features -> make-folds -> train -> OOF


@pytest.mark.slow
def test_birdclef_sed_trains_on_chunks_of_prepared_soundscape_data(soundscapes, tmp_path, one_torch_thread):
    data, work = tmp_path / "data", tmp_path / "work"
    run_cli("prepare", soundscapes, data)
    experiment = tmp_path / "bc.toml"
    text = (Path(__file__).parents[1] / "experiments" / "birdclef_sed.toml").read_text()
    for setting, tiny in (("epoch_size = 128", "epoch_size = 32"), ("max_epochs = 10", "max_epochs = 1"),
                          ("batch_size = 16", "batch_size = 8"), ("workers = 1", "workers = 0"),
                          # seed 3's second author holds one sp01 recording: a fold ROC-AUC cannot score
                          ('metric = "roc_auc"', 'metric = "lwlrap"')):
        assert setting in text
        text = text.replace(setting, tiny)
    experiment.write_text(text)
    run_cli("features", "--data", data, "--work", work, "--experiment", experiment, "--workers", 1)
    folds = run_cli("make-folds", "--data", data, "--work", work, "--group-by", "group", "--folds", 2)
    assert "groups kept apart" in folds.output
    # With ROC-AUC, that fold is refused at its first validation, the class named.
    by_auc = tmp_path / "bc_auc.toml"
    by_auc.write_text(text.replace('metric = "lwlrap"', 'metric = "roc_auc"'))
    refused = run_cli("train", by_auc, "--data", data, "--work", work, "--device", "cpu", expect=1)
    assert "cannot score the fold's validation clips" in refused.output
    assert "no negative row (classes ['sp01'])" in refused.output
    result = run_cli("train", experiment, "--data", data, "--work", work, "--device", "cpu")
    assert "best val lwlrap per fold (first chunk)" in result.output
    oof = pd.read_csv(work / "predictions" / "bc" / "oof.csv")
    assert sorted(oof.fname) == sorted(pd.read_csv(data / "train_curated.csv").fname)
    assert list(oof.columns) == ["fname", "sp01", "sp02", "sp03"]
    assert ((oof.iloc[:, 1:] > 0) & (oof.iloc[:, 1:] < 1)).all().all()
    config = (work / "experiments" / "bc" / "fold_0" / "config.toml").read_text()
    assert "chunk_seconds = 5.0" in config and "secondary_weight = 0.5" in config and 'valid_crop = "first"' in config
