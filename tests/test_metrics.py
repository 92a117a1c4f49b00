import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, roc_auc_score

from conftest import run_cli
from freesound.errors import FreesoundError
from freesound.metrics import (
    METRICS,
    check_metric,
    format_scores,
    lwlrap,
    padded_cmap,
    per_class_lwlrap,
    per_class_padded_ap,
    per_class_roc_auc,
    roc_auc,
    score_predictions,
)
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
    assert format_scores("test.csv", scores, label="").splitlines()[0] == "test.csv: lwlrap 0.7500 on 4 clips"


# ----------------------------------------------------------------------------- ROC-AUC and padded cmAP


def sklearn_roc_auc(truth, scores):
    """BirdCLEF 2024/2025: scikit-learn's macro ROC-AUC over the columns with a positive."""
    scored = truth.sum(axis=0) > 0
    return roc_auc_score(truth[:, scored], scores[:, scored], average="macro")


def sklearn_padded_cmap(truth, scores, padding_factor=5):
    """BirdCLEF 2023: rows of ones appended to both, then scikit-learn's macro average precision."""
    ones = np.ones((padding_factor, truth.shape[1]))
    return average_precision_score(np.vstack([truth, ones]), np.vstack([scores, ones]), average="macro")


@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_and_cmap_match_sklearn(seed, levels):
    truth, scores = random_case(seed, n_clips=200, levels=levels)
    truth[:, :3] = False  # classes without positives: skipped by ROC-AUC, padded by cmAP
    assert roc_auc(truth, scores) == pytest.approx(sklearn_roc_auc(truth, scores), abs=1e-12)
    assert padded_cmap(truth, scores) == pytest.approx(sklearn_padded_cmap(truth, scores), abs=1e-12)
    assert padded_cmap(truth, scores, padding_factor=1) == pytest.approx(sklearn_padded_cmap(truth, scores, 1),
                                                                         abs=1e-12)
    assert METRICS == {"lwlrap": lwlrap, "roc_auc": roc_auc, "cmap": padded_cmap}


def test_roc_auc_and_cmap_of_a_single_class():
    truth = np.array([[1], [0], [1], [0], [0]])
    scores = np.array([[0.9], [0.4], [0.4], [0.1], [0.6]])
    # Positives 0.9 and 0.4 against negatives 0.4 (a tie: half), 0.1 and 0.6: (3 + 1.5) / 6.
    assert roc_auc(truth, scores) == pytest.approx(0.75) == pytest.approx(roc_auc_score(truth[:, 0], scores[:, 0]))
    assert padded_cmap(truth, scores) == pytest.approx(sklearn_padded_cmap(truth, scores), abs=1e-12)


# Four rows, three classes; class 2 has no positive.
#   class 0: truth 1 0 1 0, scores .9 .8 .3 .1 -> positive/negative pairs ranked right: (.9>.8, .9>.1,
#            .3>.1) of 4: AUC 3/4. Padded with k rows (truth 1, score 1): the k pads rank first
#            (precision 1 each), .9 next (k+1 of k+1), .3 after .8 (k+2 of k+3): AP (k + 1 + (k+2)/(k+3)) / (k+2).
#   class 1: truth 0 1 0 0, scores .5 .5 .2 .7 -> the positive .5 beats .2, ties .5, loses to .7:
#            AUC 1.5/3 = 1/2; AP (k + (k+1)/(k+3)) / (k+1) (the tie group ends with k+1 hits of k+3).
#   class 2: no positive -> skipped by ROC-AUC; only the pads are positive and rank first: AP 1.
# ROC-AUC = (3/4 + 1/2) / 2 = 5/8. With k = 5: AP 55/56, 23/24 and 1, cmAP = 247/252.
CMAP_TRUTH = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
CMAP_SCORES = np.array([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.3, 0.2, 0.3], [0.1, 0.7, 0.4]])


def test_roc_auc_and_cmap_hand_worked_example():
    assert roc_auc(CMAP_TRUTH, CMAP_SCORES) == pytest.approx(5 / 8, abs=1e-12)
    np.testing.assert_allclose(per_class_roc_auc(CMAP_TRUTH, CMAP_SCORES), [3 / 4, 1 / 2, np.nan])
    assert padded_cmap(CMAP_TRUTH, CMAP_SCORES) == pytest.approx(247 / 252, abs=1e-12)
    np.testing.assert_allclose(per_class_padded_ap(CMAP_TRUTH, CMAP_SCORES), [55 / 56, 23 / 24, 1])
    # k = 1: class 0 (1 + 1 + 3/4) / 3 = 11/12, class 1 (1 + 2/4) / 2 = 3/4, class 2 1.
    assert padded_cmap(CMAP_TRUTH, CMAP_SCORES, padding_factor=1) == pytest.approx((11 / 12 + 3 / 4 + 1) / 3)
    assert sklearn_roc_auc(CMAP_TRUTH, CMAP_SCORES) == pytest.approx(5 / 8)
    assert sklearn_padded_cmap(CMAP_TRUTH, CMAP_SCORES) == pytest.approx(247 / 252)


def test_roc_auc_and_cmap_refuse_what_they_cannot_score():
    with pytest.raises(ValueError, match="same shape"):
        roc_auc(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="same shape"):
        padded_cmap(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="^truth has no positive label; roc_auc is undefined$"):
        roc_auc(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="^truth has no positive label; cmap is undefined$"):
        padded_cmap(np.zeros((2, 3)), np.ones((2, 3)))
    # A class positive in every row has no negative: BirdCLEF's scikit-learn call has no score either.
    with pytest.raises(ValueError,
                       match=r"ROC-AUC is undefined for 1 class\(es\) with no negative row \(columns \[1\]\)"):
        roc_auc(np.array([[1, 1], [0, 1]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"no negative row \(classes \['owl'\]\), as in BirdCLEF's metric"):
        roc_auc(np.array([[1, 1], [0, 1]]), np.ones((2, 2)), classes=("wren", "owl"))
    with pytest.raises(ValueError, match="padding_factor must be a whole number of rows, 0 or more, got -1"):
        padded_cmap(CMAP_TRUTH, CMAP_SCORES, padding_factor=-1)
    with pytest.raises(ValueError, match="undefined for a class without a positive row"):
        padded_cmap(CMAP_TRUTH, CMAP_SCORES, padding_factor=0)
    with pytest.raises(ValueError, match=r"without a positive row \(classes \['c'\]\); pad"):
        padded_cmap(CMAP_TRUTH, CMAP_SCORES, padding_factor=0, classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="unknown metric 'auc'; choose from lwlrap, roc_auc, cmap"):
        check_metric("auc")


def test_score_predictions_reports_each_metric_overall_per_fold_and_per_class():
    classes, folds = ["a", "b", "c"], np.array([0, 1, 0, 1])
    scores = score_predictions(CMAP_TRUTH, CMAP_SCORES, classes, metrics=("lwlrap", "roc_auc", "cmap"))
    assert list(scores) == ["lwlrap", "roc_auc", "cmap", "clips", "per_class"]
    assert scores["roc_auc"] == pytest.approx(5 / 8) and scores["cmap"] == pytest.approx(247 / 252)
    assert scores["per_class"]["c"] == {"lwlrap": 0.0, "weight": 0.0, "roc_auc": None, "cmap": 1.0}
    assert scores["per_class"]["b"]["roc_auc"] == pytest.approx(1 / 2)
    # lwlrap alone: the dict it has always been.
    assert score_predictions(CMAP_TRUTH, CMAP_SCORES, classes, folds) == {
        "lwlrap": lwlrap(CMAP_TRUTH, CMAP_SCORES), "clips": 4, "per_fold": {
            "0": lwlrap(CMAP_TRUTH[[0, 2]], CMAP_SCORES[[0, 2]]), "1": lwlrap(CMAP_TRUTH[[1, 3]], CMAP_SCORES[[1, 3]])},
        "per_class": {name: {"lwlrap": value, "weight": share}
                      for name, value, share in zip(classes, *per_class_lwlrap(CMAP_TRUTH, CMAP_SCORES))}}
    with_folds = score_predictions(CMAP_TRUTH, CMAP_SCORES, classes, np.array([0, 0, 0, 0]), metrics=("cmap",))
    assert with_folds["per_fold_cmap"] == {"0": pytest.approx(247 / 252)} and "lwlrap" not in with_folds
    # A fold of one clip of class a: a has no negative row there, named as a class, not a column.
    with pytest.raises(ValueError, match=r"no negative row \(classes \['a'\]\)"):
        score_predictions(CMAP_TRUTH, CMAP_SCORES, classes, np.array([1, 0, 0, 0]), metrics=("roc_auc",))
    table = format_scores("windows.csv", with_folds, label="", unit="rows").splitlines()
    assert table[0] == "windows.csv: cmap 0.9802 on 4 rows"
    assert table[1] == "  per fold: 0: 0.9802"
    assert table[2:] == ["  class    cmap", "  b  0.9583", "  a  0.9821", "  c  1.0000"]
    both = format_scores("exp", score_predictions(CMAP_TRUTH, CMAP_SCORES, classes, metrics=("roc_auc", "lwlrap")))
    assert both.splitlines()[0] == "exp: OOF roc_auc 0.6250, lwlrap 0.6667 on 4 clips"
    assert both.splitlines()[1:] == ["  class  roc_auc  lwlrap  weight", "  b   0.5000  0.5000  0.3333",
                                     "  a   0.7500  0.7500  0.6667", "  c        -  0.0000  0.0000"]


# ----------------------------------------------------------------------------- evaluate: metrics, windows


def write_windows(folder, solution: bool):
    """BirdCLEF-shaped files: ``predictions.csv`` keyed by row_id (windows of two soundscapes) and
    ``labels.csv`` as a ``labels`` column or one 0/1 column per class (the solution format)."""
    folder.mkdir()
    rows = ["s1_5", "s1_10", "s2_5", "s2_10"]
    scores = pd.DataFrame({"row_id": rows, **dict(zip(["a", "b", "c"], CMAP_SCORES.T))})
    scores.to_csv(folder / "predictions.csv", index=False)
    if solution:
        pd.DataFrame({"row_id": rows, **dict(zip(["a", "b", "c"], CMAP_TRUTH.T))}).to_csv(folder / "labels.csv",
                                                                                           index=False)
    else:  # the last window has no call: an empty label; BirdCLEF's sample submission gives the classes
        pd.DataFrame({"row_id": rows, "labels": ["a", "b", "a", ""]}).to_csv(folder / "labels.csv", index=False)
        scores.iloc[:1].to_csv(folder / "sample_submission.csv", index=False)
    return folder / "predictions.csv", folder / "labels.csv"


@pytest.mark.parametrize("solution", [False, True])
def test_evaluate_scores_windows_by_row_id_with_each_metric(tmp_path, solution):
    predictions, labels = write_windows(tmp_path / "w", solution)
    scores = evaluate_csv(predictions, labels, metrics=("roc_auc", "cmap"))
    assert scores["roc_auc"] == pytest.approx(5 / 8) and scores["cmap"] == pytest.approx(247 / 252)
    assert "lwlrap" not in scores and scores["unit"] == "windows" and scores["clips"] == 4
    out = run_cli("evaluate", predictions, "--labels", labels, "--metric", "roc_auc", "--metric", "cmap").output
    assert out.splitlines()[:2] == ["predictions.csv: roc_auc 0.6250, cmap 0.9802 on 4 windows",
                                    "  class  roc_auc    cmap"]
    assert out.splitlines()[-1] == "  c        -  1.0000"  # no positive: ROC-AUC skips it
    assert run_cli("evaluate", predictions, "--labels", labels).output.splitlines()[0] == \
        f"predictions.csv: lwlrap {lwlrap(CMAP_TRUTH, CMAP_SCORES):.4f} on 4 windows"


def test_evaluate_names_what_it_cannot_score_for_windows(tmp_path):
    predictions, labels = write_windows(tmp_path / "w", solution=True)
    frame = pd.read_csv(labels)
    frame.iloc[:3].to_csv(labels, index=False)
    with pytest.raises(FreesoundError, match=r"labels\.csv has no labels for 1 predicted window\(s\): s2_10$"):
        evaluate_csv(predictions, labels)
    frame.assign(b=[1, 1, 1, 1]).to_csv(labels, index=False)
    with pytest.raises(FreesoundError, match=r"^cannot score .*predictions\.csv against .*labels\.csv: ROC-AUC is "
                                             r"undefined for 1 class\(es\) with no negative row \(classes \['b'\]\)"):
        evaluate_csv(predictions, labels, metrics=("roc_auc",))
    frame.assign(b=[0, 2, 0, 0]).to_csv(labels, index=False)
    with pytest.raises(FreesoundError,
                       match=r"labels\.csv: 1 label cell\(s\) are not 0 or 1, e\.g\. 'b' of s1_10 is '2'"):
        evaluate_csv(predictions, labels)
    frame.drop(columns="c").to_csv(labels, index=False)
    with pytest.raises(FreesoundError, match=r"predictions\.csv: 1 column\(s\) are not classes of the vocabulary "
                                             r"\(.*labels\.csv\): 'c'"):
        evaluate_csv(predictions, labels)
    frame.rename(columns={"row_id": "fname"}).to_csv(labels, index=False)
    with pytest.raises(FreesoundError, match=r"labels\.csv: no 'row_id' column to match the predictions' windows by$"):
        evaluate_csv(predictions, labels)
    result = run_cli("evaluate", predictions, "--labels", labels, "--metric", "auc", expect=2)
    assert "'auc' is not one of 'lwlrap', 'roc_auc', 'cmap'" in result.output


def test_the_configs_metric_names_are_the_registrys():
    from freesound.config import METRIC_NAMES

    assert METRIC_NAMES == tuple(METRICS)
