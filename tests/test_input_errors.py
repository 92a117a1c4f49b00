"""Issue #33, bad input that used to end in a traceback or a wrong result without a word: each case
is one ``error:`` sentence naming the file or setting (exit 1), or a named warning.

Damaged weights (a truncated ``model.pt``, a file that is no argus checkpoint), corrections that
name no clip, prediction columns outside the class vocabulary, clips of the same name in two
folders, TOML files that are not UTF-8, ``prepare`` reading its own output, repeated folds, and
``search`` storages that cannot be opened or are created by two workers at once.
"""

import os

import pytest
import torch

from freesound.tools.argus_import import ArgusImportError, import_argus
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
    assert_one_error(cli(*command(env)), model, "not a readable checkpoint", "truncated or damaged")


def write_pth(folder, save):
    """``folder/fold_0/model-001-0.5.pth`` written by ``save(path)``."""
    path = folder / "fold_0" / "model-001-0.5.pth"
    path.parent.mkdir(parents=True)
    save(path)
    return path


NOT_ARGUS = {
    "a tensor": (lambda path: torch.save(torch.zeros(3), path), "found a Tensor"),
    "text": (lambda path: path.write_text("hello"), "not a readable argus checkpoint"),
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
