"""Does the method learn? `small` on synthetic data against chance and a simple baseline.

Figures from the run that set the bounds (seed 3, 8 classes, fold 0 of 5, 2026-11-23, CPU):
see the assertion messages, which print the measured values on failure.
"""

import numpy as np
import pytest

from freesound.baseline import fit_baseline, predict_baseline
from freesound.config import load_experiment
from freesound.data import load_dataset, multi_hot, read_labels_csv
from freesound.features import cache_features, load_features
from freesound.folds import make_folds, read_folds, write_folds
from freesound.metrics import lwlrap
from freesound.predict import Tagger
from freesound.synth import synthesize_dataset
from freesound.train import train_fold

from conftest import REPO


def chance_lwlrap(truth, repeats=20, seed=0):
    rng = np.random.default_rng(seed)
    return float(np.mean([lwlrap(truth, rng.random(truth.shape)) for _ in range(repeats)]))


@pytest.mark.slow
def test_small_beats_chance_and_the_baseline(tmp_path):
    synthesize_dataset(tmp_path / "data", num_classes=8, num_curated=160, num_noisy=80, num_test=80, seed=3,
                       progress=False)
    dataset = load_dataset(tmp_path / "data")
    work = tmp_path / "work"
    assert not cache_features(dataset, work, workers=2, progress=False).failures
    write_folds(work, make_folds(dataset.curated.fname, n_folds=5, seed=42))

    experiment = load_experiment("small", REPO / "experiments")
    train_fold(experiment, dataset, work, 0, progress=False, log=lambda *_: None)
    tagger = Tagger.from_checkpoints([work / "experiments" / "small" / "fold_0" / "model.pt"])
    test_logmels = load_features(dataset, work, "test")
    labels = read_labels_csv(dataset.root / "test_labels.csv", dataset.classes).set_index("fname")
    truth = multi_hot(labels.loc[list(dataset.test_fnames), "labels"], dataset.classes)
    model_score = lwlrap(truth, tagger.predict_spectrograms(test_logmels))

    folds = read_folds(work, dataset.curated.fname)
    train = dataset.curated[(folds.set_index("fname").loc[dataset.curated.fname, "fold"] != 0).to_numpy()]
    train_logmels = load_features(dataset, work, "train_curated", train.fname) + load_features(dataset, work, "train_noisy")
    train_targets = np.concatenate([multi_hot(train.labels, dataset.classes),
                                    multi_hot(dataset.noisy.labels, dataset.classes)])
    baseline = fit_baseline(train_logmels, train_targets)
    baseline_score = lwlrap(truth, predict_baseline(baseline, test_logmels))
    chance = chance_lwlrap(truth)

    figures = f"small {model_score:.3f}, baseline {baseline_score:.3f}, chance {chance:.3f}"
    assert model_score > chance + 0.3, figures
    assert model_score > baseline_score, figures
