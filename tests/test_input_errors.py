"""Issue #33, bad input that used to end in a traceback or a wrong result without a word: each case
is one ``error:`` sentence naming the file or setting (exit 1), or a named warning.

Damaged weights (a truncated ``model.pt``, a file that is no argus checkpoint), corrections that
name no clip, prediction columns outside the class vocabulary, clips of the same name in two
folders, TOML files that are not UTF-8, ``prepare`` reading its own output, and
``search`` storages that cannot be opened or are created by two workers at once.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from conftest import REPO, tiny_experiment_toml
from freesound.config import load_experiment
from freesound.data.dataset import (
    FSD2019_CLASSES,
    DatasetError,
    apply_corrections,
    load_corrections,
    read_labels_csv,
)
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.tools.argus_import import ArgusImportError, import_argus
from freesound.tools.search import open_study
from test_reliability import assert_one_error, cli, env, save_stub_folds, write_clip  # noqa: F401 (fixture)


def truncate(path, fraction=0.5):
    """Cut a file to ``fraction`` of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# ----------------------------------------------------------------------------- damaged weights


def tag_args(env):
    return ["tag", write_clip(env.tmp / "clip.wav"), "--experiment", "stub", "--work", env.work]


def predict_args(env):
    audio = env.tmp / "audio"
    audio.mkdir()
    write_clip(audio / "clip.wav")
    return ["predict", "stub", "--audio", audio, "--work", env.work, "--experiments", env.experiments,
            "--workers", "0"]


def build_kernel_args(env):
    return ["build-kernel", "--experiment", "stub", "--work", env.work, "--experiments", env.experiments,
            "--out", env.tmp / "kernel"]


@pytest.mark.parametrize("command", [tag_args, predict_args, build_kernel_args],
                         ids=["tag", "predict", "build-kernel"])
def test_a_truncated_model_is_one_sentence_naming_it(env, command):
    model = truncate(env.work / "experiments" / "stub" / "fold_1" / "model.pt")
    result = cli(*command(env))
    assert_one_error(result, model, "not a readable checkpoint", "truncated or damaged")
    assert "If you are seeing this error" not in result.stderr  # torch's advice, not the reason


def write_pth(folder, save):
    """``folder/fold_0/model-001-0.5.pth`` written by ``save(path)``."""
    path = folder / "fold_0" / "model-001-0.5.pth"
    path.parent.mkdir(parents=True)
    save(path)
    return path


NOT_ARGUS = {
    "a tensor": (lambda path: torch.save(torch.zeros(3), path), "found a Tensor"),
    "text": (lambda path: path.write_text("hello"), "not a readable argus checkpoint .not a file torch.save wrote"),
    "kwargs not a table": (lambda path: torch.save({"params": {"nn_module": ("AuxSkipAttention", 5)},
                                                    "nn_state_dict": {}}, path), "'params', 'nn_state_dict'"),
    "weights not a table": (lambda path: torch.save({"params": {"nn_module": ("AuxSkipAttention", {})},
                                                     "nn_state_dict": [1]}, path), "not an argus checkpoint"),
    "truncated": (lambda path: (torch.save({"params": {"nn_module": ("AuxSkipAttention", {})},
                                            "nn_state_dict": {"w": torch.zeros(20000)}}, path), truncate(path)),
                  "truncated or damaged"),
}


@pytest.mark.parametrize("case", NOT_ARGUS, ids=list(NOT_ARGUS))
def test_import_argus_of_a_file_that_is_not_an_argus_checkpoint_names_it(tmp_path, case):
    save, message = NOT_ARGUS[case]
    path = write_pth(tmp_path / "src", save)
    with pytest.raises(ArgusImportError, match=message) as error:
        import_argus(tmp_path / "src", "x", tmp_path / "work")
    assert str(path) in str(error.value)
    assert_one_error(cli("import-argus", tmp_path / "src", "--name", "x", "--work", tmp_path / "work"), path)
    assert not (tmp_path / "work" / "experiments" / "x").exists()


def test_import_argus_of_a_file_instead_of_its_folder_says_so(tmp_path):
    path = write_pth(tmp_path / "src", lambda path: torch.save(torch.zeros(3), path))
    with pytest.raises(ArgusImportError, match="is a file; give the folder that holds fold_<k>/"):
        import_argus(path, "x", tmp_path / "work")


# ----------------------------------------------------------------------------- corrections

REFERENCE = (REPO.parent / "shared" / "reference").resolve()
if not REFERENCE.is_dir():  # a worktree beside the main checkout: ../shared is one level higher
    REFERENCE = Path("/work/shared/reference")
FRAME = pd.DataFrame({"fname": ["03c79a1d.wav", "0a1b2c3d.wav", "ffffffff.wav"],
                      "labels": [("Bark",), ("Purr",), ("Meow",)]})


def test_corrections_naming_clips_the_dataset_lacks_are_refused_by_name(tmp_path):
    path = tmp_path / "fixes.json"
    path.write_text(json.dumps({"03c79a1d": "remove", "0a1b2c3d.wav": "Bark", **{f"x{i}.wav": "Meow" for i in range(6)}}))
    corrections = load_corrections(path, FSD2019_CLASSES)
    with pytest.raises(DatasetError) as error:
        apply_corrections(FRAME, corrections)
    message = str(error.value)
    assert message.startswith(f"{path} names 7 clip(s) that are not among the 3 clips it applies to: ")
    assert "'03c79a1d' (meant '03c79a1d.wav'?)" in message
    assert message.endswith("'x0.wav', 'x1.wav', 'x2.wav', 'x3.wav' and 2 more; name each clip with its extension")
    # a sample of the clips, knowingly: the named ones are corrected, the others skipped
    fixed = apply_corrections(FRAME, corrections, unknown="ignore")
    assert list(fixed.fname) == list(FRAME.fname) and list(fixed.labels) == [("Bark",), ("Bark",), ("Meow",)]


def test_corrections_of_another_dataset_are_refused_and_of_a_larger_one_named_in_a_warning(tmp_path):
    path = tmp_path / "fixes.json"
    path.write_text(json.dumps({"x0.wav": "remove", "x1.wav": "Bark"}))
    with pytest.raises(DatasetError, match=r"names 2 clip\(s\) .*: 'x0.wav', 'x1.wav'; is it another dataset's file\?$"):
        apply_corrections(FRAME, load_corrections(path, FSD2019_CLASSES))
    path.write_text(json.dumps({"x0.wav": "remove", "ffffffff.wav": "remove"}))
    with pytest.warns(FreesoundWarning) as warned:
        fixed = apply_corrections(FRAME, load_corrections(path, FSD2019_CLASSES))
    assert [str(w.message) for w in warned] == [
        f"{path} names 1 clip(s) that are not among the 3 clips it applies to: 'x0.wav'; skipped: right for a sample "
        "of the dataset the file is for, a typo otherwise"]
    assert list(fixed.fname) == ["03c79a1d.wav", "0a1b2c3d.wav"]


def test_train_refuses_corrections_that_name_no_clip(env):
    fname = env.dataset.curated.fname[1]
    (env.experiments / "fixes.json").write_text(json.dumps({Path(fname).stem: "remove"}))
    (env.experiments / "fixed.toml").write_text(tiny_experiment_toml(epoch_size=16, max_epochs=1)
                                                + '\n[data]\ncorrections = "fixes.json"\n')
    result = cli("train", "fixed", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments,
                 "--device", "cpu", "--fold", "0")
    assert_one_error(result, env.experiments / "fixes.json", f"meant {fname!r}?")
    assert not (env.work / "experiments" / "fixed" / "fold_0" / "model.pt").exists()


@pytest.mark.parametrize("value,kind", [(["Bark"], 'a list (["Bark"])'), (3, "a number (3)"),
                                        ({"a": 1}, 'an object ({"a": 1})'), (None, "null (null)")])
def test_a_corrections_value_that_is_not_a_string_is_named_for_what_it_is(tmp_path, value, kind):
    path = tmp_path / "fixes.json"
    path.write_text(json.dumps({"a.wav": "Bark", "b.wav": value}))
    with pytest.raises(DatasetError) as error:
        load_corrections(path, FSD2019_CLASSES)
    assert str(error.value) == (f"{path}, entry 'b.wav': {kind}; expected a string, the labels comma-separated "
                                '("Bark,Meow") or "remove"')


@pytest.mark.parametrize("name,split", [("corrections.json", "train_curated"), ("noisy_corrections.json", "train_noisy")])
def test_the_reference_corrections_name_only_clips_of_the_real_dataset(name, split):
    path, labels = REFERENCE / name, REFERENCE / "fsdkaggle2019" / f"{split}.csv"
    if not path.is_file() or not labels.is_file():
        pytest.skip(f"the reference corrections and metadata are not at {REFERENCE}")
    corrections = load_corrections(path, FSD2019_CLASSES)
    frame = read_labels_csv(labels, FSD2019_CLASSES)
    fixed = apply_corrections(frame, corrections, only_corrected=split == "train_noisy")
    removed = sum(labels is None for labels in corrections.values())
    expected = len(corrections) - removed if split == "train_noisy" else len(frame) - removed
    assert len(fixed) == expected


# ----------------------------------------------------------------------------- evaluate's class columns


def write_layout(folder, predictions, vocabulary=("a", "b", "c")):
    """``folder`` with a sample_submission.csv of ``vocabulary`` (unless None), a test_labels.csv of
    three clips and ``predictions.csv`` (class -> scores of the three clips)."""
    folder.mkdir(parents=True, exist_ok=True)
    fnames = ["x.wav", "y.wav", "z.wav"]
    if vocabulary is not None:
        pd.DataFrame(0.0, index=range(3), columns=list(vocabulary)).assign(fname=fnames)[
            ["fname", *vocabulary]].to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"fname": fnames, "labels": ["a", "b,c", "c"]}).to_csv(folder / "test_labels.csv", index=False)
    pd.DataFrame({"fname": fnames, **predictions}).to_csv(folder / "predictions.csv", index=False)
    return folder / "predictions.csv", folder / "test_labels.csv"


SCORES = {"a": [0.9, 0.1, 0.2], "b": [0.3, 0.8, 0.1], "c": [0.1, 0.7, 0.6]}


def test_evaluate_refuses_a_class_column_outside_the_vocabulary(tmp_path):
    predictions, labels = write_layout(tmp_path / "data", {**SCORES, "d": [0.95, 0.9, 0.9]})
    result = cli("evaluate", predictions, "--labels", labels)
    assert_one_error(result, predictions, "1 column(s) are not classes", "'d'", tmp_path / "data" / "sample_submission.csv")
    # the same with the vocabulary given (--data) for labels kept elsewhere
    elsewhere = tmp_path / "labels"
    elsewhere.mkdir()
    (elsewhere / "test_labels.csv").write_bytes(labels.read_bytes())
    assert_one_error(cli("evaluate", predictions, "--labels", elsewhere / "test_labels.csv", "--data",
                         tmp_path / "data"), predictions, "'d'")


def test_evaluate_names_a_missing_class_column_as_missing_from_the_predictions(tmp_path):
    predictions, labels = write_layout(tmp_path / "data", {"a": SCORES["a"], "b": SCORES["b"]})
    assert_one_error(cli("evaluate", predictions, "--labels", labels),
                     f"{predictions} has no column for 1 of the 3 classes", "'c'")
    # without a vocabulary: the labelled class that has no column, and a clip labelled with it
    predictions, labels = write_layout(tmp_path / "bare", {"a": SCORES["a"], "b": SCORES["b"]}, vocabulary=None)
    assert_one_error(cli("evaluate", predictions, "--labels", labels),
                     f"{predictions} has no column for 1 class(es) that {labels} labels clips with", "'c' (e.g. y.wav)")


def test_evaluate_matches_columns_by_name_and_warns_of_an_unlabelled_column_without_a_vocabulary(tmp_path):
    predictions, labels = write_layout(tmp_path / "data", SCORES)
    scores = cli("evaluate", predictions, "--labels", labels)
    assert scores.exit_code == 0 and scores.stderr == ""
    reordered, labels = write_layout(tmp_path / "reordered", {name: SCORES[name] for name in ("c", "a", "b")})
    assert cli("evaluate", reordered, "--labels", labels).stdout == scores.stdout.replace(str(predictions.name),
                                                                                            reordered.name)
    predictions, labels = write_layout(tmp_path / "bare", {**SCORES, "d": [0.95, 0.9, 0.9]}, vocabulary=None)
    result = cli("evaluate", predictions, "--labels", labels)
    assert result.exit_code == 0
    assert result.stderr.startswith(f"warning: {predictions}: no clip of {labels} is labelled with 1 of its class "
                                    "columns, ranked with the others all the same: 'd'; give the dataset (--data)")


# ----------------------------------------------------------------------------- predict --audio row names


def test_predict_audio_names_rows_by_their_path_under_the_folder(env):
    audio = env.tmp / "audio"
    for sub in ("a", "b", "c"):
        (audio / sub).mkdir(parents=True)
    write_clip(audio / "a" / "x.wav", seconds=1.0)
    write_clip(audio / "b" / "x.wav", seconds=3.0)
    write_clip(audio / "y.wav")
    (audio / "c" / "x.wav").write_bytes(b"\x00" * 100)
    out = env.tmp / "out.csv"
    result = cli("predict", "stub", "--audio", audio, "--work", env.work, "--experiments", env.experiments,
                 "--out", out, "--workers", "0")
    assert result.exit_code == 1 and "failed: c/x.wav: " in result.stderr
    frame = pd.read_csv(out).set_index("fname")
    assert list(frame.index) == ["a/x.wav", "b/x.wav", "y.wav"]
    assert not frame.loc["a/x.wav"].equals(frame.loc["b/x.wav"])  # two clips, not one twice
    assert pd.read_csv(env.tmp / "out.errors.csv").fname.tolist() == ["c/x.wav"]


@pytest.mark.parametrize("mode", [[], ["--no-oof"], ["--windows", "5"]], ids=["clips", "clips-no-oof", "windows"])
def test_predict_of_a_dataset_without_test_clips_says_to_pass_the_audio_folder(env, mode):
    # A prepared BirdCLEF folder: its test soundscapes are not part of the layout, so
    # sample_submission.csv has a header and no row; this used to write an empty CSV and exit 0.
    data = env.tmp / "prepared"
    data.mkdir()
    for name in ("train_curated.csv", "train_noisy.csv"):
        shutil.copy(env.csvs / name, data / name)
    pd.read_csv(env.csvs / "sample_submission.csv").head(0).to_csv(data / "sample_submission.csv", index=False)
    out = env.tmp / "out.csv"
    result = cli("predict", "stub", "--data", data, "--work", env.work, "--experiments", env.experiments,
                 "--out", out, "--workers", "0", *mode)
    assert_one_error(result, data / "sample_submission.csv", "lists no test clips", "--audio", "test_soundscapes/")
    assert not out.exists()


# ----------------------------------------------------------------------------- TOML encodings


def test_a_utf16_experiment_is_one_sentence_saying_to_save_it_as_utf8(env):
    for encoding in ("utf-16", "utf-16-le"):  # with a byte-order mark (Notepad's "Unicode") and without
        (env.experiments / "wide.toml").write_text("[train]\nlr = 0.001\n", encoding=encoding)
        result = cli("train", "wide", "--data", env.dataset.root, "--work", env.work, "--experiments",
                     env.experiments)
        assert_one_error(result, env.experiments / "wide.toml", "UTF-16 text; TOML files are UTF-8, save it as UTF-8")
    (env.experiments / "latin.toml").write_bytes("# réglages\n[train]\nlr = 0.001\n".encode("latin-1"))
    assert_one_error(cli("train", "latin", "--data", env.dataset.root, "--work", env.work, "--experiments",
                         env.experiments), env.experiments / "latin.toml", "not UTF-8 text (byte 3 is 0xe9)")


def test_a_utf8_experiment_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "bom.toml").write_text("# réglages\n[train]\nlr = 0.002\n", encoding="utf-8-sig")
    assert (tmp_path / "bom.toml").read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_experiment("bom", tmp_path).train.lr == 0.002


def test_one_unreadable_file_does_not_break_the_experiments_listing(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "wide.toml").write_text("[train]\nlr = 0.001\n", encoding="utf-16")
    (folder / "mine.toml").write_text("[train]\nlr = 0.001\n")
    result = cli("experiments", "--experiments", folder)
    assert result.exit_code == 0, result.output
    words = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"mine experiment experiments folder: {folder / 'mine.toml'}" in words
    assert (f"wide unreadable experiments folder: {folder / 'wide.toml'} (UTF-16 text; TOML files are UTF-8, "
            "save it as UTF-8)") in words


# ----------------------------------------------------------------------------- prepare


def test_prepare_csv_with_absolute_and_relative_paths_and_a_relative_src(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("dog", "cat"):
        (tmp_path / "src" / folder).mkdir(parents=True)
        write_clip(tmp_path / "src" / folder / "1.wav", seconds=0.2)
    write_clip(tmp_path / "src" / "dog" / "2.wav", seconds=0.2)
    (tmp_path / "src" / "meta.csv").write_text(
        f"fname,label\n{tmp_path / 'src' / 'dog' / '1.wav'},dog\ncat/1.wav,cat\n{tmp_path / 'src' / 'dog' / '2.wav'},dog\n")
    result = cli("prepare", "src", "out", "--csv", "meta.csv")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "out" / "train_curated.csv").to_dict("list") == {
        "fname": ["dog__1.wav", "cat__1.wav", "2.wav"], "labels": ["dog", "cat", "dog"]}
    assert "renamed: src/cat/1.wav -> cat__1.wav" in result.stdout


def test_prepare_refuses_an_output_inside_the_collection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src" / "dog").mkdir(parents=True)
    write_clip(tmp_path / "src" / "dog" / "1.wav", seconds=0.2)
    for out in ("src/prepared", "./src/dog/../prepared", tmp_path / "src"):
        assert_one_error(cli("prepare", "src", out), f"{Path(out)} is inside the collection src",
                         "name a folder outside it")
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["dog"]


# ----------------------------------------------------------------------------- search storages


def bad_storages(tmp_path):
    """(URL, what the sentence says) for each kind of storage that cannot be opened."""
    (tmp_path / "notes.txt").write_text("not a database")
    sqlite3.connect(tmp_path / "empty.db").close()
    return [
        (f"sqlite:///{tmp_path}/missing/study.db", f"folder {tmp_path / 'missing'} does not exist"),
        (f"sqlite:///file:{tmp_path}/empty.db?mode=ro&uri=true", "cannot open the study (attempt to write a readonly "
                                                                  "database)"),
        ("study.db", "'study.db' is not a database URL; write e.g. sqlite:///path/study.db"),
        ("postgresql://me:secret@localhost/db", "postgresql://me:***@localhost/db: the postgresql driver"),
        ("https://example.com/study", "'https' is not a database SQLAlchemy knows"),
        (f"sqlite:///{tmp_path}/notes.txt", f"{tmp_path / 'notes.txt'} is not an SQLite database file"),
    ]


def test_every_bad_search_storage_is_one_sentence(tmp_path):
    for url, message in bad_storages(tmp_path):
        with pytest.raises(FreesoundError) as error:
            open_study("s", url)
        assert message in str(error.value) and "\n" not in str(error.value), (url, str(error.value))
        assert "secret" not in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_for_the_study_is_named(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    with pytest.raises(FreesoundError, match=f"folder {tmp_path / 'ro'} is read-only"):
        open_study("s", f"sqlite:///{tmp_path}/ro/study.db")


def test_search_command_names_a_bad_storage(env):
    (env.tmp / "space.toml").write_text('"train.lr" = { loguniform = [1e-4, 1e-2] }\n')
    result = cli("search", "stub", "--data", env.dataset.root, "--work", env.work, "--experiments", env.experiments,
                 "--trials", "1", "--device", "cpu", "--space", env.tmp / "space.toml",
                 "--storage", f"sqlite:///{env.tmp}/missing/study.db")
    assert_one_error(result, f"folder {env.tmp / 'missing'} does not exist")


RACER = """
import sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from freesound.tools.search import open_study
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.0005)
open_study("s", sys.argv[3])
print("opened")
"""


@pytest.mark.slow
def test_workers_creating_one_fresh_study_at_the_same_moment_all_open_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        url = f"sqlite:///{folder / 'study.db'}"
        workers = [subprocess.Popen([sys.executable, "-c", RACER, folder / f"ready{i}", folder / "go", url], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
        while not all((folder / f"ready{i}").exists() for i in range(2)):
            time.sleep(0.01)
        (folder / "go").touch()
        outputs = [worker.communicate(timeout=120)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], (attempt, outputs)
        assert all(output.strip().endswith("opened") for output in outputs)
        assert len(optuna.get_all_study_summaries(url)) == 1

