"""Real recordings end to end: the Free Spoken Digit Dataset through the CLI, scored two ways.

    .venv/bin/python benchmarks/bench_real.py [--fsdd DIR] [--work DIR] [--experiment fsdd]
                                              [--folds 3] [--epochs N] [--quick] [--resume]

Stages, each a ``freesound`` command run as a subprocess and timed in wall and CPU seconds:
``prepare`` (file-name pattern ``{label}_{group}_{index}.wav``; index 0-4 is the dataset's own test
split), ``features``, ``make-folds --group-by group`` (speakers kept apart), ``train`` (every fold,
then the out-of-fold prediction), ``predict`` (the test split, the folds' geometric mean).

Scores, as top-1 accuracy and lwlrap:

(a) the dataset's own split: the 300 test clips (index 0-4 of every speaker), predicted by the
    fold models, which heard every speaker (the split's speakers overlap);
(b) held-out speakers: every training clip predicted by the fold model that never heard its
    speaker (out of fold, folds grouped by speaker).

Beside them, the band-statistics baseline (``freesound.training.baseline``: logistic regression
on each mel band's mean and std) on the same features and folds, and chance (accuracy 1/C;
lwlrap H_C/C, the mean of 1/rank for a uniformly random rank of the one true class).

Torch runs on one thread (``OMP_NUM_THREADS=1``) while the DataLoader worker prepares batches on
the other core: on a shared 2-core machine, two torch threads were 4x slower (see fsdd.toml).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, header, limit_threads, table  # noqa: E402

limit_threads(1)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from freesound.data.dataset import load_dataset, multi_hot  # noqa: E402
from freesound.data.features import load_features  # noqa: E402
from freesound.metrics import lwlrap  # noqa: E402
from freesound.training.baseline import fit_baseline, predict_baseline  # noqa: E402

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def children_cpu_seconds() -> float:
    """User plus system CPU seconds of this process's finished children (every worker included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stage(name: str, args: list, times: dict, log, cpu_times: dict) -> str:
    """Run ``python -m freesound ARGS``; record its wall and CPU time; fail loudly with its output.

    CPU time (the stage's processes, DataLoader workers included) is what a comparison of
    training costs on a shared machine can rely on: wall time grows with the neighbours' load.
    """
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    result = subprocess.run([sys.executable, "-m", "freesound", *map(str, args)], cwd=REPO, env=os.environ.copy(),
                            capture_output=True, text=True)
    times[name] = time.perf_counter() - start
    cpu_times[name] = children_cpu_seconds() - cpu_start
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    log(f"[{name}: {times[name]:.0f} s, {cpu_times[name]:.0f} CPU s] " + (lines[-1] if lines else ""))
    if result.returncode != 0:
        sys.exit(f"{name} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def scores(truth: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1 accuracy (single-label truth) and lwlrap."""
    return {"accuracy": float((probs.argmax(1) == truth.argmax(1)).mean()), "lwlrap": float(lwlrap(truth, probs))}


def chance(num_classes: int) -> dict:
    """Expected scores of uniformly random scores on single-label data."""
    return {"accuracy": 1.0 / num_classes, "lwlrap": float(np.mean(1.0 / np.arange(1, num_classes + 1)))}


def probabilities(csv_path, fnames, classes) -> np.ndarray:
    frame = pd.read_csv(csv_path, dtype={"fname": str}).set_index("fname")
    return frame.loc[list(fnames), list(classes)].to_numpy(dtype=np.float64)


def baseline_scores(dataset, work, folds: pd.DataFrame, test_truth) -> tuple:
    """The band-statistics baseline on (a) the dataset's split, (b) the grouped folds (OOF)."""
    curated = dataset.curated.merge(folds, on="fname")
    specs = load_features(dataset, work, "train_curated", curated.fname)
    truth = multi_hot(curated.labels, dataset.classes)
    test_specs = load_features(dataset, work, "test", dataset.test_fnames)
    split = scores(test_truth, predict_baseline(fit_baseline(specs, truth), test_specs))
    oof = np.zeros_like(truth)
    for k in sorted(set(curated.fold)):
        held = (curated.fold == k).to_numpy()
        model = fit_baseline([s for s, h in zip(specs, held) if not h], truth[~held])
        oof[held] = predict_baseline(model, [s for s, h in zip(specs, held) if h])
    return split, scores(truth, oof)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD's recordings/ folder.")
    parser.add_argument("--work", type=Path, default=None, help="Where the dataset and work folders go (default: a temporary folder).")
    parser.add_argument("--experiment", default="fsdd")
    parser.add_argument("--folds", type=int, default=3, help="Folds grouped by speaker (6 speakers).")
    parser.add_argument("--epochs", type=int, default=None, help="Override the experiment's max_epochs.")
    parser.add_argument("--quick", action="store_true", help="One epoch: checks the chain, not the scores.")
    parser.add_argument("--resume", action="store_true",
                        help="Continue the folds trained in --work (e.g. to more epochs; train --resume is exact).")
    args = parser.parse_args()
    if not args.fsdd.is_dir():
        sys.exit(f"FSDD recordings not found at {args.fsdd}")
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_real_"))
    data, work = root / "data", root / "work"
    epochs = ["--epochs", 1] if args.quick else (["--epochs", args.epochs] if args.epochs else [])
    print(header("Real recordings: FSDD end to end"))
    print(f"experiment {args.experiment}; {args.folds} folds grouped by speaker; work in {root}\n")
    times, cpu_times = {}, {}
    start = time.perf_counter()
    if not (data / "metadata.csv").is_file():
        run_stage("prepare", ["prepare", args.fsdd, data, "--pattern", "{label}_{group}_{index}.wav",
                              "--test-column", "index", "--test-value", "0,1,2,3,4"], times, print, cpu_times)
    run_stage("features", ["features", "--data", data, "--work", work, "--workers", 2], times, print, cpu_times)
    run_stage("make-folds", ["make-folds", "--data", data, "--work", work, "--folds", args.folds,
                             "--group-by", "group"], times, print, cpu_times)
    common = ["--data", data, "--work", work, "--device", "cpu"]
    run_stage("train + OOF", ["train", args.experiment, *common, *epochs, *(["--resume"] if args.resume else [])],
              times, print, cpu_times)
    run_stage("predict test", ["predict", args.experiment, *common, "--no-oof"], times, print, cpu_times)
    cnn_wall = time.perf_counter() - start

    dataset = load_dataset(data)
    test_labels = pd.read_csv(data / "test_labels.csv", dtype=str).set_index("fname").loc[list(dataset.test_fnames)]
    test_truth = multi_hot([tuple(t.split(",")) for t in test_labels.labels], dataset.classes)
    name = Path(args.experiment).stem  # a name, or a path to a TOML file named after the experiment
    predictions = work / "predictions" / name
    cnn_split = scores(test_truth, probabilities(predictions / "test.csv", dataset.test_fnames, dataset.classes))
    oof = pd.read_csv(predictions / "oof.csv", dtype={"fname": str})
    truth = multi_hot(dataset.curated.set_index("fname").loc[oof.fname, "labels"], dataset.classes)
    cnn_speakers = scores(truth, oof[list(dataset.classes)].to_numpy(dtype=np.float64))

    folds = pd.read_csv(work / "folds.csv", dtype={"fname": str})
    begin = time.perf_counter()
    base_split, base_speakers = baseline_scores(dataset, work, folds, test_truth)
    times["baseline (both)"] = time.perf_counter() - begin

    rows = []
    for model, split, speakers in ((f"CNN ({name})", cnn_split, cnn_speakers),
                                  ("band statistics + logistic regression", base_split, base_speakers),
                                  ("chance", chance(len(dataset.classes)), chance(len(dataset.classes)))):
        rows.append([model, f"{split['accuracy']:.3f}", f"{split['lwlrap']:.3f}",
                     f"{speakers['accuracy']:.3f}", f"{speakers['lwlrap']:.3f}"])
    print()
    print(table(["model", "split accuracy", "split lwlrap", "held-out speakers accuracy",
                 "held-out speakers lwlrap"], rows))
    print()
    stages = [[name, f"{seconds:.0f}", f"{cpu_times[name]:.0f}" if name in cpu_times else ""]
              for name, seconds in times.items()]
    stages.append(["CNN end to end", f"{cnn_wall:.0f}", f"{sum(cpu_times.values()):.0f}"])
    print(table(["stage", "wall s", "CPU s"], stages))
    (root / "bench_real.json").write_text(json.dumps(
        {"times": times, "cpu_times": cpu_times, "cnn": {"split": cnn_split, "speakers": cnn_speakers},
         "baseline": {"split": base_split, "speakers": base_speakers}}, indent=2))


if __name__ == "__main__":
    main()
