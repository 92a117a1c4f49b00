"""``make demo``: the whole chain on a synthetic dataset, on a CPU, in minutes.

Each step calls the same library function as its CLI command and is skipped when its output
already exists and is current (synthesized data, cached features, folds, trained folds), so a
second run only redoes prediction, stacking, the kernels and the summary. A dataset from an older
synth generator is synthesized again and every experiment retrained; an experiment whose
settings changed is retrained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from freesound.config import load_ensemble, load_experiment
from freesound.data.dataset import load_dataset, multi_hot, read_labels_csv
from freesound.data.features import cache_features, load_features
from freesound.data.folds import make_folds, write_folds
from freesound.data.synth import read_synth_manifest, synth_manifest, synthesize_dataset
from freesound.ensembling.specs import ensemble_spec
from freesound.ensembling.stack import train_stackers
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv, atomic_write_text
from freesound.kaggle import COMPETITION
from freesound.metrics import lwlrap
from freesound.paths import folds_path, predictions_dir, weights_root
from freesound.predict import EnsemblePredictor
from freesound.tools.plots import plot_augmentations, report
from freesound.training.baseline import fit_baseline, predict_baseline
from freesound.training.oof import predict_oof
from freesound.training.trainer import resume_conflicts, train_experiment

#: Big enough for the scores to mean something, small enough for 2 CPU cores.
DEMO_SIZE = {"num_classes": 10, "num_curated": 300, "num_noisy": 200, "num_test": 150}
DEMO_FOLDS = 3


def run_demo(work="data/demo", *, experiments_dir="experiments", ensemble="ensemble", kernel_dir="kernel",
             workers: int = 2, seed: int = 0, log=print) -> dict:
    """Synthesize, train, stack, blend, build and run the kernels; return the summary figures."""
    started = time.perf_counter()
    work = Path(work)
    data_dir = work / "synth"
    config = load_ensemble(ensemble, experiments_dir)
    # An earlier run's dataset is reused only if this freesound would synthesize the same one,
    # and its trained folds only if they were trained on it with the same settings.
    fresh_data = read_synth_manifest(data_dir) != synth_manifest(seed=seed, **DEMO_SIZE)
    if fresh_data:
        log(f"[1/8] synthesizing a dataset in {data_dir}")
        synthesize_dataset(data_dir, seed=seed, workers=workers, **DEMO_SIZE)
    dataset = load_dataset(data_dir)
    log("[2/8] log-mel features")
    failures = cache_features(dataset, work, workers=workers).failures
    if failures:
        raise FreesoundError(f"{len(failures)} demo clips could not be decoded, e.g. {failures[0]}")
    if fresh_data or not folds_path(work).is_file():
        write_folds(work, make_folds(dataset.curated.fname, n_folds=DEMO_FOLDS, seed=42))
    cv = {}
    for step, name in enumerate(config.experiments):
        log(f"[3/8] training {name} ({step + 1}/{len(config.experiments)})")
        experiment = load_experiment(name, experiments_dir)
        changed = sorted({key for fold in range(DEMO_FOLDS) for key in resume_conflicts(experiment, work, fold)})
        if changed:
            log(f"{name}'s settings changed since its last demo training ({', '.join(changed)}): training it afresh")
        train_experiment(experiment, dataset, work, resume=not (fresh_data or changed), log=log)
        cv[name] = predict_oof(name, dataset, work, log=log)["lwlrap"]
    log(f"[4/8] stacking {ensemble}")
    cv.update(train_stackers(config, dataset, work, log=log))

    log("[5/8] predicting the test set")
    spec = ensemble_spec(config, work)
    predictor = EnsemblePredictor.from_spec(spec, lambda p: weights_root(work) / p)
    local = predictor.predict_files(dataset.paths("test"), on_error="silence")
    test_csv = predictions_dir(work, config.name) / "test.csv"
    atomic_write_csv(test_csv, local.reset_index())
    labels = read_labels_csv(data_dir / "test_labels.csv", dataset.classes).set_index("fname")
    truth = multi_hot(labels.loc[local.index, "labels"], dataset.classes)
    test_score = lwlrap(truth, local.to_numpy())
    baseline_score = _baseline_score(dataset, work, truth, local.index)

    log("[6/8] building the kernels")
    from kernel_build import build_kernels

    kernels = build_kernels(work, experiment=config.experiments[0], ensemble=config.name, out_dir=kernel_dir,
                            experiments_dir=experiments_dir, log=log)
    log("[7/8] running the ensemble kernel in a simulated Kaggle tree")
    kernel_diff = _run_kernel_locally(Path(kernels["ensemble_kernel"]), dataset, work, local)

    log("[8/8] plots")
    pngs = []
    for name in config.experiments:
        pngs += report(name, work)["pngs"]
    example = load_features(dataset, work, "train_curated", [dataset.curated.fname[0]])[0]
    pngs.append(plot_augmentations(example, predictions_dir(work, config.name) / "augmentations.png", seed=seed))
    summary = {"cv": cv, "test_lwlrap": test_score, "baseline_test_lwlrap": baseline_score,
               "kernel_max_diff": kernel_diff, "test_csv": str(test_csv), "kernels": {k: str(v) for k, v in kernels.items()},
               "pngs": [str(p) for p in pngs], "seconds": time.perf_counter() - started}
    atomic_write_text(work / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _baseline_score(dataset, work, truth, test_fnames) -> float:
    """Test lwlrap of the logistic-regression baseline trained on every curated and noisy clip."""
    train = load_features(dataset, work, "train_curated") + load_features(dataset, work, "train_noisy")
    targets = np.concatenate([multi_hot(dataset.curated.labels, dataset.classes),
                              multi_hot(dataset.noisy.labels, dataset.classes)])
    model = fit_baseline(train, targets)
    return lwlrap(truth, predict_baseline(model, load_features(dataset, work, "test", list(test_fnames))))


def _run_kernel_locally(script: Path, dataset, work: Path, local: pd.DataFrame) -> float:
    """Run a kernel script against a fake ``/kaggle`` tree; return max |kernel - local|."""
    root = work / "kaggle"
    shutil.rmtree(root, ignore_errors=True)
    competition = root / "input" / COMPETITION
    competition.mkdir(parents=True)
    shutil.copytree(dataset.root / "test", competition / "test")
    shutil.copy(dataset.root / "sample_submission.csv", competition)
    # As `kaggle datasets create --dir-mode zip` serves it: one folder deeper.
    shutil.copytree(weights_root(work), root / "input" / "freesound-weights" / "experiments",
                    ignore=shutil.ignore_patterns("*.csv", "*.toml"))
    (root / "working").mkdir()
    env = {**os.environ, "FREESOUND_KAGGLE_ROOT": str(root.resolve()), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(script.resolve())], cwd=root / "working", env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise FreesoundError(f"the kernel failed: {result.stderr.strip().splitlines()[-1]}")
    submission = pd.read_csv(root / "working" / "submission.csv").set_index("fname")
    return float(np.abs(submission.loc[local.index].to_numpy() - local.to_numpy()).max())


def format_summary(summary: dict) -> str:
    lines = ["", "CV lwlrap (out of fold):"]
    lines += [f"  {name:<24} {score:.4f}" for name, score in summary["cv"].items()]
    lines += [
        f"test lwlrap: {summary['test_lwlrap']:.4f}  (baseline, logistic regression on band mean/std: "
        f"{summary['baseline_test_lwlrap']:.4f})",
        f"kernel vs local predict: max |diff| {summary['kernel_max_diff']:.2e}",
        f"test predictions: {summary['test_csv']}",
        *[f"{kind}: {path}" for kind, path in summary["kernels"].items()],
        *[f"plot: {path}" for path in summary["pngs"]],
        f"done in {summary['seconds'] / 60:.1f} min",
    ]
    return "\n".join(lines)
