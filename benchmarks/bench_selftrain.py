"""Self-training on real recordings: FSDD's unseen speakers, round by round.

    .venv/bin/python benchmarks/bench_selftrain.py [--fsdd DIR] [--work DIR] [--experiment fsdd_selftrain]
                                                   [--rounds 2] [--folds 3] [--takes 50] [--pool-takes 20]
                                                   [--epochs N] [--quick]

The domain gap: ``fsdd.toml`` reaches 0.973 accuracy on FSDD's own split but 0.791 on speakers it
never heard (``bench_real.py``). Here every speaker's takes ``0 .. takes - pool_takes - 1`` are
labelled and scored, and the last ``pool_takes`` takes of every speaker are the unlabelled pool
(``prepare --unlabeled``). Folds are grouped by speaker (``make-folds --group-by group``), so each
fold holds out its speakers' scored takes, and its student sees those speakers only through their
unscored takes, unlabelled.

Why a fixed subset of takes is scored rather than a pool per fold: the pool then never holds a
scored clip of any fold (the guard of ``freesound.training.pseudo_labels`` finds none to drop),
and with ``[self_training] teacher_folds = "same"`` (``experiments/fsdd_selftrain.toml``) fold
``k``'s pseudo-labels come only from fold ``k``'s chain of models, none of which ever trained on a
label of fold ``k``'s speakers. So a round's out-of-fold score on the held-out speakers measures
what unlabelled audio of unseen speakers buys, with no leak of their labels. (With the folds'
geometric mean as the teacher, the other folds' models, which trained on these speakers'
labels, would write their pseudo-labels: an optimistic CV.) The price: the pool's takes are
not labelled training clips for the other folds, so round 0 has fewer labelled clips than
``bench_real.py``'s run.

Scores per round (out of fold, the held-out speakers' scored takes): top-1 accuracy and lwlrap;
beside them the band-statistics baseline (``freesound.training.baseline``) on the same folds,
and chance. Round 0 is ``fsdd.toml`` alone (``fsdd_selftrain`` is ``fsdd.toml`` plus a
``[self_training]`` table that only later rounds use). CPU time per round is ``rounds.csv``'s:
``resource.getrusage`` of the command's process and its finished children.

``--quick`` checks the chain in minutes (2 folds, 12 takes of which 4 unlabelled, 1 epoch of 256
samples, 2 rounds): it proves the wiring, not the method. The full run (3 folds, 50 takes, 20
unlabelled, ``fsdd_selftrain.toml`` as committed) takes about 30 min of CPU a round on 2 cores.
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

from freesound.config import dump_experiment, experiment_from_dict, load_experiment  # noqa: E402
from freesound.data.dataset import load_dataset, multi_hot  # noqa: E402
from freesound.data.features import load_features  # noqa: E402
from freesound.metrics import lwlrap  # noqa: E402
from freesound.training.baseline import fit_baseline, predict_baseline  # noqa: E402

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def run_stage(name: str, args: list, times: dict, log) -> str:
    """Run ``python -m freesound ARGS``; record its wall and children's CPU time; fail loudly."""
    start, cpu = time.perf_counter(), children_cpu()
    result = subprocess.run([sys.executable, "-m", "freesound", *map(str, args)], cwd=REPO, env=os.environ.copy(),
                            capture_output=True, text=True)
    times[name] = (time.perf_counter() - start, children_cpu() - cpu)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    log(f"[{name}: {times[name][0]:.0f} s wall, {times[name][1]:.0f} s CPU] " + (lines[-1] if lines else ""))
    if result.returncode != 0:
        sys.exit(f"{name} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def split_takes(fsdd: Path, out: Path, takes: int, pool_takes: int) -> tuple:
    """Symlink FSDD's takes ``< takes`` into ``out/labelled`` (the scored ones) and ``out/pool``
    (the last ``pool_takes``); return the two folders."""
    labelled, pool = out / "labelled", out / "pool"
    for folder in (labelled, pool):
        folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(fsdd.glob("*.wav")):
        index = int(path.stem.rsplit("_", 1)[1])
        if index >= takes:
            continue
        target = (pool if index >= takes - pool_takes else labelled) / path.name
        if not target.exists():
            target.symlink_to(path.resolve())
    return labelled, pool


def scores(truth: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1 accuracy (single-label truth) and lwlrap."""
    return {"accuracy": float((probs.argmax(1) == truth.argmax(1)).mean()), "lwlrap": float(lwlrap(truth, probs))}


def chance(num_classes: int) -> dict:
    return {"accuracy": 1.0 / num_classes, "lwlrap": float(np.mean(1.0 / np.arange(1, num_classes + 1)))}


def baseline_oof(dataset, work, folds: pd.DataFrame) -> dict:
    """The band-statistics baseline out of fold on the grouped folds."""
    curated = dataset.curated.merge(folds, on="fname")
    specs = load_features(dataset, work, "train_curated", curated.fname)
    truth = multi_hot(curated.labels, dataset.classes)
    oof = np.zeros_like(truth)
    for k in sorted(set(curated.fold)):
        held = (curated.fold == k).to_numpy()
        model = fit_baseline([s for s, h in zip(specs, held) if not h], truth[~held])
        oof[held] = predict_baseline(model, [s for s, h in zip(specs, held) if h])
    return scores(truth, oof)


def round_scores(dataset, work, name: str) -> dict:
    """A round's out-of-fold scores on the held-out speakers' scored takes."""
    oof = pd.read_csv(work / "predictions" / name / "oof.csv", dtype={"fname": str})
    truth = multi_hot(dataset.curated.set_index("fname").loc[oof.fname, "labels"], dataset.classes)
    return scores(truth, oof[list(dataset.classes)].to_numpy(dtype=np.float64))


def bench_experiment(name: str, experiments: Path, quick: bool, epochs: int | None) -> str:
    """Write the experiment the run trains (the repository's ``name``; ``--quick``: 1 epoch of
    256 samples; ``--epochs``: that many) into ``experiments``; return its name."""
    experiment = load_experiment(name, REPO / "experiments")
    values = experiment.to_dict()
    if quick:
        values["train"].update(max_epochs=1, epoch_size=256)
    elif epochs:
        values["train"]["max_epochs"] = epochs
    written = experiment_from_dict(values, name=experiment.name)
    (experiments / f"{experiment.name}.toml").write_text(dump_experiment(written))
    return experiment.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD's recordings/ folder.")
    parser.add_argument("--work", type=Path, default=None, help="Where everything goes (default: a temporary folder).")
    parser.add_argument("--experiment", default="fsdd_selftrain")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--folds", type=int, default=3, help="Folds grouped by speaker (6 speakers).")
    parser.add_argument("--takes", type=int, default=50, help="Use each speaker's takes 0 .. TAKES-1 of each digit.")
    parser.add_argument("--pool-takes", type=int, default=20, help="The last POOL_TAKES of them are the unlabelled pool.")
    parser.add_argument("--epochs", type=int, default=None, help="Override the experiment's max_epochs.")
    parser.add_argument("--quick", action="store_true",
                        help="2 folds, 12 takes (4 unlabelled), 1 epoch of 256 samples: checks the chain.")
    args = parser.parse_args()
    if args.quick:
        args.folds, args.takes, args.pool_takes = 2, 12, 4
    if not args.fsdd.is_dir():
        sys.exit(f"FSDD recordings not found at {args.fsdd}")
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_selftrain_"))
    data, work, experiments = root / "data", root / "work", root / "experiments"
    experiments.mkdir(parents=True, exist_ok=True)
    print(header("Self-training on real recordings: FSDD's unseen speakers"))
    print(f"experiment {args.experiment}; {args.rounds} rounds; {args.folds} folds grouped by speaker; takes "
          f"0-{args.takes - args.pool_takes - 1} labelled, {args.takes - args.pool_takes}-{args.takes - 1} unlabelled; "
          f"work in {root}\n")
    times = {}
    labelled, pool = split_takes(args.fsdd, root / "source", args.takes, args.pool_takes)
    if not (data / "metadata.csv").is_file():
        run_stage("prepare", ["prepare", labelled, data, "--pattern", "{label}_{group}_{index}.wav",
                              "--unlabeled", pool], times, print)
    run_stage("features", ["features", "--data", data, "--work", work, "--workers", 2], times, print)
    run_stage("make-folds", ["make-folds", "--data", data, "--work", work, "--folds", args.folds,
                             "--group-by", "group"], times, print)
    name = bench_experiment(args.experiment, experiments, args.quick, args.epochs)
    run_stage("self-train", ["self-train", name, "--data", data, "--work", work, "--experiments", experiments,
                             "--rounds", args.rounds, "--device", "cpu"], times, print)

    dataset = load_dataset(data)
    folds = pd.read_csv(work / "folds.csv", dtype={"fname": str})
    begin = time.perf_counter()
    baseline = baseline_oof(dataset, work, folds)
    times["baseline"] = (time.perf_counter() - begin, None)
    rounds = pd.read_csv(work / "self_training" / name / "rounds.csv")
    rows, results = [], {}
    for row in rounds.itertuples():
        result = round_scores(dataset, work, row.experiment)
        results[row.experiment] = {**result, "cpu_seconds": row.cpu_seconds, "confident_share": row.confident_share,
                                   "top_label_flips": row.top_label_flips}
        label = f"round {row.round} ({row.experiment}{', fsdd.toml alone' if row.round == 0 else ''})"
        rows.append([label, f"{result['accuracy']:.3f}", f"{result['lwlrap']:.3f}", f"{row.cpu_seconds / 60:.1f}",
                     "" if pd.isna(row.confident_share) else f"{row.confident_share:.2f}",
                     "" if pd.isna(row.top_label_flips) else f"{row.top_label_flips:.2f}"])
    for label, result in (("band statistics + logistic regression", baseline),
                          ("chance", chance(len(dataset.classes)))):
        rows.append([label, f"{result['accuracy']:.3f}", f"{result['lwlrap']:.3f}", "", "", ""])
    print()
    print(table(["model", "held-out speakers accuracy", "held-out speakers lwlrap", "CPU min",
                 "confident pool share", "top-label flips"], rows))
    print()
    print(table(["stage", "wall s", "CPU s"], [[stage, f"{wall:.0f}", "" if cpu is None else f"{cpu:.0f}"]
                                                for stage, (wall, cpu) in times.items()]))
    (root / "bench_selftrain.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "times": times, "rounds": results,
         "baseline": baseline}, indent=2))


if __name__ == "__main__":
    main()
