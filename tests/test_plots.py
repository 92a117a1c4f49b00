"""Report plots: valid, non-blank PNGs from tiny fake logs, scores and spectrograms."""

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from freesound.errors import FreesoundError
from freesound.tools.plots import (
    augmentation_panels,
    plot_augmentations,
    plot_per_class,
    plot_training_curves,
    report,
)
from freesound.training.trainer import LOG_COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_width=600):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[1] >= min_width and image.shape[0] >= 200
    assert image[..., :3].std() > 0  # something was drawn
    # Written atomically: no temporary file is left beside it.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")] == []


def write_fake_logs(experiment, folds=2, epochs=6):
    rng = np.random.default_rng(0)
    for fold in range(folds):
        epoch = np.arange(1, epochs + 1)
        log = pd.DataFrame({
            "epoch": epoch, "lr": 9e-4, "train_loss": 0.7 / epoch, "val_loss": 0.6 / epoch + 0.05,
            "val_lwlrap": 0.5 + 0.05 * epoch - 0.01 * (epoch == epochs) + rng.normal(0, 0.001, epochs),
            "seconds": 2.0,
        }, columns=LOG_COLUMNS)
        (experiment / f"fold_{fold}").mkdir(parents=True)
        log.to_csv(experiment / f"fold_{fold}" / "log.csv", index=False)


def fake_scores(n_classes=5):
    per_class = {f"class_{i}": {"lwlrap": 0.5 + 0.1 * i, "weight": 1.0 / n_classes} for i in range(n_classes)}
    return {"lwlrap": 0.7, "clips": 20, "per_fold": {"0": 0.68, "1": 0.72}, "per_class": per_class}


def fake_logmel(frames=100, n_mels=128):
    rng = np.random.default_rng(1)
    logmel = rng.normal(-60, 5, (n_mels, frames)).astype(np.float32)
    logmel[20 + np.arange(frames) // 10, np.arange(frames)] = -10  # a rising tone
    return logmel


def test_training_curves(tmp_path):
    write_fake_logs(tmp_path / "exp")
    out = plot_training_curves(tmp_path / "exp", tmp_path / "out" / "curves.png")
    assert out == tmp_path / "out" / "curves.png"
    assert_valid_png(out)


def test_training_curves_without_logs_is_a_clear_error(tmp_path):
    (tmp_path / "exp" / "fold_0").mkdir(parents=True)
    with pytest.raises(FreesoundError, match="no training logs"):
        plot_training_curves(tmp_path / "exp", tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_per_class(tmp_path):
    scores = fake_scores()
    scores["per_class"]["absent"] = {"lwlrap": 0.0, "weight": 0.0}
    assert_valid_png(plot_per_class(scores, tmp_path / "per_class.png", "fake"))


def test_augmentation_panels_use_the_real_transforms():
    logmel = fake_logmel()
    panels = augmentation_panels(logmel, seed=3)
    assert len(panels) == 9
    assert panels[0][1] is logmel
    assert all(image.shape == (128, 256) for _, image, _ in panels[1:])
    assert [kind for _, _, kind in panels].count("delta") == 2
    # Same seed, same gallery.
    again = augmentation_panels(logmel, seed=3)
    assert all(np.array_equal(a[1], b[1]) and a[0] == b[0] for a, b in zip(panels, again))


def test_augmentation_gallery(tmp_path):
    out = plot_augmentations(fake_logmel(), tmp_path / "aug.png", seed=0, other=fake_logmel(300))
    assert_valid_png(out)


def test_report_before_and_after_oof_scores(tmp_path):
    work = tmp_path / "work"
    write_fake_logs(work / "experiments" / "exp")
    result = report("exp", work)
    predictions = work / "predictions" / "exp"
    assert result["pngs"] == [predictions / "training_curves.png"]
    assert "fold 0" in result["table"] and "fold 1" in result["table"] and "freesound predict exp" in result["table"]
    assert_valid_png(result["pngs"][0])

    (predictions / "oof_scores.json").write_text(json.dumps(fake_scores()))
    result = report("exp", work, out_dir=tmp_path / "plots")
    assert result["pngs"] == [tmp_path / "plots" / "training_curves.png", tmp_path / "plots" / "per_class.png"]
    assert "OOF lwlrap 0.7000" in result["table"]
    for png in result["pngs"]:
        assert_valid_png(png)


def test_report_of_an_untrained_experiment(tmp_path):
    with pytest.raises(FreesoundError, match="train the experiment first"):
        report("missing", tmp_path)
