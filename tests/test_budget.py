"""The kernel's time budget: the plan ladder, the projection, and a simulated slow run that must
still write a complete submission within a tiny budget."""

import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from freesound.config import InputConfig
from freesound.ensembling.specs import experiment_spec
from freesound.kaggle import COMPETITION, run_kernel
from freesound.kaggle.budget import (
    DEFAULT_BUDGET_SECONDS, Plan, budget_seconds, choose_plan, mean_tiles, plan_ladder, plan_units, project_seconds,
)
from freesound.predict import EnsemblePredictor, Tagger
from kernel_build.manifest import build_manifest
from test_kernel import CLASSES, write_weights

#: Simulated seconds one tile costs through one fold model.
TILE_SECONDS = 0.05
#: Tagger's forward pass, before a test makes it slow.
REAL_FORWARD = Tagger._forward
DURATIONS = [1.0, 9.0, 2.0, 6.0, 12.0, 0.5, 4.0, 8.0, 3.0, 10.0, 5.0, 7.0, 1.5, 11.0, 2.5, 6.5]


def test_ladder_gives_up_tile_step_then_folds_then_the_lowest_ranked_experiments():
    ladder = plan_ladder({"a": 5, "b": 5, "c": 3}, stackers=True, ranking=["b", "a", "c"])
    every = (("a", 5), ("b", 5), ("c", 3))
    assert ladder == [
        Plan(64, every, True), Plan(128, every, True), Plan(256, every, True),
        Plan(256, (("a", 4), ("b", 4), ("c", 3)), True),
        Plan(256, (("a", 3), ("b", 3), ("c", 3)), True),
        Plan(256, (("a", 2), ("b", 2), ("c", 2)), True),
        Plan(256, (("a", 1), ("b", 1), ("c", 1)), True),
        Plan(256, (("a", 1), ("b", 1)), False),    # c ranked last goes first, and the stackers with it
        Plan(256, (("b", 1),), False),
    ]
    widths = [60, 300, 700, 1200]
    costs = [sum(plan_units(plan, widths).values()) for plan in ladder]
    assert costs == sorted(costs, reverse=True) and costs[-1] == mean_tiles(widths, 256)
    assert ladder[3].describe(ladder[0]) == "tile step 256, all 3 folds, 4 of 5 folds, experiments a, b, c, stackers"
    assert ladder[-1].describe(ladder[0]) == "tile step 256, 1 of 5 folds, experiments b (a, c dropped), no stackers"
    # Without a ranking the last experiments of the ensemble go first; a step of 256 has no larger one.
    assert plan_ladder({"x": 1, "y": 1}, stackers=False, tile_step=256) == [
        Plan(256, (("x", 1), ("y", 1)), False), Plan(256, (("x", 1),), False)]


def test_mean_tiles_and_projection_hand_checked():
    # 100 frames: one tile at any step; 1000 frames: ceil((1000 - 192) / 64) = 13 at step 64,
    # ceil((1000 - 128) / 128) = 7 at 128.
    assert mean_tiles([100, 1000], 64) == 7.0 and mean_tiles([100, 1000], 128) == 4.0
    plan = Plan(64, (("a", 2), ("b", 1)), True)
    assert plan_units(plan, [100, 1000]) == {"a": 14.0, "b": 7.0}
    # 10 clips x (0.5 s + 14 units x 0.1 s + 7 units x 1 s) = 89 s
    assert project_seconds(plan, [100, 1000], 10, {"a": 0.1, "b": 1.0}, 0.5) == pytest.approx(89.0)
    with pytest.raises(ValueError, match="no clip widths"):
        mean_tiles([], 64)


def test_choose_plan_takes_the_first_that_fits_and_never_goes_back():
    ladder = plan_ladder({"a": 2}, stackers=False)   # step 64, 128, 256, then 1 fold at 256
    widths, rates = [1000], {"a": 1.0}
    # Per clip: 26 units at step 64, 14 at 128, 8 at 256, 4 with one fold.
    assert choose_plan(ladder, 0, 100.0, widths, 1, rates, 0.0) == (0, 26.0)
    assert choose_plan(ladder, 0, 20.0, widths, 1, rates, 0.0) == (1, 14.0)
    assert choose_plan(ladder, 2, 100.0, widths, 1, rates, 0.0) == (2, 8.0)     # never back up the ladder
    assert choose_plan(ladder, 0, 8.0, widths, 1, rates, 0.0) == (3, 4.0)      # 8 s would leave no headroom
    assert choose_plan(ladder, 0, 1.0, widths, 1, rates, 0.0) == (3, 4.0)      # nothing fits: the cheapest


def test_budget_seconds():
    assert budget_seconds(None, "cuda") == DEFAULT_BUDGET_SECONDS["cuda"] == 3000.0
    assert budget_seconds(None, "cpu") == budget_seconds(None, "meta") == 12600.0
    assert budget_seconds(600, "cuda") == 600.0
    assert budget_seconds({"cpu": 90}, "cpu") == 90.0 and budget_seconds({"cpu": 90}, "cuda") == 3000.0
    for bad in (0, -5, "1h", True, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            budget_seconds(bad, "cpu")


class FakeClock:
    """Seconds that pass only when the simulated device works (and a microsecond per reading)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1e-6
        return self.now


@pytest.fixture(scope="module")
def budget_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("budget")
    write_weights(base / "work" / "experiments")
    shutil.copytree(base / "work" / "experiments", base / "root" / "input" / "weights")
    competition = base / "root" / "input" / COMPETITION
    (competition / "test").mkdir(parents=True)
    rng = np.random.default_rng(1)
    fnames = [f"clip{index:02d}.wav" for index in range(len(DURATIONS))]
    for fname, seconds in zip(fnames, DURATIONS):
        t = np.arange(int(seconds * 44100)) / 44100
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(competition / "test" / fname, clip.astype(np.float32), 44100, subtype="PCM_16")
    (competition / "test" / "clip03.wav").write_bytes(b"not audio")   # predicted from silence, as ever
    pd.DataFrame(0.0, index=pd.Index(fnames, name="fname"), columns=CLASSES).reset_index().to_csv(
        competition / "sample_submission.csv", index=False)
    spec = {"name": "ens",
            "experiments": {name: experiment_spec(name, base / "work")["experiments"][name] for name in ("exp_a", "exp_b")},
            "stackers": {"ens_stacker": ["ens_stacker/fold_0/model.pt", "ens_stacker/fold_1/model.pt"]}}
    return base / "root", spec, fnames


def simulated_device(monkeypatch) -> FakeClock:
    """A fake clock on which a tile costs ``TILE_SECONDS`` per fold model."""
    clock = FakeClock()

    def slow_forward(self, tiles):
        clock.now += TILE_SECONDS * len(tiles) * len(self.models)
        return REAL_FORWARD(self, tiles)

    monkeypatch.setattr(Tagger, "_forward", slow_forward)
    return clock


def simulated_run(budget_tree, tmp_path, monkeypatch, time_limit, ranking=None):
    """``run_kernel`` on a device where a tile costs ``TILE_SECONDS`` per fold model, on a fake clock."""
    root, spec, fnames = budget_tree
    (root / "working").mkdir(exist_ok=True)
    clock = simulated_device(monkeypatch)
    manifest = build_manifest(spec, root / "input" / "weights")
    manifest["time_limit"] = time_limit
    if ranking:
        manifest["ranking"] = ranking
    lines = []
    summary = run_kernel(manifest, root, device="cpu", workers=0, chunk_size=4, clock=clock, runtime="torch",
                         log=lines.append)
    submission = pd.read_csv(root / "working" / "submission.csv")
    (root / "working" / "submission.csv").unlink()
    return summary, submission, lines, manifest


def test_slow_run_switches_to_a_named_cheaper_plan_and_finishes_in_budget(budget_tree, tmp_path, monkeypatch):
    root, spec, fnames = budget_tree
    # Ample time: the full ensemble throughout, no switch.
    summary, submission, lines, _ = simulated_run(budget_tree, tmp_path, monkeypatch, 10_000)
    assert [plan for plan, _ in summary["plans"]] == ["tile step 64, all 2 folds, experiments exp_a, exp_b, stackers"]
    assert summary["filled"] == [] and not any("switching" in line for line in lines)
    full_seconds = summary["seconds"]
    assert summary["projection"]["full_seconds"] == pytest.approx(full_seconds, rel=0.3)

    # A budget of 45 % of that: a cheaper plan, named, and a complete submission within it.
    budget = 0.45 * full_seconds
    summary, submission, lines, manifest = simulated_run(budget_tree, tmp_path, monkeypatch, budget)
    assert list(submission["fname"]) == fnames and list(submission.columns) == ["fname", *CLASSES]
    assert np.isfinite(submission[CLASSES].to_numpy()).all()
    assert summary["seconds"] <= budget and summary["time_limit"] == budget and summary["filled"] == []
    assert len(summary["plans"]) >= 2 and sum(clips for _, clips in summary["plans"]) == len(fnames)
    first_plan, first_clips = summary["plans"][0]
    assert first_plan.startswith("tile step 64, all 2 folds") and first_clips == 4   # the first part: full
    switches = [line for line in lines if line.startswith("switching to plan")]
    assert switches and summary["plans"][1][0] in switches[0]
    assert summary["projection"]["after_clips"] == 4 and summary["projection"]["full_seconds"] > budget
    assert any(line.startswith("plan: ") for line in lines) and any("budget" in line for line in lines)

    # Every row was predicted by the plan the summary names for it.
    paths = [root / "input" / COMPETITION / "test" / fname for fname in fnames]
    full = EnsemblePredictor.from_spec(spec, lambda p: root / "input" / "weights" / p)
    by_row = submission.set_index("fname")[CLASSES]
    row = 0
    for description, clips in summary["plans"]:
        plan = next(p for p in plan_ladder({"exp_a": 2, "exp_b": 2}, True) if p.describe(
            plan_ladder({"exp_a": 2, "exp_b": 2}, True)[0]) == description)
        predictor = full.subset(dict(plan.folds), plan.tile_step, plan.stackers)
        expected = predictor.predict_files(paths[row:row + clips], on_error="silence")
        np.testing.assert_allclose(by_row.iloc[row:row + clips].to_numpy(), expected.to_numpy(), atol=1e-5)
        row += clips


def test_a_budget_too_small_for_any_plan_still_writes_every_row_in_time(budget_tree, tmp_path, monkeypatch):
    root, spec, fnames = budget_tree
    # The full ensemble takes 10.8 simulated seconds, its first chunk of 4 clips 1.8 s (plus 0.2 s
    # of warm-up): 0.6 s are left for 12 clips, which even the cheapest plan cannot predict all of.
    budget = 2.6
    summary, submission, lines, _ = simulated_run(budget_tree, tmp_path, monkeypatch, budget,
                                                  ranking=["exp_b", "exp_a"])
    assert summary["seconds"] <= budget
    assert list(submission["fname"]) == fnames and summary["filled"] and summary["filled"] == fnames[-len(summary["filled"]):]
    predicted = submission.set_index("fname").drop(index=summary["filled"])
    filled = submission.set_index("fname").loc[summary["filled"]]
    np.testing.assert_allclose(filled.to_numpy(), np.tile(predicted.to_numpy().mean(axis=0), (len(filled), 1)),
                               atol=1e-6)
    # The cheapest plan keeps the experiment ranked first.
    assert summary["plans"][-1][0] == "tile step 256, 1 of 2 folds, experiments exp_b (exp_a dropped), no stackers"
    assert any(line.startswith("warning:") and "mean prediction" in line for line in lines)
    assert any(line == f"out of time: {len(summary['filled'])} clips given the mean prediction" for line in lines)


def test_build_kernel_writes_the_time_limit_and_the_ranking(budget_tree, tmp_path):
    import json

    from conftest import run_cli
    from test_kernel import embedded_manifest

    root, spec, _ = budget_tree
    work = root.parent / "work"
    (work / "predictions" / "exp_b").mkdir(parents=True, exist_ok=True)
    (work / "predictions" / "exp_b" / "oof_scores.json").write_text(json.dumps({"lwlrap": 0.8}))
    result = run_cli("build-kernel", "--experiment", "exp_a", "--work", work, "--out", tmp_path / "k",
                     "--time-limit", "900")
    manifest = embedded_manifest((tmp_path / "k" / "kernel.py").read_text())
    assert manifest["time_limit"] == 900.0 and manifest["ranking"] == ["exp_a"]
    assert "time budget: 900 s" in result.output
    # By default, one budget per device under Kaggle's limits; scored experiments rank first.
    from kernel_build import build_kernels

    lines = []
    build_kernels(work, ensemble=spec, out_dir=tmp_path / "d", log=lines.append)
    manifest = embedded_manifest((tmp_path / "d" / "ensemble_kernel.py").read_text())
    assert manifest["time_limit"] == {"cuda": 3000.0, "cpu": 12600.0}
    assert manifest["ranking"] == ["exp_b", "exp_a"]
    assert any("time budget: 3000 s on cuda, 12600 s on cpu" in line for line in lines)
    run_cli("build-kernel", "--experiment", "exp_a", "--work", work, "--out", tmp_path / "k", "--time-limit", "0",
            expect=2)


def test_estimate_counts_the_tiles_and_uses_a_target_rate(budget_tree, tmp_path):
    from kernel_build.estimate import estimate_spec, test_widths

    from conftest import run_cli

    root, spec, _ = budget_tree
    # 100 clips of 36 s in 1 h: 1 + 36 * 44100 // 690 = 2301 frames, ceil((2301 - 192) / 64) = 33 tiles.
    widths = test_widths(100, 1.0)
    assert set(widths) == {2301}
    estimate = estimate_spec(spec, root / "input" / "weights", clips=100, hours=1.0, tiles_per_second=50.0,
                             runtime="torch")
    assert estimate["tiles"] == {"exp_a": 100 * 33 * 2, "exp_b": 100 * 33 * 2}
    assert estimate["model_seconds"] == pytest.approx(4 * 100 * 33 / 50.0)
    # The tiles' inputs are built once per experiment (not per fold), in the kernel's own process.
    assert 0 < estimate["input_seconds"] < estimate["model_seconds"]
    assert estimate["total_seconds"] == pytest.approx(
        max(estimate["model_seconds"] + estimate["input_seconds"], estimate["frontend_seconds"]))
    assert estimate["budget"] == 3000.0 and estimate["plan"] == "the full ensemble"
    tight = estimate_spec(spec, root / "input" / "weights", clips=100, hours=1.0, tiles_per_second=50.0,
                          time_limit=100, runtime="torch")
    assert tight["plan"].startswith("tile step 256") and tight["plan_seconds"] <= 0.95 * 100
    work = root.parent / "work"
    result = run_cli("build-kernel", "--experiment", "exp_a", "--work", work, "--out", tmp_path / "k", "--estimate",
                     "--clips", "10", "--audio-hours", "0.1")
    assert "estimate for exp_a on 10 clips (0.10 h of audio), this machine" in result.output
    assert "exp_a: 660 tiles through its folds" in result.output and "expected kernel time:" in result.output
    assert not (tmp_path / "k").exists()
    run_cli("build-kernel", "--experiment", "exp_a", "--work", work, "--clips", "10", expect=2)


def test_a_whole_clip_model_counts_its_frames_in_tiles():
    # One pass over each clip, padded to one tile: 100 frames cost a tile, 1000 cost 1000/256.
    assert mean_tiles([100, 1000], 64, 256, whole_clip=True) == pytest.approx((256 + 1000) / 2 / 256)
    plan = Plan(64, (("tiled", 1), ("whole", 2)), False)
    units = plan_units(plan, [100, 1000], {"whole": InputConfig(whole_clip=True)})
    assert units == {"tiled": 7.0, "whole": pytest.approx(2 * 1256 / 512)}


SCAPE_SECONDS = [10.0] * 6 + [15.0, 5.0]
WINDOW_COMPETITION = {"name": "birdclef-sim", "test_dir": "test_soundscapes"}


@pytest.fixture(scope="module")
def window_tree(budget_tree, tmp_path_factory):
    """The budget tree's ensemble under a BirdCLEF-style competition of short soundscapes."""
    root, spec, _ = budget_tree
    base = tmp_path_factory.mktemp("window-budget")
    (base / "input").mkdir()
    (base / "input" / "weights").symlink_to(root / "input" / "weights")
    scapes = base / "input" / WINDOW_COMPETITION["name"] / WINDOW_COMPETITION["test_dir"]
    scapes.mkdir(parents=True)
    rng = np.random.default_rng(2)
    rows, paths = [], []
    for index, seconds in enumerate(SCAPE_SECONDS):
        t = np.arange(int(seconds * 44100)) / 44100
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(t.size)
        paths.append(scapes / f"scape_{index:02d}.wav")
        sf.write(paths[-1], clip.astype(np.float32), 44100, subtype="PCM_16")
        rows += [f"scape_{index:02d}_{end}" for end in range(5, int(seconds) + 1, 5)]
    pd.DataFrame(0.0, index=pd.Index(rows, name="row_id"), columns=CLASSES).reset_index().to_csv(
        scapes.parent / "sample_submission.csv", index=False)
    return base, spec, rows, paths


@pytest.mark.slow
def test_a_slow_window_kernel_switches_to_a_cheaper_plan_and_predicts_every_soundscape(window_tree, monkeypatch):
    from kernel_build.manifest import windows_entry

    from freesound.predict import WindowSpec, predict_file_windows

    root, spec, rows, paths = window_tree
    (root / "working").mkdir(exist_ok=True)
    manifest = build_manifest(spec, root / "input" / "weights", windows=windows_entry(5, smooth=[0.25, 0.5, 0.25]),
                              competition=WINDOW_COMPETITION)

    def run(time_limit):
        lines = []
        summary = run_kernel({**manifest, "time_limit": time_limit}, root, device="cpu", workers=0, chunk_size=2,
                             clock=simulated_device(monkeypatch), runtime="torch", log=lines.append)
        return summary, pd.read_csv(root / "working" / "submission.csv"), lines

    summary, _, lines = run(10_000)
    full_plan = "tile step 64, all 2 folds, experiments exp_a, exp_b, stackers"
    assert summary["plans"] == [(full_plan, len(paths))] and not any("switching" in line for line in lines)
    full_seconds = summary["seconds"]
    # Projected after the first chunk of 2 soundscapes, each window counted as a clip.
    assert summary["projection"]["after_clips"] == 2
    assert summary["projection"]["full_seconds"] == pytest.approx(full_seconds, rel=0.3)

    budget = 0.6 * full_seconds
    summary, submission, lines = run(budget)
    assert summary["seconds"] <= budget and summary["left_out"] == [] and summary["filled"] == []
    assert list(submission["row_id"]) == rows and np.isfinite(submission[CLASSES].to_numpy()).all()
    assert summary["plans"][0] == (full_plan, 2) and len(summary["plans"]) >= 2
    assert sum(files for _, files in summary["plans"]) == len(paths)
    assert any(line.startswith("switching to plan") and summary["plans"][1][0] in line for line in lines)
    assert any(line == f"plan: {summary['plans'][1][0]}: {summary['plans'][1][1]} soundscapes" for line in lines)

    # Each soundscape's rows are what local predict --windows gives with the plan named for it.
    full = EnsemblePredictor.from_spec(spec, lambda p: root / "input" / "weights" / p)
    ladder = plan_ladder({"exp_a": 2, "exp_b": 2}, True)
    by_row, done = submission.set_index("row_id")[CLASSES], 0
    for description, files in summary["plans"]:
        plan = next(p for p in ladder if p.describe(ladder[0]) == description)
        local = predict_file_windows(full.subset(dict(plan.folds), plan.tile_step, plan.stackers),
                                     paths[done:done + files], WindowSpec(5), smooth=[0.25, 0.5, 0.25])
        np.testing.assert_allclose(by_row.loc[local.index].to_numpy(), local[CLASSES].to_numpy(), atol=1e-5)
        done += files


def test_the_estimate_counts_a_whole_clip_models_frames(tmp_path):
    from kernel_build.estimate import estimate_spec, format_estimate, test_widths

    from test_kernel import save_fold

    save_fold(tmp_path / "whole/fold_0/model.pt", "aux_skip_attention", {"num_classes": len(CLASSES), "base_size": 4},
              seed=0, network_input={"whole_clip": True, "tile_frames": 64})
    # 10 clips of 36 s: 2301 frames each, one pass of 2301 / 64 tiles' worth of frames.
    assert set(test_widths(10, 0.1)) == {2301}
    estimate = estimate_spec({"name": "whole", "experiments": {"whole": ["whole/fold_0/model.pt"]}}, tmp_path,
                             clips=10, hours=0.1, tiles_per_second=50.0, runtime="torch")
    assert estimate["whole_clip"] == ["whole"] and estimate["tiles"] == {"whole": round(10 * 2301 / 64)}
    assert estimate["model_seconds"] == pytest.approx(10 * 2301 / 64 / 50.0)
    assert "whole: 360 tiles' worth of frames in whole-clip passes through its folds" in "\n".join(
        format_estimate("whole", estimate, 50.0))
