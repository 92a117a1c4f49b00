import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from conftest import run_cli
from freesound.errors import FreesoundError
from freesound.metrics import format_scores, lwlrap, per_class_lwlrap
from freesound.tools.evaluate import evaluate_csv


def sklearn_lwlrap(truth, scores):
    return label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(1))


def random_case(seed, n_clips=400, n_classes=30, levels=None):
    rng = np.random.default_rng(seed)
    truth = rng.random((n_clips, n_classes)) < 0.08
    truth[rng.integers(0, n_clips, 20)] = False  # some clips with no label at all
    scores = rng.random((n_clips, n_classes))
    if levels:  # coarse scores: many ties
        scores = np.floor(scores * levels) / levels
    return truth, scores


@pytest.mark.parametrize("levels", [None, 2, 4, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn_weighted_lrap(seed, levels):
    truth, scores = random_case(seed, levels=levels)
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores), abs=1e-12)


def test_matches_sklearn_with_float32_scores_and_int_truth():
    truth, scores = random_case(3, levels=5)
    truth, scores = truth.astype(np.int64), scores.astype(np.float32)
    # The reference gets the same values in float64: scikit-learn's own float32 arithmetic moves with
    # the NumPy version (by 5e-9 here from NumPy 2.4 to 2.5), ours does not.
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores.astype(np.float64)), abs=1e-12)


# Three clips, four classes. A tied label takes the worst rank of its tie group.
#   clip 0: truth {0}, scores .9 .1 .2 .3  -> class 0 ranks 1st, 1 hit: precision 1/1
#   clip 1: truth {1,2}, scores .8 .7 .1 .2 -> class 1 ranks 2nd with 1 hit: 1/2;
#                                             class 2 ranks 4th with 2 hits: 2/4
#   clip 2: truth {2}, scores .5 .5 .5 .1  -> classes 0-2 tie, so class 2 ranks 3rd, 1 hit: 1/3
# lwlrap = mean over the 4 positive labels = (1 + 1/2 + 1/2 + 1/3) / 4 = 7/12.
# Per class: class 0 -> 1 (weight 1/4), class 1 -> 1/2 (1/4), class 2 -> (1/2 + 1/3)/2 = 5/12
# (2/4), class 3 -> no positives (weight 0): 1/4 + 1/8 + 5/24 = 7/12.
HAND_TRUTH = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]])
HAND_SCORES = np.array([[0.9, 0.1, 0.2, 0.3], [0.8, 0.7, 0.1, 0.2], [0.5, 0.5, 0.5, 0.1]])


def test_hand_worked_example():
    assert lwlrap(HAND_TRUTH, HAND_SCORES) == pytest.approx(7 / 12, abs=1e-12)
    assert sklearn_lwlrap(HAND_TRUTH, HAND_SCORES) == pytest.approx(7 / 12, abs=1e-12)
    per_class, weight = per_class_lwlrap(HAND_TRUTH, HAND_SCORES)
    np.testing.assert_allclose(per_class, [1, 1 / 2, 5 / 12, 0])
    np.testing.assert_allclose(weight, [1 / 4, 1 / 4, 2 / 4, 0])


@pytest.mark.parametrize("levels", [None, 3])
def test_per_class_decomposition_sums_to_the_total(levels):
    truth, scores = random_case(5, levels=levels)
    per_class, weight = per_class_lwlrap(truth, scores)
    assert per_class.shape == weight.shape == (truth.shape[1],)
    assert weight.sum() == pytest.approx(1.0)
    assert np.sum(per_class * weight) == pytest.approx(lwlrap(truth, scores), abs=1e-12)


def test_perfect_ranking_scores_1():
    truth, _ = random_case(7)
    scores = truth + np.random.default_rng(7).random(truth.shape) * 0.5
    assert lwlrap(truth, scores) == pytest.approx(1.0)
    per_class, weight = per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(per_class[weight > 0], 1.0)


def test_worst_ranking():
    n_classes = 10
    # One positive per clip, ranked last: precision 1/C.
    truth = np.eye(n_classes, dtype=bool)
    assert lwlrap(truth, 1.0 - truth) == pytest.approx(1 / n_classes)
    # Two positives per clip ranked last and distinct: precisions 1/(C-1) and 2/C ...
    truth = np.zeros((3, n_classes), dtype=bool)
    truth[:, :2] = True
    scores = np.arange(n_classes) - 100.0 * truth
    assert lwlrap(truth, scores) == pytest.approx((1 / (n_classes - 1) + 2 / n_classes) / 2)
    # ... and tied with each other: both take rank C, so both get 2/C.
    assert lwlrap(truth, 1.0 - truth) == pytest.approx(2 / n_classes)


def test_all_tied_scores_give_the_positive_fraction():
    truth = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    scores = np.zeros(truth.shape)
    # Every label ranks last (5th); clip 0 has 2 hits there, clip 1 has 1.
    assert lwlrap(truth, scores) == pytest.approx((2 / 5 + 2 / 5 + 1 / 5) / 3)
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores))


def test_clips_without_labels_carry_no_weight():
    truth, scores = HAND_TRUTH, HAND_SCORES
    padded_truth = np.vstack([truth, np.zeros((2, 4), dtype=int)])
    padded_scores = np.vstack([scores, np.random.default_rng(0).random((2, 4))])
    assert lwlrap(padded_truth, padded_scores) == pytest.approx(7 / 12)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        lwlrap(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        lwlrap(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="binary"):
        lwlrap(np.full((2, 2), 0.5), np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        lwlrap(np.eye(2), np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="no positive"):
        per_class_lwlrap(np.zeros((2, 3)), np.ones((2, 3)))


# ----------------------------------------------------------------------------- evaluate (CSV to metric)


def write_evaluation(tmp_path, rows, labels):
    """A predictions CSV (``rows``: fname -> scores of classes a, b) and a labels CSV."""
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("fname,a,b\n" + "".join(f"{name},{a},{b}\n" for name, (a, b) in rows))
    truth = tmp_path / "labels.csv"
    truth.write_text("fname,labels\n" + "".join(f"{name},{label}\n" for name, label in labels))
    return predictions, truth


def test_evaluate_keeps_float64_from_the_csv_to_the_metric(tmp_path):
    """Scores that differ only beyond float32's precision still rank as written: in float32 both
    would be 1.0, a tie that scores 0.5."""
    rows = [("x.wav", ("0.999999999", "0.99999998")), ("y.wav", ("0.99999998", "0.999999999"))]
    predictions, truth = write_evaluation(tmp_path, rows, [("x.wav", "a"), ("y.wav", "b")])
    scores = evaluate_csv(predictions, truth)
    expected = label_ranking_average_precision_score([[1, 0], [0, 1]], [[0.999999999, 0.99999998],
                                                                       [0.99999998, 0.999999999]],
                                                     sample_weight=[1, 1])
    assert scores["lwlrap"] == expected == 1.0
    assert np.float32(0.999999999) == np.float32(0.99999998)  # why float32 would have lost it
    out = run_cli("evaluate", predictions, "--labels", truth).output
    assert out.splitlines()[0] == "predictions.csv: lwlrap 1.0000 on 2 clips"
    assert "OOF" not in out


def test_evaluate_names_missing_and_duplicated_clips_and_scores_a_subset_on_request(tmp_path):
    labels = [("x.wav", "a"), ("y.wav", "b"), ("z.wav", "a")]
    predictions, truth = write_evaluation(tmp_path, [("x.wav", (0.9, 0.1)), ("y.wav", (0.2, 0.8))], labels)
    with pytest.raises(FreesoundError,
                       match=r"no predictions for 1 of the 3 labelled clip\(s\) .*: z\.wav; .*--subset"):
        evaluate_csv(predictions, truth)
    result = run_cli("evaluate", predictions, "--labels", truth, expect=1)
    assert result.stderr.startswith("error: ") and "z.wav" in result.stderr and "Traceback" not in result.output
    out = run_cli("evaluate", predictions, "--labels", truth, "--subset").output
    assert out.splitlines()[0] == "predictions.csv: lwlrap 1.0000 on 2 clips"
    assert "scored 2 of the 3 labelled clips (--subset)" in out

    rows = [("x.wav", (0.9, 0.1)), ("y.wav", (0.2, 0.8)), ("z.wav", (0.6, 0.4)), ("x.wav", (0.1, 0.9))]
    predictions, truth = write_evaluation(tmp_path, rows, labels)
    for subset in (False, True):
        with pytest.raises(FreesoundError, match=r"1 clip\(s\) have more than one row of predictions: x\.wav$"):
            evaluate_csv(predictions, truth, subset=subset)
    predictions, truth = write_evaluation(tmp_path, [("w.wav", (0.5, 0.5))], labels)
    with pytest.raises(FreesoundError, match=r"no labels for 1 predicted clip\(s\): w\.wav"):
        evaluate_csv(predictions, truth, subset=True)


def test_format_scores_labels_its_score():
    scores = {"lwlrap": 0.75, "clips": 4, "per_class": {"a": {"lwlrap": 0.5, "weight": 0.5},
                                                        "b": {"lwlrap": 1.0, "weight": 0.5}}}
    assert format_scores("exp", scores).splitlines()[0] == "exp: OOF lwlrap 0.7500 on 4 clips"
    assert format_scores("test.csv", scores, label="lwlrap").splitlines()[0] == "test.csv: lwlrap 0.7500 on 4 clips"
