"""Windows in time (issue #32): per-window prediction of long recordings, BirdCLEF's row ids, the
post-processing, ``predict --windows``, ``tag --timeline`` and window kernels."""

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from freesound.audio import silent_logmel
from freesound.config import AudioConfig
from freesound.data.synth import render_clip, twin_signatures
from freesound.errors import FreesoundError
from freesound.models import create_model, save_checkpoint
from freesound.predict import (
    EnsemblePredictor, Tagger, WindowSpec, combine_models, parse_weights, predict_file_windows, rescale_by_file_max,
    smooth_windows, window_bounds, window_row_ids,
)
from freesound.predict.files import read_untrimmed_logmel
from freesound.predict.windows import split_windows

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli, tiny_experiment_toml  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["a", "b", "c"]
CONFIG = AudioConfig()
#: Soundscapes of the fixture: name -> seconds (20 s exact, 12 s with a partial last window).
SCAPES = {"scape_b.wav": 20.0, "scape_a.wav": 12.0}


def frames_of(seconds: float) -> int:
    """Log-mel frames of a clip of ``seconds`` at the method's front end (centred frames)."""
    return 1 + int(round(seconds * CONFIG.sample_rate)) // CONFIG.hop_length


def sed_params():
    return {"num_classes": len(CLASSES), "base_size": 4, "head": "sed"}


def write_soundscape(path: Path, seconds: float, seed: int) -> Path:
    """A long recording: 5-second synth clips of the classes in turn (the last one cut)."""
    signatures = twin_signatures(len(CLASSES), 0)
    rng = np.random.default_rng(seed)
    parts = [render_clip([signatures[k % len(CLASSES)]], 5.0, rng) for k in range(int(np.ceil(seconds / 5)))]
    sf.write(path, np.concatenate(parts)[:int(seconds * CONFIG.sample_rate)], CONFIG.sample_rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def scapes(tmp_path_factory):
    """Two long recordings, and a work folder with a two-fold SED experiment ``sedx`` (tiny
    aux_skip_attention, head = "sed") and its TOML."""
    base = tmp_path_factory.mktemp("windows")
    audio = base / "audio"
    audio.mkdir()
    for index, (name, seconds) in enumerate(SCAPES.items()):
        write_soundscape(audio / name, seconds, seed=index)
    work = base / "work"
    for fold in (0, 1):
        torch.manual_seed(fold)
        model = create_model("aux_skip_attention", **sed_params()).eval()
        save_checkpoint(work / "experiments" / "sedx" / f"fold_{fold}" / "model.pt", model,
                        model_name="aux_skip_attention", model_params=sed_params(), classes=CLASSES,
                        audio_config=CONFIG.to_dict())
    experiments = base / "experiments"
    experiments.mkdir()
    (experiments / "sedx.toml").write_text(tiny_experiment_toml("aux_skip_attention", extra_params=', head = "sed"'))
    tagger = Tagger.from_experiment(work / "experiments" / "sedx")
    return {"base": base, "audio": audio, "work": work, "experiments": experiments, "tagger": tagger}


# ----------------------------------------------------------------------------- layout and row ids


def test_windows_map_to_frames_by_their_centres():
    bounds = window_bounds(frames_of(20.0), WindowSpec(5), CONFIG)
    # Frame i is centred at i * 690 / 44100 s: window 1 starts at ceil(5 * 44100 / 690) = 320.
    assert bounds == [(0, 320, 5.0), (320, 640, 10.0), (640, 959, 15.0), (959, 1279, 20.0)]
    assert len(window_bounds(frames_of(60.0), WindowSpec(5), CONFIG)) == 12  # BirdCLEF's soundscape
    assert len(window_bounds(frames_of(60.0), WindowSpec(5, 2.5), CONFIG)) == 23
    partial = window_bounds(frames_of(22.0), WindowSpec(5), CONFIG)
    assert len(partial) == 5 and partial[-1] == (1279, frames_of(22.0), 25.0)
    assert window_bounds(10, WindowSpec(5), CONFIG) == [(0, 10, 5.0)]  # shorter than a window: one


def test_row_ids_name_the_end_second_as_an_integer_when_it_is_one():
    bounds = window_bounds(frames_of(10.0), WindowSpec(2.5), CONFIG)
    assert window_row_ids("soundscape_X.ogg", bounds) == ["soundscape_X_2.5", "soundscape_X_5", "soundscape_X_7.5",
                                                          "soundscape_X_10"]
    assert window_row_ids("a/x.wav", bounds[:1]) == ["a/x_2.5"]


@pytest.mark.parametrize("seconds, hop, message", [
    (0, None, "window must be a positive number of seconds, got 0"),
    (5, 6, "hop between windows must be positive and at most the window of 5 s, got 6"),
])
def test_a_bad_window_is_one_sentence(seconds, hop, message):
    with pytest.raises(FreesoundError, match=re.escape(message)):
        WindowSpec(seconds, hop)


# ----------------------------------------------------------------------------- post-processing


def test_smoothing_renormalises_at_the_file_ends():
    probs = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    smoothed = smooth_windows(probs, [0.15, 0.7, 0.15])
    np.testing.assert_allclose(smoothed[0], [0.7 / 0.85, 0.0], rtol=1e-6)
    np.testing.assert_allclose(smoothed[1], [0.15, 0.15], rtol=1e-6)
    np.testing.assert_allclose(smoothed[3], [0.5 - 0.5 * 0.15 / 0.85, 0.5 + 0.5 * 0.15 / 0.85], rtol=1e-6)
    assert smoothed.dtype == np.float32
    np.testing.assert_array_equal(smooth_windows(probs, [1.0]), probs)
    wide = smooth_windows(probs, [0.1, 0.2, 0.4, 0.2, 0.1])
    np.testing.assert_allclose(wide[0], [0.4 / 0.7, 0.1 / 0.7], rtol=1e-6)


def test_file_rescaling_multiplies_by_the_file_max_to_a_power():
    probs = np.array([[0.2, 0.9], [0.4, 0.1]], dtype=np.float32)
    np.testing.assert_allclose(rescale_by_file_max(probs, 2.0), [[0.2 * 0.16, 0.9 * 0.81], [0.4 * 0.16, 0.1 * 0.81]],
                               rtol=1e-6)
    np.testing.assert_array_equal(rescale_by_file_max(probs, 0.0), probs)
    with pytest.raises(FreesoundError, match="file-rescaling power must be a non-negative number, got -1"):
        rescale_by_file_max(probs, -1)


def test_models_combine_by_gmean_mean_or_min():
    probs = np.array([[0.25, 0.5], [1.0, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(combine_models(probs, "gmean"), [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(combine_models(probs, "mean"), [0.625, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(combine_models(probs, "min"), [0.25, 0.5])
    with pytest.raises(FreesoundError, match="must be one of gmean, mean, min, got 'max'"):
        combine_models(probs, "max")


@pytest.mark.parametrize("text, message", [
    ("0.2,x,0.2", "comma-separated numbers"), ("0.5,0.5", "odd number of non-negative"),
    ("0.5,0,0.5", "centre smoothing weight"),
])
def test_bad_smoothing_weights_are_one_sentence(text, message):
    with pytest.raises(FreesoundError, match=message):
        parse_weights(text)


# ----------------------------------------------------------------------------- the Tagger


def test_a_window_is_predicted_as_the_clip_of_its_frames(scapes):
    tagger = scapes["tagger"]
    logmel = read_untrimmed_logmel(scapes["audio"] / "scape_a.wav", CONFIG)
    assert logmel.shape[1] == frames_of(12.0)  # untrimmed: every frame of the file
    probs, bounds = tagger.predict_windows([logmel], WindowSpec(5), "min")
    pieces, _ = split_windows(logmel, WindowSpec(5), CONFIG)
    assert [end for _, _, end in bounds[0]] == [5.0, 10.0, 15.0] and probs[0].shape == (3, len(CLASSES))
    # each window: every fold's tile mean on the window's frames, as for a clip of them
    expected = np.stack([[window.mean(axis=1)[0] for window in Tagger([model], CLASSES).tile_probabilities(pieces)]
                         for model in tagger.models])
    np.testing.assert_allclose(probs[0], expected.min(axis=0), rtol=0, atol=1e-6)


def test_frame_probabilities_of_a_sed_head_cover_the_clip(scapes):
    tagger = scapes["tagger"]
    logmel = read_untrimmed_logmel(scapes["audio"] / "scape_a.wav", CONFIG)
    times, probs = tagger.frame_probabilities(logmel)
    # 767 frames: 3 tiles of 256 (1 frame of padding), 16 output frames a tile of 16 frames each
    assert probs.shape == (2, 48, len(CLASSES)) and times.shape == (48,)
    np.testing.assert_allclose(times[:2], np.array([8, 24]) * 690 / 44100)
    assert np.all((probs > 0) & (probs < 1))
    plain = Tagger([create_model("aux_skip_attention", num_classes=3, base_size=4).eval()], CLASSES)
    with pytest.raises(FreesoundError, match=r'head = "mlp"\) has no frame-wise output'):
        plain.frame_probabilities(logmel)


def test_stackers_apply_per_window_as_to_a_clip_of_the_windows_frames(scapes):
    torch.manual_seed(0)
    stacker = create_model("fcnet", in_channels=3, num_classes=3, base_size=8, reduction_scale=1).eval()
    ensemble = EnsemblePredictor({"sedx": scapes["tagger"]}, {"mlp": [stacker]})
    logmel = read_untrimmed_logmel(scapes["audio"] / "scape_a.wav", CONFIG)
    probs, bounds = ensemble.predict_windows([logmel, logmel[:, :300]], WindowSpec(5))
    assert [len(clip) for clip in bounds] == [3, 1] and probs[0].shape == (3, len(CLASSES))
    # each window, stacker and blend included, is the ensemble's clip prediction on its frames
    pieces, _ = split_windows(logmel, WindowSpec(5), CONFIG)
    np.testing.assert_allclose(probs[0], ensemble.predict_spectrograms(pieces), rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs[1], ensemble.predict_spectrograms([logmel[:, :300]]), rtol=0, atol=1e-6)
    # the stacker reads the fold geometric mean whatever --combine is; levels combine by it
    levels = ensemble.level_probabilities(pieces)
    mean, _ = ensemble.predict_windows([logmel], WindowSpec(5), "mean")
    folds = scapes["tagger"].window_probabilities([logmel], WindowSpec(5))[0][0]
    np.testing.assert_allclose(mean[0], (folds.mean(axis=0) + levels["mlp"]) / 2, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the CLI


def test_predict_windows_writes_one_row_per_window(scapes, tmp_path):
    out = tmp_path / "windows.csv"
    result = run_cli("predict", "sedx", "--audio", scapes["audio"], "--work", scapes["work"], "--experiments",
                     scapes["experiments"], "--windows", "5", "--smooth", "0.15,0.7,0.15", "--file-rescale", "1",
                     "--out", out, "--device", "cpu", "--workers", "0")
    assert f"predicted 7 windows with 2 first-level and 0 stacker checkpoints -> {out}" in result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["row_id", *CLASSES]
    assert list(table.row_id) == ["scape_a_5", "scape_a_10", "scape_a_15", "scape_b_5", "scape_b_10", "scape_b_15",
                                  "scape_b_20"]
    paths = sorted(scapes["audio"].iterdir())
    expected = predict_file_windows(EnsemblePredictor({"sedx": scapes["tagger"]}), paths, WindowSpec(5),
                                    smooth=[0.15, 0.7, 0.15], file_rescale=1.0)
    np.testing.assert_allclose(table[CLASSES].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-6)


def test_window_options_without_windows_are_a_usage_error(scapes):
    result = run_cli("predict", "sedx", "--audio", scapes["audio"], "--work", scapes["work"], "--smooth", "1",
                     expect=2)
    assert "--hop, --combine, --smooth and --file-rescale go with --windows" in result.output
    result = run_cli("tag", scapes["audio"] / "scape_a.wav", "--experiment", "sedx", "--work", scapes["work"],
                     "--windows", "5", expect=2)
    assert "--windows, --hop and --out go with --timeline" in result.output


def test_tag_timeline_prints_windows_and_writes_csv_and_png(scapes, tmp_path):
    result = run_cli("tag", scapes["audio"] / "scape_a.wav", "--experiment", "sedx", "--work", scapes["work"],
                     "--timeline", "--top", "2", "--hop", "2.5", "--out", tmp_path)
    lines = result.output.splitlines()
    assert lines[0] == "scape_a.wav: 4 windows of 5 s every 2.5 s"
    assert [line.split(" s ")[0].split() for line in lines[1:5]] == [
        ["0.00-", "5.00"], ["2.50-", "7.50"], ["5.00-", "10.00"], ["7.50-", "12.50"]]
    assert all(len(line.split(" s  ")[1].split(", ")) == 2 for line in lines[1:5])
    table = pd.read_csv(tmp_path / "scape_a_timeline.csv")
    assert list(table.row_id) == ["scape_a_5", "scape_a_7.5", "scape_a_10", "scape_a_12.5"]
    assert list(table.columns[1:]) == CLASSES
    assert (tmp_path / "scape_a_timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "taken.ogg").write_bytes(b"")
    result = run_cli("tag", scapes["audio"] / "scape_a.wav", "--experiment", "sedx", "--work", scapes["work"],
                     "--timeline", "--out", tmp_path / "taken.ogg", expect=1)
    assert result.output.strip().endswith("taken.ogg is a file; the timelines' CSV and PNG files need a folder")
    assert "Traceback" not in result.output


def test_bad_smoothing_weights_are_named_as_written():
    from freesound.predict.postprocess import check_smoothing

    with pytest.raises(FreesoundError, match=r"0\.15,0\.7,0\.15\), got 0\.2,0\.6$"):
        check_smoothing([0.2, 0.6])
    with pytest.raises(FreesoundError, match=r"must be positive, got 1,0,1$"):
        check_smoothing([1.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- the kernel


def test_the_cpu4_estimate_decodes_ogg_and_counts_every_window(scapes):
    from kernel_build.estimate import estimate_kernels

    lines = []
    estimate = estimate_kernels(scapes["work"], experiment="sedx", experiments_dir=scapes["experiments"],
                                windows={"seconds": 5.0, "hop": 5.0}, target="cpu4", runtime="torch",
                                log=lines.append)["experiment"]
    # BirdCLEF's 600 soundscapes of one minute: 7,200 windows of 319-320 frames, 2 tiles each (256
    # frames at step 64), through 2 folds.
    assert estimate["files"] == 600 and estimate["clips"] == 7200 and estimate["tiles"] == {"sedx": 28800}
    assert estimate["audio_format"] == "ogg" and estimate["budget"] == 4800.0
    assert estimate["total_seconds"] == pytest.approx(
        estimate["model_seconds"] + estimate["input_seconds"] + estimate["frontend_seconds"])
    assert any(line.startswith("  front end (ogg files decoded, log-mels): ") for line in lines)
    assert any(line.startswith("  network inputs (the tiles' deltas): ") for line in lines)


def test_estimate_counts_each_windows_tiles_and_scales_to_the_targets_cores():
    from freesound.kaggle.budget import TARGETS, scale_to_cores
    from freesound.predict.windows import window_widths

    widths = window_widths([frames_of(60.0)], WindowSpec(5), CONFIG)
    assert len(widths) == 12 and set(widths) == {319, 320} and widths.sum() == frames_of(60.0)
    assert scale_to_cores(100.0, 2, 4) == 50.0
    assert TARGETS["cpu4"]["cores"] == 4 and TARGETS["cpu4"]["budget_seconds"] < TARGETS["cpu4"]["limit_seconds"] == 5400


def test_build_kernel_refuses_window_options_without_windows(scapes, tmp_path):
    result = run_cli("build-kernel", "--experiment", "sedx", "--work", scapes["work"], "--combine", "min", expect=2)
    assert "--hop, --combine, --smooth and --file-rescale go with --windows" in result.output


def test_build_kernel_for_birdclef_records_windows_competition_and_the_cpu4_budget(scapes, tmp_path):
    import json

    from test_kernel import embedded_manifest

    run_cli("build-kernel", "--experiment", "sedx", "--work", scapes["work"], "--out", tmp_path, "--windows", "5",
            "--smooth", "0.2,0.6,0.2", "--competition", "birdclef-2025", "--test-dir", "test_soundscapes",
            "--target", "cpu4")
    manifest = embedded_manifest((tmp_path / "kernel.py").read_text())
    assert manifest["windows"] == {"seconds": 5.0, "hop": 5.0, "combine": "gmean", "smooth": [0.2, 0.6, 0.2],
                                   "file_rescale": None}
    assert manifest["competition"] == {"name": "birdclef-2025", "test_dir": "test_soundscapes"}
    assert manifest["time_limit"] == 4800.0 and manifest["limit_seconds"] == 5400.0
    metadata = json.loads((tmp_path / "kernel-metadata.json").read_text())
    assert metadata["competition_sources"] == ["birdclef-2025"] and metadata["enable_gpu"] is False
    # Without windows the manifest is what it was: no new keys.
    run_cli("build-kernel", "--experiment", "sedx", "--work", scapes["work"], "--out", tmp_path / "plain")
    plain = embedded_manifest((tmp_path / "plain" / "kernel.py").read_text())
    assert "windows" not in plain and "competition" not in plain and "limit_seconds" not in plain
    # A window kernel for FSDKaggle2019's folders (fname rows) would stop on Kaggle: refused here.
    refused = run_cli("build-kernel", "--experiment", "sedx", "--work", scapes["work"], "--out", tmp_path / "no",
                      "--windows", "5", "--target", "cpu4", expect=1)
    assert "a window kernel reads a competition's soundscapes and its row_id sample_submission.csv" in refused.output
    assert not (tmp_path / "no").exists()
    assert json.loads((tmp_path / "plain" / "kernel-metadata.json").read_text())["enable_gpu"] is True


def test_a_window_kernel_short_of_time_leaves_the_last_soundscapes_out(scapes, monkeypatch):
    from freesound.kaggle.runtime import predict_windows_within_budget

    # Time passes only when a model runs: one second a tile. The silent warm-up costs 2 s and
    # scape_a (12 s: windows of 2, 2 and 1 tiles) 10 s with both folds; scape_b's 4 windows need
    # 8 s even with the cheapest plan (one fold, a step of one tile), and 8 s are left.
    clock = {"now": 0.0}
    real_forward = Tagger._forward

    def timed_forward(self, tiles):
        clock["now"] += len(tiles) * len(self.models)
        return real_forward(self, tiles)

    monkeypatch.setattr(Tagger, "_forward", timed_forward)
    lines = []
    paths = sorted(scapes["audio"].iterdir())
    result = predict_windows_within_budget(
        EnsemblePredictor({"sedx": scapes["tagger"]}), paths, [path.name for path in paths],
        {"seconds": 5.0, "hop": 5.0}, budget=20.0, clock=lambda: clock["now"], chunk_size=1, log=lines.append)
    assert list(result.predictions.index) == ["scape_a_5", "scape_a_10", "scape_a_15"] and result.failures == []
    assert result.filled == ["scape_b.wav"] and result.plans == [("tile step 64, all 2 folds, experiments sedx", 1)]
    assert lines[-2] == ("switching to plan 3 of 3: tile step 256, 1 of 2 folds, experiments sedx "
                         "(projected 20.0 s in all)")
    assert lines[-1] == ("warning: 8.0 s left, the next 1 soundscapes need about 8.0 s even with plan 3: the last 1 "
                         "get the silent window's prediction")


@pytest.mark.slow
def test_window_kernel_equals_local_predict_windows_in_the_sample_order(scapes, tmp_path, monkeypatch):
    from test_kernel import run_script

    from kernel_build import build_kernels
    from kernel_build.manifest import windows_entry

    windows = windows_entry(5, smooth=[0.15, 0.7, 0.15], file_rescale=1.0)
    competition = {"name": "birdclef-sim", "test_dir": "test_soundscapes"}
    lines = []
    written = build_kernels(scapes["work"], experiment="sedx", out_dir=tmp_path / "kernel", windows=windows,
                            competition=competition, target="cpu4", log=lines.append)
    assert any(line.startswith("  windows: 5 s every 5 s, models combined by gmean") for line in lines)
    root = tmp_path / "kaggle"
    shutil.copytree(scapes["audio"], root / "input" / "birdclef-sim" / "test_soundscapes")
    shutil.copytree(scapes["work"] / "experiments", root / "input" / "weights" / "experiments")
    (root / "working").mkdir()
    # BirdCLEF's rows, shuffled, and a soundscape that is not in the test folder.
    # scape_a_60 lies past its file's end: no window gives it.
    rows = ["scape_b_10", "scape_a_5", "scape_gone_5", "scape_b_5", "scape_a_15", "scape_b_20", "scape_a_10",
            "scape_b_15", "scape_a_60"]
    pd.DataFrame(0.5, index=pd.Index(rows, name="row_id"), columns=CLASSES).reset_index().to_csv(
        root / "input" / "birdclef-sim" / "sample_submission.csv", index=False)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch, as this module's: tiny models, busy CPUs
    result = run_script(written["kernel"], root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout + result.stderr
    submission = pd.read_csv(root / "working" / "submission.csv")
    assert list(submission.columns) == ["row_id", *CLASSES] and list(submission.row_id) == rows

    paths = sorted(scapes["audio"].iterdir())
    local = predict_file_windows(EnsemblePredictor({"sedx": scapes["tagger"]}), paths, WindowSpec(5),
                                 smooth=[0.15, 0.7, 0.15], file_rescale=1.0)
    submission = submission.set_index("row_id")
    predicted = submission.drop(index=["scape_gone_5", "scape_a_60"])
    np.testing.assert_allclose(predicted[CLASSES].to_numpy(), local.loc[predicted.index, CLASSES].to_numpy(),
                               rtol=0, atol=1e-5)
    # The missing soundscape is predicted from silence, the row past a file's end gets the same.
    silent = scapes["tagger"].predict_windows([silent_logmel(CONFIG)], WindowSpec(5))[0][0]
    for row in ("scape_gone_5", "scape_a_60"):
        np.testing.assert_allclose(submission.loc[row, CLASSES].to_numpy(), silent[0] ** 2, rtol=0, atol=1e-5)
    assert "9 rows of 3 soundscapes" in result.stdout
    assert re.search(r"undecodable soundscapes \(predicted from silence\): 1\n  scape_gone: no such file", result.stdout)
    assert "time budget: 4800 s (Kaggle's limit on this device: 5400 s)" in result.stdout
    assert "1 rows no window gave, given the silent window's prediction: scape_a_60" in result.stdout


def test_a_window_longer_than_every_stacker_training_clip_is_named():
    from freesound.ensembling.stack import window_tiles_warning

    assert window_tiles_warning(1, np.array([1, 4, 2]), "sed") is None
    assert window_tiles_warning(4, np.array([1, 4, 2]), "sed") is None
    assert window_tiles_warning(5, np.array([1, 4, 2]), "sed") == (
        "a window holds 5 tiles of 'sed', and its stackers learnt from means of at most 4 (its longest out-of-fold "
        "clip): their window predictions go beyond what they were trained on")


def test_submissions_refuse_models_of_other_classes_in_one_sentence():
    from freesound.kaggle.runtime import to_submission, to_window_submission

    predictions = pd.DataFrame({"a": [0.1], "c": [0.2]}, index=pd.Index(["x_5"], name="row_id"))
    message = (r"the models' classes do not match sample_submission.csv: missing \['b'\], not in the file \['c'\]")
    with pytest.raises(FreesoundError, match=message):
        to_window_submission(predictions, pd.DataFrame({"row_id": ["x_5"], "a": [0.0], "b": [0.0]}), np.zeros(2))
    with pytest.raises(FreesoundError, match=message):
        to_submission(predictions.rename_axis("fname"), pd.DataFrame({"fname": ["x_5"], "a": [0.0], "b": [0.0]}))
    filled, rows = to_window_submission(predictions.rename(columns={"c": "b"}),
                                        pd.DataFrame({"row_id": ["x_10", "x_5"], "a": [0.0] * 2, "b": [0.0] * 2}),
                                        np.array([0.5, 0.5]))
    assert list(filled["row_id"]) == ["x_10", "x_5"] and rows == ["x_10"]
    np.testing.assert_allclose(filled[["a", "b"]].to_numpy(), [[0.5, 0.5], [0.1, 0.2]], rtol=0, atol=1e-7)


def test_windows_closer_than_the_frames_are_refused():
    from freesound.predict.windows import window_bounds

    config = AudioConfig()  # frames 690 / 44100 = 0.01565 s apart
    assert len(window_bounds(3841, WindowSpec(0.02), config)) == 3005  # 3840 frames after the first: 60.08 s
    with pytest.raises(FreesoundError, match=r"windows every 0\.001 s are closer than the log-mel's frames "
                                             r"\(0\.01565 s apart\)"):
        window_bounds(3841, WindowSpec(0.001), config)


def test_the_window_options_offer_the_combinations_postprocess_has():
    from freesound.cli import main
    from freesound.predict.postprocess import COMBINE

    for command in ("predict", "build-kernel"):
        combine = next(p for p in main.commands[command].params if p.name == "combine")
        assert tuple(combine.type.choices) == COMBINE
