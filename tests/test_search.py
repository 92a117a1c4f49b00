"""Hyperparameter search on Optuna: the space parser and its errors, the Optuna distributions,
seeding, pruning, resuming, several workers on one study, a killed worker, the best config file, a
stacker search and the CLI."""

import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

import freesound.tools.search as search_module
from conftest import REPO, fake_oof_predictions, tiny_ensemble_toml, tiny_experiment_toml
from freesound.cli import main
from freesound.config import Experiment, experiment_from_dict, load_ensemble, load_experiment
from freesound.errors import FreesoundError
from freesound.tools.search import (
    DEFAULT_EXPERIMENT_SPACE,
    DEFAULT_STACKER_SPACE,
    ExperimentTarget,
    SearchSpaceError,
    StackerTarget,
    TrialSetup,
    load_space,
    load_target,
    open_study,
    parse_space,
    run_search,
    storage_url,
)
from freesound.tools.spaces import EXAMPLE_SPACE, describe_space

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
    assert fixed.suggest(optuna.trial.FixedTrial({"loss.noisy.beta": 0.6})) == {"train.max_epochs": 2,
                                                                               "loss.noisy.beta": 0.6}


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


def test_the_helps_example_space_is_a_valid_space_for_the_small_preset():
    space = parse_space(tomllib.loads(EXAMPLE_SPACE), load_target("small", REPO / "experiments"))
    assert {key: d.kind for key, d in space.params.items()} == {
        "train.lr": "loguniform", "model.params.dropout": "uniform", "model.params.base_size": "int",
        "mixers.prob": "choice", "train.max_epochs": "fixed"}
    help_text = CliRunner().invoke(main, ["search", "--help"]).output
    for line in EXAMPLE_SPACE.splitlines():
        assert line in help_text


def test_describe_space_writes_one_line_per_entry_and_refuses_another_shape():
    assert describe_space('"a.b" = { int = [1, 3] }\nc = { choice = ["x", "y"] }\n') == [
        "a.b int [1, 3]", 'c choice ["x", "y"]']
    with pytest.raises(ValueError, match=r"not a one-line search space entry: '\[train\]'"):
        describe_space("[train]\nlr = { uniform = [0.1, 0.2] }")


@pytest.mark.parametrize("space, message", [
    ({"trian": {"lr": {"uniform": [0.1, 0.2]}}}, r"'trian'.*unknown key\(s\) trian; valid keys are audio, averaging, data"),
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, r"'train.lrr'.*unknown key\(s\) lrr; valid keys are amp, augment_on_device, batch_size"),
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


def test_distributions_become_optuna_distributions(experiments):
    space = parse_space({**tomllib.loads(SPACE), "model.params.base_size": {"int": [2, 6]},
                         "loss.noisy": {"choice": [{"name": "lq", "q": 0.5}, {"name": "lsoft", "beta": 0.7}]},
                         "train.max_epochs": 3}, target(experiments))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(12):
        trial = study.ask()
        drawn.append(space.suggest(trial))
        study.tell(trial, 0.5)
    distributions = study.trials[0].distributions
    assert distributions["train.lr"] == optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    assert distributions["mixers.prob"] == optuna.distributions.FloatDistribution(0.2, 0.9)
    assert distributions["model.params.base_size"] == optuna.distributions.IntDistribution(2, 6)
    assert distributions["model.params.dropout"] == optuna.distributions.CategoricalDistribution([0.1, 0.3])
    # Tables are not values Optuna stores: they are drawn by index and given back whole.
    assert distributions["loss.noisy"] == optuna.distributions.CategoricalDistribution([0, 1])
    assert "train.max_epochs" not in distributions and all(d["train.max_epochs"] == 3 for d in drawn)
    assert {d["loss.noisy"]["name"] for d in drawn} == {"lq", "lsoft"}
    for trial, settings in zip(study.trials, drawn):
        assert space.settings(trial.params) == settings
        assert target(experiments).config(settings, "x").loss.noisy == settings["loss.noisy"]
    with pytest.raises(SearchSpaceError, match=r"grid search needs choice or int.*train.lr, mixers.prob"):
        space.grid()


class ScoredByLr(ExperimentTarget):
    """Trains nothing: a trial's score rises over its epochs towards a peak at lr = 10^-2.5."""

    def __init__(self, experiment, epochs=3):
        super().__init__(experiment)
        self.epochs = epochs

    def prepare(self, setup, log=print):
        def run(trial_name, params, report, parent=None):
            closeness = 1.0 - abs(math.log10(params["train.lr"]) + 2.5)
            for epoch in range(self.epochs):
                report(epoch, closeness * (epoch + 1) / self.epochs)
            return closeness

        return run


def test_the_same_seed_gives_the_same_first_trial(tiny_work, experiments, tmp_path):
    dataset, work = tiny_work
    space = parse_space({"train.lr": {"loguniform": [1e-4, 1e-1]}}, target(experiments))
    scored = ScoredByLr(load_experiment(experiments / "tiny.toml"))
    setup = TrialSetup.create(dataset, work, [0])

    def trials(seed, name):
        result = run_search(scored, space, setup, trials=2, seed=seed, name=name, out=tmp_path / f"{name}.toml",
                            log=lambda *_: None, progress=False)
        return list(result.trials["train.lr"])

    first, again, other = trials(3, "a"), trials(3, "b"), trials(4, "c")
    assert first == again
    assert other[0] != first[0]
    assert first[0] != first[1]  # each trial draws with its own seed


def test_grid_search_visits_every_value(tiny_work, experiments, tmp_path):
    dataset, work = tiny_work
    scored = ScoredByLr(load_experiment(experiments / "tiny.toml"))
    space = parse_space({"train.lr": {"choice": [1e-4, 1e-3, 3e-3, 1e-2]}}, target(experiments))
    grid = run_search(scored, space, TrialSetup.create(dataset, work, [0]), trials=4, sampler="grid", name="grid",
                      out=tmp_path / "grid.toml", log=lambda *_: None, progress=False, pruner=None)
    assert sorted(grid.trials["train.lr"]) == [1e-4, 1e-3, 3e-3, 1e-2]
    assert grid.best_params == {"train.lr": 3e-3} and list(grid.trials.epochs) == [3, 3, 3, 3]


def test_a_bad_setting_is_pruned_before_its_last_epoch(tiny_work, experiments):
    dataset, work = tiny_work
    (experiments / "learns.toml").write_text(tiny_experiment_toml(max_epochs=4, epoch_size=48, lr=1e-2))
    learns = target(experiments, "learns")
    space = parse_space({"train.lr": {"choice": [1e-2, 1e-9]}}, learns)
    setup = TrialSetup.create(dataset, work, [0])
    study = open_study("learns", storage_url(work, "learns"))
    study.enqueue_trial({"train.lr": 1e-2})  # a setting that learns, then one that cannot
    study.enqueue_trial({"train.lr": 1e-9})
    result = run_search(learns, space, setup, trials=2, experiments_dir=experiments, log=lambda *_: None,
                        progress=False, pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))
    trials = result.trials.set_index("trial")
    assert list(trials.state) == ["COMPLETE", "PRUNED"]
    assert list(trials.epochs) == [4, 2]  # pruned after epoch 2, where the check starts
    assert np.isnan(trials.lwlrap[1]) and result.best_trial == 0
    assert (work / "experiments" / "learns-trial0" / "fold_0" / "model.pt").is_file()
    assert not (work / "experiments" / "learns-trial1").exists()  # never taken for a trained experiment
    assert not (work / "train_state" / "learns-trial1").exists()


def test_interrupted_search_resumes_without_repeating_trials(tiny_work, experiments, monkeypatch):
    dataset, work = tiny_work
    trained = []
    real_train_folds = search_module.train_folds

    def train_folds(experiment, *args, **kwargs):
        if experiment.name == "tiny-trial1" and not trained.count("interrupted"):
            trained.append("interrupted")
            real_train_folds(experiment, *args, **kwargs)  # its weights exist, then Ctrl-C
            raise KeyboardInterrupt
        trained.append(experiment.name)
        return real_train_folds(experiment, *args, **kwargs)

    monkeypatch.setattr(search_module, "train_folds", train_folds)
    tiny = target(experiments)
    space = load_space(experiments / "space.toml", tiny)
    setup = TrialSetup.create(dataset, work, [0], device="cpu")
    options = dict(trials=2, seed=5, experiments_dir=experiments, log=lambda *_: None, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny, space, setup, **options)
    csv = work / "search" / "tiny" / "trials.csv"
    assert list(pd.read_csv(csv).trial) == [0]
    assert not (work / "experiments" / "tiny-trial1").exists()  # the interrupted trial's weights are gone
    first_model = work / "experiments" / "tiny-trial0" / "fold_0" / "model.pt"
    stamp = first_model.stat().st_mtime_ns

    result = run_search(tiny, space, setup, **options)
    assert trained == ["tiny-trial0", "interrupted", "tiny-trial2"]
    assert first_model.stat().st_mtime_ns == stamp
    trials = pd.read_csv(csv)
    assert list(trials.trial) == [0, 1, 2] and list(trials.state) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert list(trials.columns) == ["trial", "name", "state", "lwlrap", "epochs", "seconds", "train.lr",
                                    "mixers.prob", "model.params.dropout"]
    assert not (work / "experiments" / "tiny-trial0" / "fold_1").exists()  # only --fold 0 trains
    assert (work / "search" / "tiny" / "progress.png").stat().st_size > 1000

    # The best trial's config: loads as an experiment and holds the best trial's settings.
    complete = trials[trials.state == "COMPLETE"]
    best_row = complete.loc[complete.lwlrap.idxmax()]
    assert result.best_trial == best_row.trial and result.best_score == pytest.approx(best_row.lwlrap)
    best = load_experiment(result.paths["best"])
    assert result.paths["best"] == experiments / "tiny-best.toml" and best.name == "tiny-best"
    assert best.train.lr == result.best_params["train.lr"] == pytest.approx(best_row["train.lr"])
    assert best.mixers.prob == result.best_params["mixers.prob"]
    assert best.model.params == {"base_size": 4, "dropout": result.best_params["model.params.dropout"]}
    assert best.train.epoch_size == 16  # the rest is the base experiment's

    # Asking for one more trial runs only that one; another seed is another search.
    trained.clear()
    run_search(tiny, space, setup, **{**options, "trials": 3})
    assert trained == ["tiny-trial3"] and list(pd.read_csv(csv).state).count("COMPLETE") == 3
    with pytest.raises(FreesoundError, match="another seed"):
        run_search(tiny, space, setup, **{**options, "seed": 6})


def search_command(dataset, work, experiments, *extra):
    return [sys.executable, "-m", "freesound", "search", "tiny", "--data", str(dataset.root), "--work", str(work),
            "--experiments", str(experiments), "--device", "cpu", "--space", str(experiments / "space.toml"),
            "--fold", "0", *extra]


@pytest.mark.slow
def test_two_workers_share_one_study_without_repeating_a_trial(tiny_work, experiments):
    dataset, work = tiny_work
    open_study("tiny", storage_url(work, "tiny"))  # as the first worker would
    command = search_command(dataset, work, experiments, "--trials", "6")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = pd.read_csv(work / "search" / "tiny" / "trials.csv")
    complete = trials[trials.state == "COMPLETE"]
    # Two workers starting a trial at the same moment may run one more than asked, never one twice.
    assert 6 <= len(complete) <= 7 and complete.name.is_unique
    for name in complete.name:
        assert (work / "experiments" / name / "fold_0" / "model.pt").is_file()
    ran = [set(re.findall(r"^trial (\d+):", output, re.M)) for output in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1], outputs  # both worked, on different trials


WORKER = """
import sys, time
sys.path[:0] = [{tests!r}]
from test_search import ScoredByLr, TrialSetup, load_experiment, parse_space, run_search, target
from freesound.data.dataset import load_dataset

class Slow(ScoredByLr):
    def prepare(self, setup, log=print):
        run = super().prepare(setup, log)
        def slow(name, params, report, parent=None):
            print("started", name, flush=True)
            time.sleep(60)
            return run(name, params, report, parent)
        return slow

experiments = {experiments!r}
space = parse_space({{"train.lr": {{"loguniform": [1e-4, 1e-1]}}}}, target(experiments))
setup = TrialSetup.create(load_dataset({data!r}), {work!r}, [0])
run_search(Slow(load_experiment(experiments + "/tiny.toml")), space, setup, trials=1, heartbeat=(1, 2),
           log=lambda *_: None, progress=False)
"""


def test_a_killed_worker_leaves_a_usable_study_and_its_trial_is_retried(tiny_work, experiments):
    dataset, work = tiny_work
    script = WORKER.format(tests=str(REPO / "tests"), experiments=str(experiments), data=str(dataset.root),
                           work=str(work))
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "started tiny-trial0"
    os.kill(worker.pid, signal.SIGKILL)  # mid-trial: no chance to tell the study
    worker.wait()
    time.sleep(3)  # past the grace period of its last heartbeat

    scored = ScoredByLr(load_experiment(experiments / "tiny.toml"))
    space = parse_space({"train.lr": {"loguniform": [1e-4, 1e-1]}}, target(experiments))
    result = run_search(scored, space, TrialSetup.create(dataset, work, [0]), trials=1, heartbeat=(1, 2),
                        experiments_dir=experiments, log=lambda *_: None, progress=False)
    trials = result.trials
    assert list(trials.state) == ["FAIL", "COMPLETE"]
    assert trials["train.lr"][1] == trials["train.lr"][0]  # retried once with the same settings
    assert result.best_trial == 1


def test_stacker_search_writes_a_loadable_ensemble(tiny_work, experiments):
    dataset, work = tiny_work
    fake_oof_predictions(dataset, work, ("fake_a", "fake_b"))
    ens = target(experiments, "ens")
    space = parse_space({"lr": {"loguniform": [1e-3, 1e-2]}, "base_size": {"choice": [4, 8]}}, ens)
    setup = TrialSetup.create(dataset, work, [0, 1], device="cpu", max_epochs=1)
    result = run_search(ens, space, setup, trials=2, seed=0, out=experiments / "ens_tuned.toml",
                        log=lambda *_: None, progress=False)
    assert list(result.trials.trial) == [0, 1] and list(result.trials.epochs) == [2, 2]  # 1 epoch, 2 folds
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
                                  "--space", str(experiments / "space.toml"), "--name", "quick", "--no-prune"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "best of 1 trials" in result.output and "best config ->" in result.output
    assert re.search(r"^trial 0: OOF lwlrap \d\.\d{4} after 1 epoch", result.output, re.M)
    assert load_experiment(experiments / "quick-best.toml").name == "quick-best"
    assert (work / "search" / "quick" / "study.db").is_file()
    settings = optuna.load_study(study_name="quick", storage=storage_url(work, "quick")).user_attrs["settings"]
    assert settings["folds"] == [2] and settings["seed"] == 0 and settings["sampler"] == "tpe"
    (experiments / "bad.toml").write_text('"train.lrr" = { uniform = [0.1, 0.2] }\n')
    bad = runner.invoke(main, ["search", "tiny", *map(str, common), "--trials", "1", "--space",
                               str(experiments / "bad.toml")])
    assert bad.exit_code == 1 and "train.lrr" in bad.output and "Traceback" not in bad.output
    grid = runner.invoke(main, ["search", "tiny", *map(str, common), "--trials", "1", "--sampler", "grid"])
    assert grid.exit_code == 1 and "grid search needs choice or int" in grid.output and "Traceback" not in grid.output
    missing_fold = runner.invoke(main, ["search", "tiny", *map(str, common), "--trials", "1", "--fold", "7"])
    assert missing_fold.exit_code == 1 and "fold(s) 7" in missing_fold.output


def test_a_trial_gets_the_pretrained_preflight_of_train(tiny_work, experiments):
    """A trial trains through the same entry as ``train``: a ``[pretrained]`` experiment without
    weights is refused by the preflight, for every fold at once, before any training."""
    dataset, work = tiny_work
    values = tomllib.loads(tiny_experiment_toml())
    values["pretrained"] = {"experiment": "never-trained"}
    searched = ExperimentTarget(experiment_from_dict(values, name="tiny"))
    run = searched.prepare(TrialSetup.create(dataset, work, [0, 1]), log=lambda *_: None)
    with pytest.raises(FreesoundError, match=r"starts from 'never-trained', whose fold\(s\) 0, 1 have no model\.pt"):
        run("tiny-trial0", {}, lambda step, value: None)
    assert not (work / "experiments" / "tiny-trial0").exists()


def test_a_study_outlives_a_setting_added_to_the_package_since_it_began():
    """A study started before an experiment setting existed (here [tracking], added since) is
    resumed: the missing setting counts as its default. A setting that really changed is refused."""
    base = Experiment(name="small").to_dict()
    older = {key: value for key, value in base.items() if key != "tracking"}
    settings = {"target": "small", "kind": "experiment", "space": {}, "seed": 0, "folds": [0], "epochs": 1,
                "sampler": "tpe"}
    study = optuna.create_study()
    search_module._check_settings(study, {**settings, "base": older})
    search_module._check_settings(study, {**settings, "base": base})
    changed = {**base, "train": {**base["train"], "lr": 0.5}}
    with pytest.raises(FreesoundError, match="was started with another base"):
        search_module._check_settings(study, {**settings, "base": changed})


def test_a_search_by_another_metric_names_it_and_trains_trials_by_it(tiny_work, experiments, tmp_path):
    dataset, work = tiny_work
    scored = ScoredByLr(load_experiment(experiments / "tiny.toml")).with_metric("roc_auc")
    assert scored.metric == "roc_auc" and scored.experiment.train.metric == "roc_auc"
    assert scored.config({}, "trial").train.metric == "roc_auc"  # trials train by it too
    space = parse_space({"train.lr": {"choice": [1e-3, 3e-3]}}, scored)
    result = run_search(scored, space, TrialSetup.create(dataset, work, [0]), trials=2, sampler="grid", name="auc",
                        out=tmp_path / "auc.toml", log=lambda *_: None, progress=False, pruner=None)
    assert result.metric == "roc_auc"
    assert list(result.trials.columns[:6]) == ["trial", "name", "state", "roc_auc", "epochs", "seconds"]
    assert pd.read_csv(work / "search" / "auc" / "trials.csv").roc_auc.max() == pytest.approx(result.best_score)
    assert search_module.format_trials(result.trials).splitlines()[0] == "  trial  roc_auc  settings"
    best = (tmp_path / "auc.toml").read_text()
    assert f"OOF roc_auc {result.best_score:.4f}" in best
    assert load_experiment(tmp_path / "auc.toml").train.metric == "roc_auc"
    # The stacker's metric is a setting of its study; lwlrap, the default, is left out as before.
    ens = target(experiments, "ens")
    assert "metric" not in ens.base_json() and ens.with_metric("cmap").base_json()["metric"] == "cmap"
    assert ens.with_metric(None).metric == "lwlrap" and target(experiments).with_metric(None).metric == "lwlrap"
    # Each epoch reports the trial's val score of its metric, for pruning.
    reported = []
    on_epoch = search_module._reporter(lambda step, value: reported.append((step, value)), (0, 2), 3, "roc_auc")
    on_epoch(2, type("FitState", (), {"epoch": 1})(), {"val_lwlrap": 0.5, "val_roc_auc": 0.8})
    assert reported == [(3, 0.8)]
