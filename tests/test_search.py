"""Hyperparameter search: the space parser and its errors, deterministic sampling, resuming an
interrupted search, the best config file, a stacker search and the CLI."""

import json
import re
import tomllib

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import freesound.tools.search as search_module
from conftest import tiny_ensemble_toml, tiny_experiment_toml
from freesound.cli import main
from freesound.config import Experiment, experiment_from_dict, load_ensemble, load_experiment
from freesound.data.dataset import probability_frame
from freesound.data.folds import read_folds
from freesound.errors import FreesoundError
from freesound.paths import predictions_dir
from freesound.tools.search import (
    DEFAULT_EXPERIMENT_SPACE,
    DEFAULT_STACKER_SPACE,
    ExperimentTarget,
    SearchSpaceError,
    StackerTarget,
    TrialSetup,
    load_space,
    load_target,
    parse_space,
    run_search,
)
from freesound.training.oof import OOFTiles, save_oof_tiles

SPACE = """
"train.lr" = { loguniform = [1e-3, 1e-2] }
[mixers]
prob = { uniform = [0.2, 0.9] }
[model.params]
dropout = { choice = [0.1, 0.3] }
"""

ENSEMBLE = tiny_ensemble_toml(["fake_a", "fake_b"])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def experiments(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "tiny.toml").write_text(tiny_experiment_toml(extra_params=", dropout = 0.2"))
    (folder / "ens.toml").write_text(ENSEMBLE)
    (folder / "space.toml").write_text(SPACE)
    return folder


def target(experiments, name="tiny"):
    return load_target(name, experiments)


def test_space_forms_parse_to_the_same_dotted_keys(experiments):
    space = parse_space(tomllib.loads(SPACE), target(experiments))
    assert list(space.params) == ["train.lr", "mixers.prob", "model.params.dropout"]
    assert space.params["train.lr"].kind == "loguniform" and space.params["train.lr"].args == (1e-3, 1e-2)
    assert space.params["model.params.dropout"].args == (0.1, 0.3)
    fixed = parse_space({"train": {"max_epochs": 2}, "loss.noisy.beta": {"uniform": [0.5, 0.9]}}, target(experiments))
    assert fixed.params["train.max_epochs"].kind == "fixed"
    assert fixed.sample(0, 0)["train.max_epochs"] == 2


def test_default_spaces_are_valid_and_in_the_help(experiments):
    experiment_space = load_space(None, target(experiments))
    stacker_space = load_space(None, target(experiments, "ens"))
    assert isinstance(target(experiments, "ens"), StackerTarget)
    assert list(experiment_space.params) == list(tomllib.loads(DEFAULT_EXPERIMENT_SPACE))
    assert list(stacker_space.params) == list(tomllib.loads(DEFAULT_STACKER_SPACE))
    help_text = " ".join(CliRunner().invoke(main, ["search", "--help"]).output.split())
    for line in (DEFAULT_EXPERIMENT_SPACE + DEFAULT_STACKER_SPACE).splitlines():  # '"k" = { kind = [..] }'
        key, kind, values = re.fullmatch(r'"?([\w.]+)"? = \{ (\w+) = (\[.*\]) \}', line).groups()
        assert f"{key} {kind} {values}" in help_text


@pytest.mark.parametrize("space, message", [
    ({"trian": {"lr": {"uniform": [0.1, 0.2]}}}, r"'trian'.*unknown key\(s\) trian; valid keys are audio, data"),
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, r"'train.lrr'.*unknown key\(s\) lrr; valid keys are amp, batch_size"),
    ({"train.lr.x": {"uniform": [0.1, 0.2]}}, r"'train.lr.x'.*train.lr is a setting, not a table"),
    ({"train.lr": {"normal": [0.1, 0.2]}}, r"'train.lr': unknown distribution normal; use one of uniform"),
    ({"train.lr": {"uniform": [0.1, 0.2], "choice": [1]}}, r"'train.lr': give exactly one distribution"),
    ({"train.lr": {"uniform": [0.2, 0.1]}}, r"'train.lr': bad bounds \[0.2, 0.1\] for uniform"),
    ({"train.lr": {"uniform": [0.1]}}, r"'train.lr': uniform needs bounds \[low, high\]"),
    ({"train.lr": {"loguniform": [0, 0.1]}}, r"'train.lr': bad bounds .* low must be above 0"),
    ({"train.batch_size": {"int": [4.5, 8]}}, r"'train.batch_size': int needs integer bounds"),
    ({"train.batch_size": {"uniform": [4, 8]}}, r"'train.batch_size' = 4.0: .*expected int"),
    ({"mixers.prob": {"choice": []}}, r"'mixers.prob': choice needs a non-empty list"),
    ({"model.params.depth": {"int": [1, 3]}},
     r"'model.params.depth': experiment 'tiny': simple_cnn: unknown parameter\(s\) depth; it accepts"),
    ({"loss.noisy.name": {"choice": ["lsoft", "nope"]}}, r"'loss.noisy.name' = 'nope': experiment 'tiny': .*nope"),
    ({"name": "x"}, r"'name' is set by the search"),
    ({}, r"no settings to search"),
])
def test_bad_spaces_name_the_key(experiments, space, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse_space(space, target(experiments), "space.toml")


def test_bad_stacker_space_lists_the_stacker_keys(experiments, tmp_path):
    with pytest.raises(SearchSpaceError, match=r"'lrr'.*valid keys are base_size, batch_size"):
        parse_space({"lrr": {"uniform": [0.1, 0.2]}}, target(experiments, "ens"))
    with pytest.raises(SearchSpaceError, match="not found"):
        load_space(tmp_path / "nope.toml", target(experiments))
    (tmp_path / "broken.toml").write_text("lr = {")
    with pytest.raises(FreesoundError, match="not valid TOML"):
        load_space(tmp_path / "broken.toml", target(experiments))


@pytest.mark.parametrize("key,table,expected", [
    ("model.params", {"base_size": 32}, {"base_size": 32, "dropout": 0.4, "ratio": 16, "kernel_size": 7,
                                         "last_filters": 8, "last_fc": 4}),
    ("loss.curated", {}, {"name": "bce"}),
    ("loss.noisy", {"beta": 0.5}, {"name": "lsoft", "beta": 0.5}),
])
def test_a_table_means_the_same_in_a_search_as_in_an_experiment_file(key, table, expected):
    """One rule (``freesound.config.merge_table``): a trial's table merges onto the searched
    experiment's, as a file's merges onto the method's defaults."""
    section, name = key.split(".")
    from_file = experiment_from_dict({section: {name: table}})
    from_search = ExperimentTarget(Experiment()).config({key: table}, "default")
    assert getattr(getattr(from_file, section), name) == getattr(getattr(from_search, section), name) == expected
    assert from_search == from_file


def test_a_searched_table_merges_onto_the_searched_experiment_not_the_defaults():
    base = experiment_from_dict({"loss": {"noisy": {"name": "lq", "q": 0.5}}, "model": {"params": {"dropout": 0.1}}})
    trial = ExperimentTarget(base).config({"loss.noisy": {"q": 0.3}, "model.params": {"base_size": 8}}, "t")
    assert trial.loss.noisy == {"name": "lq", "q": 0.3}
    assert trial.model.params == dict(Experiment().model.params, base_size=8, dropout=0.1)


def test_sampling_is_deterministic_per_seed_and_trial(experiments):
    space = parse_space({**tomllib.loads(SPACE), "model.params.base_size": {"int": [2, 6]}}, target(experiments))
    draws = [space.sample(3, i) for i in range(30)]
    assert draws == [space.sample(3, i) for i in range(30)]
    assert draws != [space.sample(4, i) for i in range(30)]
    assert len({d["train.lr"] for d in draws}) == 30
    for d in draws:
        assert 1e-3 <= d["train.lr"] <= 1e-2 and 0.2 <= d["mixers.prob"] <= 0.9
        assert d["model.params.dropout"] in (0.1, 0.3)
        assert isinstance(d["model.params.base_size"], int) and 2 <= d["model.params.base_size"] <= 6
    assert {d["model.params.base_size"] for d in draws} == {2, 3, 4, 5, 6}
    # Log-uniform: about half the draws below the geometric middle of the range.
    assert 8 <= sum(d["train.lr"] < np.sqrt(1e-3 * 1e-2) for d in draws) <= 22


def test_interrupted_search_resumes_without_repeating_trials(tiny_work, experiments, monkeypatch):
    dataset, work = tiny_work
    trained = []
    real_train_fold = search_module.train_fold

    def train_fold(experiment, *args, **kwargs):
        if experiment.name == "tiny-trial1" and not trained.count("interrupted"):
            trained.append("interrupted")
            raise KeyboardInterrupt  # killed before trial 1 finished
        trained.append(experiment.name)
        return real_train_fold(experiment, *args, **kwargs)

    monkeypatch.setattr(search_module, "train_fold", train_fold)
    tiny = target(experiments)
    space = load_space(experiments / "space.toml", tiny)
    setup = TrialSetup.create(dataset, work, [0], device="cpu")
    options = dict(trials=2, seed=5, experiments_dir=experiments, log=lambda *_: None, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny, space, setup, **options)
    csv = work / "search" / "tiny" / "trials.csv"
    assert list(pd.read_csv(csv).trial) == [0]
    first_model = work / "experiments" / "tiny-trial0" / "fold_0" / "model.pt"
    stamp = first_model.stat().st_mtime_ns

    result = run_search(tiny, space, setup, **options)
    assert trained == ["tiny-trial0", "interrupted", "tiny-trial1"]
    assert first_model.stat().st_mtime_ns == stamp
    trials = pd.read_csv(csv)
    assert list(trials.trial) == [0, 1] and list(trials.name) == ["tiny-trial0", "tiny-trial1"]
    assert list(trials.columns) == ["trial", "name", "lwlrap", "seconds", "train.lr", "mixers.prob",
                                    "model.params.dropout"]
    for row in trials.itertuples():
        assert getattr(row, "_5") == pytest.approx(space.sample(5, row.trial)["train.lr"])
    assert not (work / "experiments" / "tiny-trial0" / "fold_1").exists()  # only --fold 0 trains
    assert (work / "search" / "tiny" / "progress.png").stat().st_size > 1000

    # The best trial's config: loads as an experiment and holds the best trial's settings.
    best_row = trials.loc[trials.lwlrap.idxmax()]
    assert result.best_trial == best_row.trial and result.best_score == pytest.approx(best_row.lwlrap)
    best = load_experiment(result.paths["best"])
    assert result.paths["best"] == experiments / "tiny-best.toml" and best.name == "tiny-best"
    assert best.train.lr == result.best_params["train.lr"] == space.sample(5, result.best_trial)["train.lr"]
    assert best.mixers.prob == result.best_params["mixers.prob"]
    assert best.model.params == {"base_size": 4, "dropout": result.best_params["model.params.dropout"]}
    assert best.train.epoch_size == 16  # the rest is the base experiment's

    # Asking for one more trial runs only that one; another seed is another search.
    trained.clear()
    run_search(tiny, space, setup, **{**options, "trials": 3})
    assert trained == ["tiny-trial2"] and list(pd.read_csv(csv).trial) == [0, 1, 2]
    with pytest.raises(FreesoundError, match="another seed"):
        run_search(tiny, space, setup, **{**options, "seed": 6})


def test_stacker_search_writes_a_loadable_ensemble(tiny_work, experiments):
    dataset, work = tiny_work
    folds = read_folds(work, dataset.curated.fname).set_index("fname").loc[dataset.curated.fname, "fold"].to_numpy()
    rng = np.random.default_rng(0)
    for name in ("fake_a", "fake_b"):  # OOF predictions as `freesound predict` writes them, 2 tiles a clip
        probs = rng.random((2 * len(folds), len(dataset.classes))).astype(np.float32)
        tiles = OOFTiles(dataset.curated.fname.to_numpy(dtype=str), folds, np.arange(0, 2 * len(folds) + 1, 2), probs)
        save_oof_tiles(predictions_dir(work, name) / "oof_tiles.npz", tiles)
        probability_frame(tiles.fnames, tiles.clip_means(), dataset.classes).to_csv(
            predictions_dir(work, name) / "oof.csv", index=False)
        (predictions_dir(work, name) / "oof_scores.json").write_text("{}")
    ens = target(experiments, "ens")
    space = parse_space({"lr": {"loguniform": [1e-3, 1e-2]}, "base_size": {"choice": [4, 8]}}, ens)
    setup = TrialSetup.create(dataset, work, [0, 1], device="cpu", max_epochs=1)
    result = run_search(ens, space, setup, trials=2, seed=0, out=experiments / "ens_tuned.toml",
                        log=lambda *_: None, progress=False)
    assert list(result.trials.trial) == [0, 1]
    assert (work / "experiments" / "ens-trial1" / "fold_1" / "model.pt").is_file()
    tuned = load_ensemble(experiments / "ens_tuned.toml")
    assert tuned.experiments == ("fake_a", "fake_b")
    (stacker,) = tuned.stackers
    assert stacker.name == "mlp" and stacker.lr == result.best_params["lr"]
    assert stacker.base_size == result.best_params["base_size"] and stacker.max_epochs == 2


def test_search_command(tiny_work, experiments):
    dataset, work = tiny_work
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    runner = CliRunner()
    result = runner.invoke(main, ["search", "tiny", *map(str, common), "--trials", "1", "--fold", "2",
                                  "--space", str(experiments / "space.toml"), "--name", "quick"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "best of 1 trials" in result.output and "best config ->" in result.output
    assert load_experiment(experiments / "quick-best.toml").name == "quick-best"
    settings = json.loads((work / "search" / "quick" / "search.json").read_text())
    assert settings["folds"] == [2] and settings["seed"] == 0
    (experiments / "bad.toml").write_text('"train.lrr" = { uniform = [0.1, 0.2] }\n')
    bad = runner.invoke(main, ["search", "tiny", *map(str, common), "--trials", "1", "--space",
                               str(experiments / "bad.toml")])
    assert bad.exit_code == 1 and "train.lrr" in bad.output and "Traceback" not in bad.output
    missing_fold = runner.invoke(main, ["search", "tiny", *map(str, common), "--trials", "1", "--fold", "7"])
    assert missing_fold.exit_code == 1 and "fold(s) 7" in missing_fold.output
