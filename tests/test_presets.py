"""Built-in experiments: the method's experiment and ensemble files ship with the package, and a
name is looked up in the user's experiments folder first, then among the presets."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from freesound.cli import main
from freesound.config import (ConfigError, available_experiments, find_experiment_file, load_ensemble,
                              load_experiment, presets_dir)

REPO = Path(__file__).resolve().parents[1]


def test_in_a_checkout_the_presets_are_the_repository_experiments_folder():
    assert presets_dir() == REPO / "experiments"
    # Every file there is a preset, whatever its name (setup.py ships the folder whole).
    names = {entry.name for entry in available_experiments(REPO / "experiments")}
    assert names == {path.stem for path in (REPO / "experiments").glob("*.toml")}
    assert {"default", "small", "small_lq", "ensemble"} <= names


def test_a_preset_loads_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    small = load_experiment("small")
    assert find_experiment_file("small") == presets_dir() / "small.toml"
    assert small.name == "small" and small.model.params["base_size"] == 4
    assert small == load_experiment(REPO / "experiments" / "small.toml")
    ensemble = load_ensemble("ensemble")
    assert ensemble.experiments == ("small", "small_lq") and [s.name for s in ensemble.stackers] == ["fcnet"]


def test_the_users_folder_comes_first(tmp_path):
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "small.toml").write_text("[train]\nlr = 0.5\n")
    (mine / "mine.toml").write_text('experiments = ["small", "default"]\n')
    assert load_experiment("small", mine).train.lr == 0.5
    assert load_experiment("small_lq", mine).loss.noisy["name"] == "lq"  # not in the folder: the preset

    entries = [(e.name, e.kind, e.source, e.overridden) for e in available_experiments(mine)]
    assert ("small", "experiment", "experiments folder", False) in entries
    assert ("small", "experiment", "preset", True) in entries
    assert ("mine", "ensemble", "experiments folder", False) in entries
    assert ("default", "experiment", "preset", False) in entries
    assert entries.index(("small", "experiment", "experiments folder", False)) < entries.index(
        ("small", "experiment", "preset", True))


def test_an_unknown_name_lists_the_folder_and_the_presets(tmp_path):
    (tmp_path / "mine.toml").write_text("[train]\nlr = 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown experiment 'nope'; known in .*: mine; presets: birdclef_sed, default, .*small"):
        load_experiment("nope", tmp_path)


def test_the_experiments_command_lists_names_and_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "small.toml").write_text("[train]\nlr = 0.5\n")
    result = CliRunner().invoke(main, ["experiments"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "kind", "from"]
    # Columns are as wide as the longest name: compare with the padding collapsed.
    words = [" ".join(line.split()) for line in lines]
    assert f"ensemble ensemble preset: {presets_dir() / 'ensemble.toml'}" in words
    assert "small experiment experiments folder: experiments/small.toml" in words
    assert f"small experiment preset: {presets_dir() / 'small.toml'} (overridden by the experiments folder)" in words
    width = max(len(name) for name in {line.split()[0] for line in lines[1:-1]})
    assert lines[1].index(lines[1].split()[1]) == width + 2
    assert lines[-1] == f"experiments folder: {tmp_path / 'experiments'}; presets: {presets_dir()}"


def test_a_broken_file_in_the_folder_is_named(tmp_path):
    (tmp_path / "broken.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_experiment("broken", tmp_path)
    # the listing goes on past it, naming it as unreadable (issue #33)
    entry = next(e for e in available_experiments(tmp_path) if e.name == "broken")
    assert entry.kind == "unreadable" and entry.problem.startswith("not valid TOML")


SHIPPED_EXPERIMENTS = sorted(e.name for e in available_experiments(REPO / "experiments") if e.kind == "experiment")


@pytest.mark.parametrize("name", SHIPPED_EXPERIMENTS)
def test_every_shipped_experiment_builds_its_model_and_losses(name):
    """The timm ones need timm (``pip install 'freesound[timm]'``): skipped without it."""
    from freesound.training.fold_parts import check_experiment

    experiment = load_experiment(name, REPO / "experiments")
    if experiment.model.name == "timm":
        pytest.importorskip("timm")
    check_experiment(experiment, 80)
