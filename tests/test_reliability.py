"""Issue #8, one test (or table) per rule: bad input, misuse and interruptions never lose work or
hide errors.

- CLI errors are one ``error:`` sentence naming the thing at fault, exit status 1, no traceback
  (``--debug`` shows it). A weights checksum mismatch is the kernel's error: see
  ``test_kernel.py::test_corrupt_weight_stops_the_kernel_naming_file_and_hashes``.
- A label outside the vocabulary names the file, the clip and the label, wherever it is read.
- Batch work finishes the rest, names every failure and says so in its exit status (the kernel,
  which must end with a complete submission, exits 0: ``test_kernel.py``).
- A missing fold stops prediction, naming the fold.
- A file longer than ``max_seconds`` is cropped with a warning the CLI shows; checkpoints saved
  before that setting existed still load. (The front end's own edge rules, NaN and infinite
  samples, sample rates, channels, silence, are in ``test_audio.py``.)
- Every write is atomic, and a killed ``features`` or ``train`` picks up where it stopped.
"""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from conftest import REPO, tiny_experiment_toml
from freesound.audio import AudioConfig, read_as_melspectrogram, silent_logmel
from freesound.cli import main
from freesound.config import load_experiment
from freesound.data.dataset import SPLITS, load_dataset
from freesound.data.features import cache_root
from freesound.data.synth import synthesize_dataset
from freesound.models import create_model, save_checkpoint
from freesound.paths import train_state_path
from freesound.predict import Tagger


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(result, *names, progress=False):
    """Exit status 1, exactly one stderr line, ``error: ...`` naming every one of ``names`` (after
    the lines of the features' progress bar, with ``progress``)."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    if progress:
        assert all(line.startswith("log-mel features: ") for line in lines[:-1]), result.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    assert "Traceback" not in result.output


def save_stub_folds(work, name, classes, folds=(0, 1, 2), audio_config=None):
    """Tiny random ``simple_cnn`` checkpoints standing in for a trained experiment."""
    for fold in folds:
        torch.manual_seed(fold)
        model = create_model("simple_cnn", num_classes=len(classes), base_size=4).eval()
        save_checkpoint(Path(work) / "experiments" / name / f"fold_{fold}" / "model.pt", model,
                        model_name="simple_cnn", model_params={"num_classes": len(classes), "base_size": 4},
                        classes=list(classes),
                        audio_config=AudioConfig().to_dict() if audio_config is None else audio_config)


def write_clip(path, seconds=1.0, sr=44100):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


@pytest.fixture
def env(tiny_work, tmp_path):
    """The tiny dataset (read only), a private work copy with a stub experiment trained on its
    three folds, an experiments folder, and a copy of the dataset's CSV files to damage."""
    dataset, work = tiny_work
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    for name in ("train_curated.csv", "train_noisy.csv", "sample_submission.csv", "test_labels.csv"):
        shutil.copy(dataset.root / name, csvs / name)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "stub.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=1))
    save_stub_folds(work, "stub", dataset.classes)
    return SimpleNamespace(dataset=dataset, work=work, csvs=csvs, experiments=experiments, tmp=tmp_path)


def damage_label(csv, row=0, label="Not_a_class"):
    """Put an unknown label in one row of a fname,labels file; return that row's fname."""
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[row, "labels"] = frame.loc[row, "labels"] + "," + label
    frame.to_csv(csv, index=False)
    return frame.fname[row]


# ----------------------------------------------------------------------------- CLI errors


def unknown_experiment(env):
    return (["train", "nope", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments],
            ["'nope'"])


def missing_dataset_folder(env):
    return ["features", "--data", env.tmp / "absent", "--work", env.work], [env.tmp / "absent", "does not exist"]


def missing_csv(env):
    (env.csvs / "train_noisy.csv").unlink()
    return ["make-folds", "--data", env.csvs, "--work", env.tmp / "w"], [env.csvs / "train_noisy.csv", "not found"]


def unknown_config_key(env):
    (env.experiments / "bad.toml").write_text("[train]\nlearning_rate = 0.1\n")
    return (["train", "bad", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments],
            ["bad.toml", "learning_rate", "valid keys are"])


def unknown_model(env):
    (env.experiments / "bad.toml").write_text('[model]\nname = "resnet_nope"\n')
    return (["train", "bad", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments],
            ["'bad'", "resnet_nope", "aux_skip_attention"])


def out_of_range_audio_setting(env):
    (env.experiments / "bad.toml").write_text("[audio]\nmax_seconds = 0.0\n")
    return (["train", "bad", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments],
            ["bad.toml", "audio", "max_seconds must be positive"])


def non_numeric_predictions(env):
    frame = pd.read_csv(env.csvs / "sample_submission.csv")
    frame[frame.columns[1]] = frame[frame.columns[1]].astype(object)
    frame.loc[2, frame.columns[1]] = "high"
    frame.to_csv(env.tmp / "predictions.csv", index=False)
    return (["evaluate", env.tmp / "predictions.csv", "--labels", env.csvs / "test_labels.csv"],
            [env.tmp / "predictions.csv", "not finite numbers", frame.fname[2], "'high'"])


def label_not_in_vocabulary(env):
    fname = damage_label(env.csvs / "train_curated.csv")
    return (["make-folds", "--data", env.csvs, "--work", env.tmp / "w"],
            [env.csvs / "train_curated.csv", fname, "'Not_a_class'", "not in the class vocabulary"])


def missing_weights(env):
    return (["predict", "stub", "--audio", env.tmp, "--work", env.tmp / "empty", "--experiments", env.experiments],
            [env.tmp / "empty" / "experiments" / "stub", "no trained folds"])


def unreadable_audio_for_tag(env):
    (env.tmp / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return ["tag", env.tmp / "broken.wav", "--experiment", "stub", "--work", env.work], ["broken.wav", "cannot decode"]


def unreadable_csv(env):
    (env.tmp / "predictions.csv").write_text('fname,Bark\n"unterminated\n')
    return (["evaluate", env.tmp / "predictions.csv", "--labels", env.csvs / "test_labels.csv"],
            [env.tmp / "predictions.csv", "not a readable CSV"])


def missing_fold(env):
    shutil.rmtree(env.work / "experiments" / "stub" / "fold_1")
    write_clip(env.tmp / "clip.wav")
    return ["tag", env.tmp / "clip.wav", "--experiment", "stub", "--work", env.work], ["fold(s) 1 have no model.pt"]


CLI_ERRORS = [unknown_experiment, missing_dataset_folder, missing_csv, unknown_config_key, unknown_model,
              out_of_range_audio_setting, non_numeric_predictions, label_not_in_vocabulary, missing_weights, unreadable_audio_for_tag, unreadable_csv, missing_fold]


@pytest.mark.parametrize("case", CLI_ERRORS, ids=[case.__name__ for case in CLI_ERRORS])
def test_cli_errors_are_one_sentence_naming_the_fault(env, case):
    args, names = case(env)
    assert_one_error(cli(*args), *names)


def test_debug_shows_the_traceback(env):
    args, _ = unknown_experiment(env)
    result = cli("--debug", *args)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1].startswith("error: unknown experiment")


def test_unavailable_device_is_a_usage_error(env):
    result = cli("predict", "stub", "--audio", env.tmp, "--work", env.work, "--experiments", env.experiments,
                 "--device", "tpu:9")
    assert result.exit_code == 2 and "--device" in result.stderr and "Traceback" not in result.output


# ----------------------------------------------------------------------------- labels


def bad_curated_csv(env):
    fname = damage_label(env.csvs / "train_curated.csv", row=3)
    return ["make-folds", "--data", env.csvs, "--work", env.tmp / "w"], env.csvs / "train_curated.csv", fname


def bad_noisy_csv_in_relabel(env):
    fname = damage_label(env.csvs / "train_noisy.csv", row=2)
    return (["relabel", "stub", "--data", env.csvs, "--work", env.work, "--experiments", env.experiments],
            env.csvs / "train_noisy.csv", fname)


def corrections_file(env, key="corrections", split="curated"):
    frame = env.dataset.curated if split == "curated" else env.dataset.noisy
    fname = frame.fname[1]
    (env.experiments / "fixes.json").write_text(json.dumps({fname: f"{frame.labels[1][0]},Not_a_class"}))
    (env.experiments / "fixed.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=1)
                                                + f'\n[data]\n{key} = "fixes.json"\n')
    return (["train", "fixed", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments,
             "--device", "cpu"], env.experiments / "fixes.json", fname)


def noisy_corrections_file(env):
    return corrections_file(env, key="noisy_corrections", split="noisy")


def evaluate_labels_csv(env):
    fname = damage_label(env.csvs / "test_labels.csv", row=4)
    predictions = pd.read_csv(env.csvs / "sample_submission.csv")
    predictions.to_csv(env.tmp / "predictions.csv", index=False)
    return (["evaluate", env.tmp / "predictions.csv", "--labels", env.csvs / "test_labels.csv"],
            env.csvs / "test_labels.csv", fname)


LABEL_SOURCES = [bad_curated_csv, bad_noisy_csv_in_relabel, corrections_file, noisy_corrections_file,
                 evaluate_labels_csv]


@pytest.mark.parametrize("source", LABEL_SOURCES, ids=[source.__name__ for source in LABEL_SOURCES])
def test_label_outside_the_vocabulary_names_file_clip_and_label(env, source):
    args, path, fname = source(env)
    assert_one_error(cli(*args), path, fname, "'Not_a_class'", "not in the class vocabulary")


# ----------------------------------------------------------------------------- batch failures


@pytest.fixture
def small_dataset(tmp_path):
    """A fresh 3-class dataset of a few clips, with two test clips broken (garbage, empty)."""
    root = tmp_path / "small"
    synthesize_dataset(root, num_classes=3, num_curated=6, num_noisy=2, num_test=5, seed=3, progress=False)
    test = pd.read_csv(root / "sample_submission.csv").fname.tolist()
    (root / "test" / test[1]).write_bytes(b"not audio at all" * 20)
    (root / "test" / test[3]).write_bytes(b"")
    return root, test, [test[1], test[3]]


def test_features_cache_the_rest_and_name_every_failure(small_dataset, tmp_path):
    root, test, broken = small_dataset
    result = cli("features", "--data", root, "--work", tmp_path / "work", "--workers", "1")
    assert result.exit_code == 1
    assert "11 computed, 0 already cached, 2 failed" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 2
    assert f"test/{broken[0]}: " in failed[0] and f"test/{broken[1]}: the file is empty" in failed[1]
    assert len(list(cache_root(tmp_path / "work", root, AudioConfig()).rglob("*.npy"))) == 11


def test_predict_keeps_every_test_row_and_names_every_failure(small_dataset, tmp_path):
    root, test, broken = small_dataset
    classes = pd.read_csv(root / "sample_submission.csv", nrows=0).columns[1:]
    work, experiments = tmp_path / "work", tmp_path / "experiments"
    save_stub_folds(work, "stub", classes, folds=(0, 1))
    experiments.mkdir()
    (experiments / "stub.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=1))
    result = cli("predict", "stub", "--data", root, "--work", work, "--experiments", experiments, "--no-oof",
                 "--device", "cpu")
    assert result.exit_code == 1
    submission = pd.read_csv(work / "predictions" / "stub" / "test.csv")
    assert submission.fname.tolist() == test and submission.notna().all().all()
    errors = pd.read_csv(work / "predictions" / "stub" / "test.errors.csv")
    assert errors.fname.tolist() == broken and errors.reason.str.len().min() > 0
    for fname in broken:
        assert f"failed: {fname}: " in result.stderr
    # The broken rows are predicted from silence, the others from their audio.
    tagger = Tagger.from_experiment(work / "experiments" / "stub")
    probs = submission.set_index("fname")
    np.testing.assert_allclose(probs.loc[broken[0]], tagger.predict_spectrograms([silent_logmel()])[0], atol=1e-6)
    good = root / "test" / test[0]
    np.testing.assert_allclose(probs.loc[test[0]], tagger.predict_spectrograms([read_as_melspectrogram(good)])[0],
                               atol=1e-6)


def test_tag_tags_the_good_files_and_names_the_bad(env):
    good = write_clip(env.tmp / "good.wav")
    (env.tmp / "empty.wav").write_bytes(b"")
    result = cli("tag", env.tmp / "empty.wav", good, env.tmp / "missing.flac", "--experiment", "stub",
                 "--work", env.work)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "good.wav"
    assert result.stderr.splitlines() == ["error: cannot decode empty.wav: the file is empty (0 bytes)",
                                          "error: cannot decode missing.flac: no such file"]



def test_tag_names_files_of_one_name_by_their_paths(env):
    """Issue 33 item 8, for ``tag``: a/x.wav and b/x.wav are two rows, each under its path."""
    paths = []
    for folder in ("a", "b"):
        (env.tmp / folder).mkdir()
        paths.append(str(write_clip(env.tmp / folder / "x.wav")))
    result = cli("tag", *paths, "--experiment", "stub", "--work", env.work, "--top", "1")
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines() if not line.startswith(" ")] == paths


def test_tag_and_listen_take_an_experiment_file_as_predict_does(env):
    clip = write_clip(env.tmp / "clip.wav", seconds=3.0)
    toml = env.experiments / "stub.toml"
    by_name = cli("tag", clip, "--experiment", "stub", "--work", env.work)
    by_path = cli("tag", clip, "--experiment", toml, "--work", env.work)
    assert by_name.exit_code == 0 and by_path.exit_code == 0, by_path.output
    assert by_path.stdout == by_name.stdout and by_name.stdout.startswith("clip.wav\n")
    timeline = cli("tag", clip, "--experiment", toml, "--work", env.work, "--timeline", "--windows", 1)
    folder = env.work / "predictions" / "stub" / "timeline"  # named by the experiment, not by the path
    assert timeline.exit_code == 0 and (folder / "clip_timeline.csv").is_file(), timeline.output
    listened = cli("listen", "--experiment", toml, "--file", clip, "--work", env.work, "--window", 2)
    assert listened.exit_code == 0 and [line.split()[:2] for line in listened.stdout.splitlines()] == [
        ["1.0", "s"], ["2.0", "s"], ["3.0", "s"]], listened.output
    assert_one_error(cli("tag", clip, "--experiment", env.tmp / "missing.toml", "--work", env.work),
                     f"experiment file {env.tmp / 'missing.toml'} not found")
    (env.tmp / "ens.toml").write_text('experiments = ["stub"]\n')
    assert_one_error(cli("tag", clip, "--experiment", env.tmp / "ens.toml", "--work", env.work),
                     f"{env.tmp / 'ens.toml'} is an ensemble; --experiment takes one experiment")

# ----------------------------------------------------------------------------- unusable clips, any cause (issue #19)


def write_loud_clip(path, amplitude=1e17):
    """1 s of a 440 Hz sine in 32-bit float: finite samples whose log-mel is not (float32 power overflows)."""
    t = np.arange(44100) / 44100
    sf.write(path, (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100, subtype="FLOAT")
    return path


@pytest.fixture
def loud_dataset(tmp_path):
    """A fresh 3-class dataset with one test clip replaced by the loud sine; a stub experiment on
    two folds; an experiments folder."""
    root, work, experiments = tmp_path / "loud", tmp_path / "work", tmp_path / "experiments"
    synthesize_dataset(root, num_classes=3, num_curated=6, num_noisy=2, num_test=3, seed=3, progress=False)
    test = pd.read_csv(root / "sample_submission.csv").fname.tolist()
    write_loud_clip(root / "test" / test[1])
    save_stub_folds(work, "stub", load_dataset(root).classes, folds=(0, 1))
    experiments.mkdir()
    (experiments / "stub.toml").write_text(tiny_experiment_toml(epoch_size=8, max_epochs=1))
    return SimpleNamespace(root=root, work=work, experiments=experiments, test=test, loud=test[1], tmp=tmp_path)


def test_features_name_a_non_finite_log_mel_and_cache_nothing_for_it(loud_dataset):
    d = loud_dataset
    result = cli("features", "--data", d.root, "--work", d.work, "--workers", "1")
    assert result.exit_code == 1
    assert "10 computed, 0 already cached, 1 failed" in result.stdout
    [failed] = [line for line in result.stderr.splitlines() if line.startswith("  failed: ")]
    assert failed.startswith(f"  failed: test/{d.loud}: the log-mel is not finite (8192 of 8192 values")
    cached = cache_root(d.work, d.root, AudioConfig())
    assert len(list(cached.rglob("*.npy"))) == 10 and not list(cached.glob(f"test/{d.loud}.*"))


def test_tag_names_the_loud_file_and_tags_the_other(loud_dataset):
    d = loud_dataset
    good = write_clip(d.tmp / "good.wav")
    result = cli("tag", d.root / "test" / d.loud, good, "--experiment", "stub", "--work", d.work)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "good.wav" and len(result.stdout.splitlines()) == 4  # name, 3 classes
    [error] = result.stderr.splitlines()
    assert error.startswith(f"error: cannot decode {d.loud}: the log-mel is not finite")
    assert "Traceback" not in result.output


def test_predict_writes_the_others_and_keeps_a_test_row_from_silence(loud_dataset):
    from freesound.ensembling.specs import experiment_spec
    from freesound.kaggle.runtime import predict_in_chunks
    from freesound.predict import EnsemblePredictor

    d = loud_dataset
    common = ["--work", d.work, "--experiments", d.experiments, "--device", "cpu"]
    result = cli("predict", "stub", "--audio", d.root / "test", "--out", d.tmp / "audio.csv", *common)
    assert result.exit_code == 1
    assert pd.read_csv(d.tmp / "audio.csv").fname.tolist() == [d.test[0], d.test[2]]
    assert pd.read_csv(d.tmp / "audio.errors.csv").fname.tolist() == [d.loud]
    assert f"failed: {d.loud}: the log-mel is not finite" in result.stderr

    result = cli("predict", "stub", "--data", d.root, "--no-oof", *common)
    assert result.exit_code == 1
    submission = pd.read_csv(d.work / "predictions" / "stub" / "test.csv").set_index("fname")
    assert submission.index.tolist() == d.test
    tagger = Tagger.from_experiment(d.work / "experiments" / "stub")
    silence = tagger.predict_spectrograms([silent_logmel()])[0]
    np.testing.assert_allclose(submission.loc[d.loud], silence, atol=1e-6)
    errors = pd.read_csv(d.work / "predictions" / "stub" / "test.errors.csv")
    assert errors.fname.tolist() == [d.loud] and errors.reason[0].startswith("the log-mel is not finite")

    # The kernel runs the same path: every row, the loud one from silence, and it is listed.
    predictor = EnsemblePredictor.from_spec(experiment_spec("stub", d.work), lambda p: d.work / "experiments" / p)
    predictions, failures = predict_in_chunks(predictor, [d.root / "test" / f for f in d.test], 2, lambda *_: None)
    assert predictions.index.tolist() == d.test
    np.testing.assert_allclose(predictions.loc[d.loud], silence, atol=1e-6)
    assert [fname for fname, _ in failures] == [d.loud]


def test_training_refuses_a_loud_clip_naming_it(loud_dataset):
    d = loud_dataset
    dataset = load_dataset(d.root)
    loud = dataset.curated.fname[2]
    write_loud_clip(d.root / "train_curated" / loud)
    assert cli("make-folds", "--data", d.root, "--work", d.tmp / "train_work", "--folds", "2").exit_code == 0
    result = cli("train", "stub", "--data", d.root, "--work", d.tmp / "train_work", "--experiments", d.experiments,
                 "--device", "cpu", "--fold", "0")
    assert_one_error(result, f"1 clip(s) cannot be used (train_curated/{loud}: the log-mel is not finite",
                     f"from train_curated.csv in {d.root}", progress=True)
    assert not (d.tmp / "train_work" / "experiments" / "stub" / "fold_0" / "model.pt").exists()
    # Every other clip was cached on the way, so fixing the file costs only that clip.
    cached = cache_root(d.tmp / "train_work", d.root, AudioConfig())
    assert len(list(cached.glob("train_*/*.npy"))) == len(dataset.curated) + len(dataset.noisy) - 1


def test_a_non_finite_cached_log_mel_is_refused_naming_the_clip(tiny_work, tmp_path):
    from freesound.data.features import NonFiniteFeaturesError, load_features

    dataset, work = tiny_work
    fname = dataset.curated.fname[5]
    [entry] = cache_root(work, dataset.root, AudioConfig()).glob(f"train_curated/{fname}.*.npy")
    logmel = np.load(entry)
    np.save(entry, np.full_like(logmel, np.nan))  # as an older freesound cached the loud clip
    with pytest.raises(NonFiniteFeaturesError) as info:
        load_features(dataset, work, "train_curated")
    assert f"{fname} ({entry})" in str(info.value) and "is not finite" in str(info.value)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=8, max_epochs=1))
    result = cli("train", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments,
                 "--device", "cpu", "--fold", "0")
    assert_one_error(result, fname, entry, "not finite", "delete these cache files")


@pytest.mark.slow
def test_train_and_predict_right_after_make_folds_compute_the_features(tmp_path):
    root, work, experiments = tmp_path / "data", tmp_path / "work", tmp_path / "experiments"
    synthesize_dataset(root, num_classes=3, num_curated=6, num_noisy=2, num_test=2, seed=5, progress=False)
    dataset = load_dataset(root)
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=8, max_epochs=1))
    assert cli("make-folds", "--data", root, "--work", work, "--folds", "2").exit_code == 0
    common = ["--data", root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    trained = cli("train", "tiny", *common, "--fold", "0")
    assert trained.exit_code == 0, trained.output
    assert "log-mel features: 100% 8/8" in trained.stderr
    cached = cache_root(work, root, AudioConfig())
    assert len(list(cached.glob("train_*/*.npy"))) == 8
    again = cli("train", "tiny", *common, "--fold", "1")
    assert again.exit_code == 0 and "log-mel features" not in again.stderr  # cached now
    # predict on a dataset with a fresh work folder: the OOF step computes the curated clips
    fresh = tmp_path / "fresh"
    shutil.copytree(work / "experiments", fresh / "experiments")
    shutil.copy(work / "folds.csv", fresh / "folds.csv")
    result = cli("predict", "tiny", "--data", root, "--work", fresh, "--experiments", experiments, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "log-mel features: 100% 6/6" in result.stderr
    assert re.search(r"tiny: OOF lwlrap \d\.\d{4} on 6 clips", result.stdout)
    assert len(list(cache_root(fresh, root, AudioConfig()).glob("train_curated/*.npy"))) == len(dataset.curated)


def test_predict_audio_takes_every_audio_name_and_lists_what_it_leaves_out(loud_dataset):
    d = loud_dataset
    folder = d.tmp / "mixed"
    folder.mkdir()
    for name in ("a.wav", "B.M4A", "c.aac", "d.webm", "noext", "notes.txt"):
        write_clip(folder / "tmp.wav")
        (folder / "tmp.wav").rename(folder / name)  # WAV content: libsndfile reads it whatever the name
    common = ["--work", d.work, "--experiments", d.experiments, "--device", "cpu"]
    result = cli("predict", "stub", "--audio", folder, "--out", d.tmp / "mixed.csv", *common)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(d.tmp / "mixed.csv").fname.tolist() == ["B.M4A", "a.wav", "c.aac", "d.webm"]
    assert "left out as not audio by name: 2 file(s): noext, notes.txt; --all-files decodes every file" in result.stderr
    result = cli("predict", "stub", "--audio", folder, "--all-files", "--out", d.tmp / "all.csv", *common)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(d.tmp / "all.csv").fname.tolist() == ["B.M4A", "a.wav", "c.aac", "d.webm", "noext",
                                                            "notes.txt"]
    assert "left out" not in result.stderr
    # a folder with nothing to predict is an error naming what is there, not an empty CSV
    (d.tmp / "docs").mkdir()
    (d.tmp / "docs" / "readme.md").write_text("hi")
    assert_one_error(cli("predict", "stub", "--audio", d.tmp / "docs", *common),
                     f"no audio files under {d.tmp / 'docs'}", "1 file(s): readme.md", "--all-files")
    # an .m4a no decoder here reads is named with the reason, not silently skipped
    (d.tmp / "aac").mkdir()
    (d.tmp / "aac" / "song.m4a").write_bytes(np.random.default_rng(0).bytes(3000))
    result = cli("predict", "stub", "--audio", d.tmp / "aac", "--out", d.tmp / "aac.csv", *common)
    assert result.exit_code == 1
    assert "failed: song.m4a: libsndfile cannot read it" in result.stderr
    assert pd.read_csv(d.tmp / "aac.errors.csv").fname.tolist() == ["song.m4a"]


# ----------------------------------------------------------------------------- missing folds


def test_predict_stops_naming_a_fold_missing_from_folds_csv(env):
    # Nothing but folds.csv says there should be a fold 2 (the last one).
    shutil.rmtree(env.work / "experiments" / "stub" / "fold_2")
    common = ["--work", env.work, "--experiments", env.experiments]
    for args in (["predict", "stub", "--data", env.dataset.root, *common],
                 ["predict", "stub", "--data", env.dataset.root, "--no-oof", *common],
                 ["predict", "stub", "--audio", env.dataset.root / "test", *common],
                 ["tag", write_clip(env.tmp / "clip.wav"), "--experiment", "stub", "--work", env.work],
                 ["build-kernel", "--experiment", "stub", "--out", env.tmp / "kernel", *common]):
        assert_one_error(cli(*args), env.work / "experiments" / "stub", "fold(s) 2 have no model.pt",
                         "expected folds 0, 1, 2")
    assert not (env.work / "predictions" / "stub").exists() and not (env.tmp / "kernel").exists()


def test_a_fold_folder_without_its_checkpoint_is_a_missing_fold(env):
    # A training that never finished an epoch leaves fold_<k>/ without model.pt; no folds.csv here.
    (env.work / "folds.csv").unlink()
    (env.work / "experiments" / "stub" / "fold_2" / "model.pt").unlink()
    result = cli("tag", write_clip(env.tmp / "clip.wav"), "--experiment", "stub", "--work", env.work)
    assert_one_error(result, "fold(s) 2 have no model.pt")


# ----------------------------------------------------------------------------- long files


def test_long_file_is_cropped_with_a_warning_the_cli_shows(env):
    save_stub_folds(env.work, "short", env.dataset.classes,
                    audio_config=AudioConfig(max_seconds=1.0).to_dict())
    long_clip = write_clip(env.tmp / "long.wav", seconds=3.0)
    result = cli("tag", long_clip, "--experiment", "short", "--work", env.work)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: {long_clip} is 3.0 s long; only its first 1 s are used (max_seconds)\n"
    assert result.stdout.splitlines()[0] == "long.wav"


def test_the_kernel_shows_a_freesound_warning_as_one_line_too(monkeypatch, capsys):
    import warnings

    from freesound.audio import AudioCroppedWarning
    from freesound.kaggle import runtime as kaggle

    def run_kernel(manifest):
        warnings.warn(AudioCroppedWarning("x.wav is 700.0 s long; only its first 600 s are used (max_seconds)"))
        return {"clips": 1}

    monkeypatch.setattr(kaggle, "run_kernel", run_kernel)
    assert kaggle.main({}) == {"clips": 1}
    assert capsys.readouterr().err == "warning: x.wav is 700.0 s long; only its first 600 s are used (max_seconds)\n"


def test_one_line_warnings_leaves_other_warnings_to_python():
    import warnings

    from freesound.errors import FreesoundWarning, one_line_warnings

    lines = []
    with pytest.warns(UserWarning, match="not ours"), one_line_warnings(lines.append):
        warnings.warn(FreesoundWarning("ours"))
        warnings.warn(UserWarning("not ours"))
    assert lines == ["warning: ours"]


def test_features_and_training_with_another_max_seconds(tmp_path):
    root, work, experiments = tmp_path / "data", tmp_path / "work", tmp_path / "experiments"
    synthesize_dataset(root, num_classes=3, num_curated=6, num_noisy=2, num_test=2, seed=5, progress=False)
    result = cli("features", "--data", root, "--work", work, "--workers", "1", "--max-seconds", "2")
    assert result.exit_code == 0, result.output
    dataset = load_dataset(root)
    long = [path for split in SPLITS for path in dataset.paths(split) if sf.info(path).duration > 2]
    assert long
    for path in long:
        assert f"warning: {path} is {sf.info(path).duration:.1f} s long; only its first 2 s are used" in result.stderr
    assert result.stderr.count("warning: ") == len(long)

    experiments.mkdir()
    stub = tiny_experiment_toml(epoch_size=8, max_epochs=1)
    (experiments / "short.toml").write_text(stub + "\n[audio]\nmax_seconds = 2.0\n")
    (experiments / "default_audio.toml").write_text(stub)
    common = ["--data", root, "--work", work, "--experiments", experiments, "--device", "cpu", "--fold", "0"]
    assert cli("make-folds", "--data", root, "--work", work, "--folds", "2").exit_code == 0
    trained = cli("train", "short", *common)
    assert trained.exit_code == 0
    assert "out-of-fold lwlrap once fold(s) 1 are trained too" in trained.stdout  # not scored yet
    checkpoint = torch.load(work / "experiments" / "short" / "fold_0" / "model.pt", weights_only=True)
    assert checkpoint["audio_config"]["max_seconds"] == 2.0
    # The cache is keyed by max_seconds: the default front end's features were never computed, so
    # train computes them (the long clips now uncropped, so no warning) before training.
    default_cache = cache_root(work, root, AudioConfig())
    assert not default_cache.exists()
    trained = cli("train", "default_audio", *common)
    assert trained.exit_code == 0, trained.output
    assert "warning: " not in trained.stderr
    assert len(list(default_cache.glob("train_*/*.npy"))) == len(dataset.curated) + len(dataset.noisy)
    assert not list(default_cache.glob("test/*.npy"))  # only what training needs


def test_features_for_an_experiment_with_its_own_audio_settings(tmp_path):
    root, work, experiments = tmp_path / "data", tmp_path / "work", tmp_path / "experiments"
    synthesize_dataset(root, num_classes=3, num_curated=6, num_noisy=2, num_test=2, seed=5, progress=False)
    experiments.mkdir()
    (experiments / "own.toml").write_text(tiny_experiment_toml(epoch_size=8, max_epochs=1)
                                          + "\n[audio]\nmax_seconds = 3.0\ntrim_top_db = 50.0\n")
    common = ["--data", root, "--work", work, "--experiments", experiments, "--device", "cpu", "--fold", "0"]
    assert cli("make-folds", "--data", root, "--work", work, "--folds", "2").exit_code == 0
    assert cli("features", "--data", root, "--work", work, "--workers", "1").exit_code == 0
    # The default front end's cache does not serve an experiment with its own [audio]: train
    # computes that experiment's log-mels itself, with a progress line for the work.
    own = load_experiment("own", experiments).audio
    trained = cli("train", "own", *common)
    assert trained.exit_code == 0, trained.output
    dataset = load_dataset(root)
    clips = len(dataset.curated) + len(dataset.noisy)
    assert f"log-mel features: 100% {clips}/{clips}" in trained.stderr
    cached = sorted(cache_root(work, root, own).glob("train_curated/*.npy"))
    assert len(cached) == len(dataset.curated)
    audio = root / "train_curated" / cached[0].name.partition(".wav.")[0]
    np.testing.assert_array_equal(np.load(cached[0]), read_as_melspectrogram(f"{audio}.wav", own))

    result = cli("features", "--data", root, "--work", work, "--workers", "1", "--experiment", "own",
                 "--experiments", experiments)
    assert result.exit_code == 0, result.output
    # Only the test split, which training does not read, is left to compute.
    assert (f"features: {len(dataset.test_fnames)} computed, {clips} already cached, 0 failed -> "
            f"{cache_root(work, root, own)}") in result.output
    checkpoint = torch.load(work / "experiments" / "own" / "fold_0" / "model.pt", weights_only=True)
    assert (checkpoint["audio_config"]["max_seconds"], checkpoint["audio_config"]["trim_top_db"]) == (3.0, 50.0)


def test_checkpoints_from_before_max_seconds_still_load_and_predict(env):
    old_config = {k: v for k, v in AudioConfig().to_dict().items() if k != "max_seconds"}
    save_stub_folds(env.work, "old", env.dataset.classes, audio_config=old_config)
    tagger = Tagger.from_experiment(env.work / "experiments" / "old")
    assert tagger.audio_config == AudioConfig()
    result = cli("tag", write_clip(env.tmp / "clip.wav"), "--experiment", "old", "--work", env.work)
    assert result.exit_code == 0 and result.stderr == ""


# ----------------------------------------------------------------------------- atomic writes

WRITES = {"to_csv", "write_text", "write_bytes", "savefig", "save", "savez", "savez_compressed"}


def raw_writes(source: str):
    """Line numbers of file writes (``DataFrame.to_csv``, ``Path.write_*``, ``np.save*``,
    ``torch.save``, ``savefig``, ``open(..., "w")``) outside a ``with atomic_path(...)`` block."""
    tree = ast.parse(source)
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any("atomic_path" in ast.unparse(item.context_expr) for item in node.items):
            guarded |= {id(inner) for inner in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in guarded:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        writes_open = name == "open" and any(isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                                             and set(arg.value) & set("wax") for arg in node.args[1:])
        if name in WRITES or writes_open:
            found.append(node.lineno)
    return found


def test_every_file_is_written_through_an_atomic_rename():
    # fileio is the mechanism itself; the synthesizers render into a staging folder renamed into
    # place whole.
    exempt = {"freesound/fileio.py", "freesound/data/synth.py", "freesound/data/synth_soundscapes.py"}
    offenders = []
    for path in sorted((REPO / "freesound").rglob("*.py")) + sorted((REPO / "kernel_build").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative not in exempt:
            offenders += [f"{relative}:{line}" for line in raw_writes(path.read_text())]
    assert offenders == [], "write these through freesound.fileio (atomic_path / atomic_write_*)"
    # The check itself catches a raw write and passes a guarded one.
    assert raw_writes("frame.to_csv(path)\nwith atomic_path(p) as tmp:\n    frame.to_csv(tmp)\n") == [1]


def test_a_killed_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "folds.csv"
    target.write_text("old\n")
    writer = ("import os, signal, sys\nfrom freesound.fileio import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_text('half of the new')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", writer, str(target)], cwd=tmp_path, capture_output=True)
    assert run.returncode == -signal.SIGKILL
    assert target.read_text() == "old\n"
    # What is left is a hidden temporary file that no reader globs for.
    assert [p.name for p in tmp_path.iterdir() if p != target][0].startswith(".folds.csv.")


# ----------------------------------------------------------------------------- kill and resume


def spawn(args, cwd):
    """``python -m freesound ARGS`` on one CPU thread, as a killable process."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "freesound", *map(str, args)], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(process, ready, timeout=180):
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail if it ended or never got there."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"ended before it could be killed:\n{process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "never got to the point of the kill"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_killed_features_run_is_completed_by_the_next_run(tiny_data, tmp_path):
    dataset, _ = tiny_data
    total = len(dataset.curated) + len(dataset.noisy) + len(dataset.test_fnames)

    def features(work):
        return spawn(["features", "--data", dataset.root, "--work", work, "--workers", "1"], tmp_path)

    # The reference is a clean run under the same settings: BLAS sums in another thread count
    # would round the last bit differently.
    finish(features(tmp_path / "clean"))
    reference = cache_root(tmp_path / "clean", dataset.root, AudioConfig())
    work = tmp_path / "work"
    root = cache_root(work, dataset.root, AudioConfig())
    kill_when(features(work), lambda: any(root.rglob("*.npy")))

    done = sorted(root.rglob("*.npy"))
    assert 0 < len(done) < total
    for path in done:  # every finished file is whole: never half an array
        np.testing.assert_array_equal(np.load(path), np.load(reference / path.relative_to(root)))

    out = finish(features(work))
    assert f"{total - len(done)} computed, {len(done)} already cached, 0 failed" in out
    cached = sorted(root.rglob("*.npy"))
    assert [p.relative_to(root) for p in cached] == sorted(p.relative_to(reference) for p in reference.rglob("*.npy"))
    for path in cached:
        np.testing.assert_array_equal(np.load(path), np.load(reference / path.relative_to(root)))


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    dataset, base_work = tiny_data
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=3))
    runs = {}
    for run in ("straight", "killed"):
        work = tmp_path / run
        shutil.copytree(base_work, work)
        args = ["train", "tiny", "--data", dataset.root, "--work", work, "--experiments", experiments,
                "--fold", "0", "--device", "cpu"]
        if run == "killed":
            # Killed in the second epoch, as soon as the first epoch's state is on disk, then resumed.
            kill_when(spawn(args, tmp_path), train_state_path(work, "tiny", 0).is_file)
            assert torch.load(train_state_path(work, "tiny", 0), weights_only=True)["epoch"] < 3
            assert "resuming after epoch" in finish(spawn([*args, "--resume"], tmp_path))
        else:
            finish(spawn(args, tmp_path))
        runs[run] = work

    straight, resumed = (train_state_path(runs[run], "tiny", 0) for run in ("straight", "killed"))
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    fold_a, fold_b = (runs[run] / "experiments" / "tiny" / "fold_0" for run in ("straight", "killed"))
    best_a = torch.load(fold_a / "model.pt", weights_only=True)
    best_b = torch.load(fold_b / "model.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    for key, value in best_a["state_dict"].items():
        assert torch.equal(value, best_b["state_dict"][key]), key
    log_a, log_b = (pd.read_csv(fold / "log.csv").drop(columns="seconds") for fold in (fold_a, fold_b))
    pd.testing.assert_frame_equal(log_a, log_b)
    # Nothing half-written is left where a reader would take it.
    assert sorted(p.name for p in fold_b.iterdir() if not p.name.startswith(".")) == ["config.toml", "log.csv",
                                                                                       "model.pt"]


def test_atomic_writes_get_the_mode_a_plain_open_would_give(tmp_path):
    """mkstemp makes private files; a written kernel or CSV must be as readable as any other file."""
    import os

    from freesound.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "kernel.py", "print(1)\n")
        with open(tmp_path / "plain.py", "w") as handle:
            handle.write("print(1)\n")
    finally:
        os.umask(old)
    assert (tmp_path / "kernel.py").stat().st_mode & 0o777 == (tmp_path / "plain.py").stat().st_mode & 0o777 == 0o644
