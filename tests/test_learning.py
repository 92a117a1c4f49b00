"""Does the method learn? `small` on synthetic data against chance and a simple baseline.

Measured on 2026-11-23 (CPU, seed 3, 8 classes in 4 time-reversed twin pairs, fold 0 of 5,
small.toml's 8 epochs): small 0.643, logistic-regression baseline 0.692, chance 0.393 test lwlrap.
With 20 epochs small reached 0.685. The twin pairs share a spectrum, which caps what band
statistics can do, but the small model does not yet learn the time course well enough within
this budget: the comparison with the baseline is kept as a strict expected failure so that the
gap stays visible and the test flips to an error the day it closes.

Later the same day, single runs of small.toml variants on this split (test lwlrap; run-to-run
spread is about ±0.03): as is 0.626, no mixers 0.692, no mixers or augmentation 0.612, curated
clips only 0.652, lr 1e-2 0.590, batch 8 0.641, batch 16 0.648, 16 epochs 0.685. Merging each
twin pair into one class shows where the baseline's score comes from: at pair level it scores
0.988 (band statistics find the pair and then guess within it), the 8-epoch CNNs 0.90-0.94 (they
tell twins apart better than chance, but have not yet learned the spectra as well).
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

pytestmark = pytest.mark.slow


def chance_lwlrap(truth, repeats=20, seed=0):
    rng = np.random.default_rng(seed)
    return float(np.mean([lwlrap(truth, rng.random(truth.shape)) for _ in range(repeats)]))


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """Test lwlrap of small (fold 0), the baseline on the same training clips, and chance."""
    root = tmp_path_factory.mktemp("learning")
    synthesize_dataset(root / "data", num_classes=8, num_curated=160, num_noisy=80, num_test=80, seed=3,
                       progress=False)
    dataset = load_dataset(root / "data")
    work = root / "work"
    assert not cache_features(dataset, work, workers=2, progress=False).failures
    write_folds(work, make_folds(dataset.curated.fname, n_folds=5, seed=42))

    train_fold(load_experiment("small", REPO / "experiments"), dataset, work, 0, progress=False,
               log=lambda *_: None)
    tagger = Tagger.from_checkpoints([work / "experiments" / "small" / "fold_0" / "model.pt"])
    test_logmels = load_features(dataset, work, "test")
    labels = read_labels_csv(dataset.root / "test_labels.csv", dataset.classes).set_index("fname")
    truth = multi_hot(labels.loc[list(dataset.test_fnames), "labels"], dataset.classes)

    folds = read_folds(work, dataset.curated.fname)
    train = dataset.curated[(folds.set_index("fname").loc[dataset.curated.fname, "fold"] != 0).to_numpy()]
    train_logmels = load_features(dataset, work, "train_curated", train.fname) + load_features(dataset, work, "train_noisy")
    train_targets = np.concatenate([multi_hot(train.labels, dataset.classes),
                                    multi_hot(dataset.noisy.labels, dataset.classes)])
    baseline = fit_baseline(train_logmels, train_targets)
    return {
        "small": lwlrap(truth, tagger.predict_spectrograms(test_logmels)),
        "baseline": lwlrap(truth, predict_baseline(baseline, test_logmels)),
        "chance": chance_lwlrap(truth),
    }


def test_small_learns_well_above_chance(scores):
    assert scores["small"] > scores["chance"] + 0.15, scores


@pytest.mark.xfail(strict=True, reason="small (8 CPU epochs) does not yet beat the band-statistics baseline")
def test_small_beats_the_baseline(scores):
    assert scores["small"] > scores["baseline"], scores
