"""Ensemble selection: subset enumeration, vectorised blend scores, greedy selection, the ensemble
file, and the CLI on tiny trained experiments."""

from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli as run
from conftest import tiny_ensemble_toml, tiny_experiment_toml
from freesound.config import StackerConfig, load_ensemble, load_experiment
from freesound.data.dataset import Dataset, probability_frame
from freesound.errors import FreesoundError
from freesound.metrics import METRICS, label_precisions, lwlrap
from freesound.paths import predictions_dir
from freesound.predict import geometric_mean
from freesound.tools.select import (
    count_subsets,
    enumerate_subsets,
    experiment_names,
    format_selection,
    load_oof_set,
    save_selection,
    score_subsets,
    select_ensemble,
    write_ensemble_file,
)

CLASSES = ("a", "b", "c", "d", "e", "f", "g")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_dataset(n_clips=80, seed=0):
    """A Dataset with labels only (selection never reads audio): 1-3 labels per clip."""
    rng = np.random.default_rng(seed)
    labels = [tuple(rng.choice(CLASSES, size=rng.integers(1, 4), replace=False)) for _ in range(n_clips)]
    curated = pd.DataFrame({"fname": [f"clip{i:03d}.wav" for i in range(n_clips)], "labels": labels})
    return Dataset(Path("fake"), CLASSES, curated, curated.iloc[:0], ())


def write_oof(work, name, fnames, probs, classes=CLASSES):
    path = predictions_dir(work, name) / "oof.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    probability_frame(fnames, probs, classes).to_csv(path, index=False)


def fake_experiments(work, dataset, n_experiments, seed=0):
    """Noisy OOF probabilities of varying quality; returns {name: (N, C) probs} in clip order."""
    rng = np.random.default_rng(seed)
    truth = np.array([[c in labels for c in CLASSES] for labels in dataset.curated.labels], dtype=float)
    probs = {}
    for e in range(n_experiments):
        noise = rng.normal(scale=0.5 + 0.3 * e, size=truth.shape)
        probs[f"exp{e}"] = (1 / (1 + np.exp(-(2 * truth - 1 + noise)))).astype(np.float32)
        write_oof(work, f"exp{e}", dataset.curated.fname, probs[f"exp{e}"])
    return probs


@pytest.mark.parametrize("n, max_size", [(1, 1), (4, 4), (5, 2), (6, 3), (3, 10), (10, 10)])
def test_subset_enumeration_counts(n, max_size):
    masks = enumerate_subsets(n, max_size)
    expected = sum(comb(n, k) for k in range(1, min(n, max_size) + 1))
    assert count_subsets(n, max_size) == expected == len(masks)
    assert len({row.tobytes() for row in masks}) == len(masks)  # no subset twice
    sizes = masks.sum(axis=1)
    assert sizes.min() == 1 and sizes.max() == min(n, max_size)
    assert (np.diff(sizes) >= 0).all()  # by size


def test_label_precisions_average_to_lwlrap_with_ties():
    rng = np.random.default_rng(1)
    truth = rng.random((40, 9)) < 0.25
    truth[np.arange(40), rng.integers(0, 9, 40)] = True
    truth[3] = False  # a clip with no label carries no weight
    scores = np.round(rng.random((6, 40, 9)), 1)  # many ties
    clips, labels = np.nonzero(truth)
    batch = label_precisions(scores[:, clips], labels, truth[clips]).mean(axis=1)
    np.testing.assert_allclose(batch, [lwlrap(truth, s) for s in scores], rtol=0, atol=1e-12)


def test_blend_score_equals_direct_geometric_mean(tmp_path):
    dataset = fake_dataset()
    probs = fake_experiments(tmp_path, dataset, 6)
    oof = load_oof_set(list(probs), dataset, tmp_path)
    truth = oof.truth
    rng = np.random.default_rng(2)
    masks = rng.random((25, 6)) < 0.5
    masks[np.arange(25), rng.integers(0, 6, 25)] = True
    scores = score_subsets(oof, masks)
    stacked = np.stack(list(probs.values()))
    for mask, score in zip(masks, scores):
        assert score == pytest.approx(lwlrap(truth, geometric_mean(stacked[mask])), abs=1e-9)


def test_exhaustive_selection_scores_every_subset_best_first(tmp_path):
    dataset = fake_dataset()
    probs = fake_experiments(tmp_path, dataset, 5)
    selection = select_ensemble(load_oof_set(list(probs), dataset, tmp_path), max_size=3)
    assert selection.method == "exhaustive"
    assert len(selection.scores) == count_subsets(5, 3)
    assert (np.diff(selection.scores) <= 0).all()
    assert selection.best_score == selection.scores.max()
    assert set(selection.single_scores()) == set(probs)
    table = selection.table(4)
    assert list(table.columns) == ["rank", "size", "lwlrap", "experiments"] and len(table) == 4
    assert table.experiments[0] == " + ".join(selection.best)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_never_worse_than_best_single(tmp_path, seed):
    dataset = fake_dataset(seed=seed)
    probs = fake_experiments(tmp_path, dataset, 6, seed=seed)
    oof = load_oof_set(list(probs), dataset, tmp_path)
    greedy = select_ensemble(oof, max_size=4, limit=0)  # limit 0 forces greedy
    assert greedy.method == "greedy"
    assert len(greedy.best) <= 4
    assert greedy.best_score >= max(greedy.single_scores().values())
    assert len(greedy.single_scores()) == 6
    exhaustive = select_ensemble(oof, max_size=4)
    assert greedy.best_score <= exhaustive.best_score
    assert greedy.best_score == pytest.approx(score_subsets(oof, greedy.masks[:1])[0])


def test_greedy_beyond_the_exhaustive_limit(tmp_path):
    dataset = fake_dataset(n_clips=30)
    probs = fake_experiments(tmp_path, dataset, 16)
    oof = load_oof_set(list(probs), dataset, tmp_path)
    assert count_subsets(16, 4) == 2516 and select_ensemble(oof, max_size=4).method == "exhaustive"
    assert count_subsets(16, 16) == 65535 and select_ensemble(oof).method == "greedy"


def test_oof_sets_are_aligned_by_fname_on_common_clips(tmp_path):
    dataset = fake_dataset()
    probs = fake_experiments(tmp_path, dataset, 2)
    fnames = list(dataset.curated.fname)
    order = np.random.default_rng(0).permutation(len(fnames))[:-5]  # shuffled, 5 clips missing
    write_oof(tmp_path, "exp1", np.array(fnames)[order], probs["exp1"][order])
    messages = []
    oof = load_oof_set(["exp0", "exp1"], dataset, tmp_path, log=messages.append)
    assert len(oof.fnames) == len(fnames) - 5 and "exp0 has 80" in messages[0]
    keep = np.isin(fnames, oof.fnames)
    both = np.stack([probs["exp0"][keep], probs["exp1"][keep]])
    assert score_subsets(oof, [[True, True]])[0] == pytest.approx(lwlrap(oof.truth, geometric_mean(both)))


def test_mismatched_or_missing_oof_is_a_clear_error(tmp_path):
    dataset = fake_dataset()
    probs = fake_experiments(tmp_path, dataset, 2)
    write_oof(tmp_path, "other", dataset.curated.fname, probs["exp0"][:, ::-1], classes=CLASSES[::-1])
    with pytest.raises(FreesoundError, match="other.*class columns.*another order"):
        load_oof_set(["exp0", "other"], dataset, tmp_path)
    write_oof(tmp_path, "fewer", dataset.curated.fname, probs["exp0"][:, :-1], classes=CLASSES[:-1])
    with pytest.raises(FreesoundError, match="lacks g"):
        load_oof_set(["exp0", "fewer"], dataset, tmp_path)
    with pytest.raises(FreesoundError, match="missing.*freesound predict"):
        load_oof_set(["exp0", "missing"], dataset, tmp_path)
    with pytest.raises(FreesoundError, match="more than once: exp0"):
        experiment_names(["exp0", "exp1", "exp0"])


def test_saved_selection_is_a_loadable_ensemble(tmp_path):
    dataset = fake_dataset()
    probs = fake_experiments(tmp_path, dataset, 4)
    selection = select_ensemble(load_oof_set(list(probs), dataset, tmp_path))
    stacker = StackerConfig(name="mlp", base_size=16, lr=2e-3)
    paths = save_selection(selection, tmp_path / "experiments" / "best_blend.toml", stackers=[stacker], top=5)
    ensemble = load_ensemble(paths["ensemble"])
    assert ensemble.name == "best_blend"
    assert ensemble.experiments == selection.best
    assert ensemble.stackers == (stacker,)
    table = pd.read_csv(paths["csv"])
    assert len(table) == 15 and table.lwlrap.iloc[0] == pytest.approx(selection.best_score)
    assert paths["png"].stat().st_size > 1000
    experiment_file = tmp_path / "experiments" / "small.toml"
    experiment_file.write_text("[train]\nlr = 0.001\n")
    with pytest.raises(FreesoundError, match="not an ensemble file"):
        write_ensemble_file(experiment_file, ["exp0"])
    assert load_experiment(experiment_file).train.lr == 0.001


STACKERS = tiny_ensemble_toml(["tiny_a"])


def test_select_ensemble_command_end_to_end(tiny_work, tmp_path):
    """Train two tiny experiments, select (OOF predicted on the way), then stack and predict."""
    dataset, work = tiny_work
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    for name, lr in (("tiny_a", 3e-3), ("tiny_b", 3e-2)):
        (experiments / f"{name}.toml").write_text(tiny_experiment_toml(lr=lr, extra_params=", dropout = 0.2"))
    (experiments / "stackers.toml").write_text(STACKERS)
    common = ["--data", dataset.root, "--work", work, "--experiments", experiments, "--device", "cpu"]
    for name in ("tiny_a", "tiny_b"):
        run("train", name, *common)
    out = run("select-ensemble", "tiny_a", experiments / "tiny_b.toml", *common,
              "--stackers-from", "stackers", "--top", "2").output
    assert "exhaustive selection over 2 experiments: 3 subsets" in out
    assert "best single experiment:" in out
    ensemble = load_ensemble(experiments / "selected.toml")
    table = pd.read_csv(experiments / "selected.selection.csv")
    assert len(table) == 3 and table.experiments[0] == " + ".join(ensemble.experiments)
    assert f"{table.lwlrap[0]:.4f}" in out
    assert (experiments / "selected.selection.png").is_file()
    assert [s.name for s in ensemble.stackers] == ["mlp"]
    stacked = run("stack", "selected", *common).output
    assert "selected_mlp" in stacked and "blend" in stacked
    run("predict", "selected", *common)
    submission = pd.read_csv(work / "predictions" / "selected" / "test.csv")
    assert list(submission.fname) == list(dataset.test_fnames)
    # The same selection as a plain blend: no stacker to train, predict works at once.
    run("select-ensemble", "tiny_a", "tiny_b", *common, "--no-stacker", "--out", experiments / "plain.toml")
    assert load_ensemble(experiments / "plain.toml").stackers == ()
    result = run("select-ensemble", "tiny_a", "nope", *common, expect=1)
    assert "nope" in result.output and "Traceback" not in result.output


def test_near_ties_rank_as_in_the_oof_files(tmp_path):
    """Blends rank in float64: two experiments whose logs differ by 2e-8 on top of -0.69 (below
    float32's spacing there, about 6e-8) still rank each clip's own class first, as the float64
    geometric mean does."""
    curated = pd.DataFrame({"fname": ["x.wav", "y.wav"], "labels": [("a",), ("b",)]})
    dataset = Dataset(Path("fake"), ("a", "b"), curated, curated.iloc[:0], ())
    near = np.array([[0.999999999, 0.99999998], [0.99999998, 0.999999999]])
    flat = np.full((2, 2), 0.5)
    write_oof(tmp_path, "near", curated.fname, near, classes=("a", "b"))
    write_oof(tmp_path, "flat", curated.fname, flat, classes=("a", "b"))
    oof = load_oof_set(["near", "flat"], dataset, tmp_path, log=lambda *_: None)
    assert oof.log_probs.dtype == np.float64
    truth = np.eye(2)
    assert lwlrap(truth, geometric_mean(np.stack([near, flat]))) == 1.0
    np.testing.assert_array_equal(score_subsets(oof, [[True, True], [True, False], [False, True]]), [1.0, 1.0, 0.5])
    # what float32 logs would have scored the blend
    assert lwlrap(truth, np.log(near).astype(np.float32) + np.log(flat).astype(np.float32)) == 0.5


@pytest.mark.parametrize("metric", ["roc_auc", "cmap"])
def test_selection_by_another_metric_scores_the_geometric_mean_blend(tmp_path, metric):
    dataset = fake_dataset()
    probs = fake_experiments(tmp_path, dataset, 3)
    oof = load_oof_set(list(probs), dataset, tmp_path)
    stacked = np.stack(list(probs.values()))
    masks = enumerate_subsets(3, 3)
    scores = score_subsets(oof, masks, metric)
    for mask, score in zip(masks, scores):
        assert score == pytest.approx(METRICS[metric](oof.truth, geometric_mean(stacked[mask])), abs=1e-9)
    selection = select_ensemble(oof, metric=metric)
    assert selection.metric == metric and selection.best_score == pytest.approx(scores.max())
    assert list(selection.table().columns) == ["rank", "size", metric, "experiments"]
    text = format_selection(selection, top=2).splitlines()
    assert text[0] == f"exhaustive selection over 3 experiments: 7 subsets scored by blend OOF {metric}"
    assert text[1] == f"  rank  size  {metric:>7}  experiments"
    assert text[2] == f"     1  {len(selection.best):>4}  {selection.best_score:7.4f}  {' + '.join(selection.best)}"
    paths = save_selection(selection, tmp_path / "best.toml", top=2)
    assert pd.read_csv(paths["csv"])[metric].iloc[0] == pytest.approx(selection.best_score)
    assert f"blend OOF {metric} {selection.best_score:.4f}" in paths["ensemble"].read_text()
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        score_subsets(oof, masks, "auc")
