"""Distillation: a teacher (the demo ensemble, or one experiment) against its student, on CPU.

    .venv/bin/python benchmarks/bench_distill.py [--work DIR] [--teacher ensemble] [--student small_student]
                                                 [--extra small_pseudo small_noisy_pretrain small_finetune]
                                                 [--clips 30] [--rounds 3] [--fsdd]

On the demo's synthetic data (``freesound.tools.demo``: 10 classes, 300 curated, 200 noisy, 150
test clips, 3 folds), or with ``--fsdd`` on the real Free Spoken Digit recordings (prepared as
``bench_real.py`` does; no noisy clips there, so the student learns from the teacher's OOF
predictions only): train the teacher's experiments (and stackers), distil the student
(``freesound.tools.distill``), then report each one's OOF lwlrap and test lwlrap, and the tiles/s
of each as a whole predictor (every fold of every experiment, the stackers, the blend) on
``--clips`` test clips, interleaved (``common.interleaved``) on one torch thread. ``--extra``
experiments (the other uses of ``[targets]`` and ``[pretrained]``) are trained, in order, and
their OOF lwlrap reported beside the others. Everything trained is reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_description, header, interleaved, limit_threads, median, table  # noqa: E402

limit_threads(1)

import numpy as np  # noqa: E402

from freesound.config import EnsembleConfig, load_config, load_experiment  # noqa: E402
from freesound.data.dataset import load_dataset, multi_hot, read_labels_csv  # noqa: E402
from freesound.data.features import cache_features, load_features  # noqa: E402
from freesound.data.folds import make_folds, write_folds  # noqa: E402
from freesound.data.synth import read_synth_manifest, synth_manifest, synthesize_dataset  # noqa: E402
from freesound.ensembling.specs import prediction_spec  # noqa: E402
from freesound.ensembling.stack import train_stackers  # noqa: E402
from freesound.metrics import lwlrap  # noqa: E402
from freesound.paths import folds_path, predictions_dir, weights_root  # noqa: E402
from freesound.predict import EnsemblePredictor, tile_layout  # noqa: E402
from freesound.tools.demo import DEMO_FOLDS, DEMO_SIZE  # noqa: E402
from freesound.tools.distill import distill  # noqa: E402
from freesound.training.oof import ensure_oof  # noqa: E402
from freesound.training.context import RunContext  # noqa: E402
from freesound.training.experiment_training import train_folds  # noqa: E402

EXPERIMENTS = REPO / "experiments"
DEMO_EXTRA = ["small_pseudo", "small_noisy_pretrain", "small_finetune"]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def demo_data(work: Path):
    """The demo's synthetic dataset, features and folds under ``work`` (made once)."""
    data = work / "synth"
    fresh = read_synth_manifest(data) != synth_manifest(seed=0, **DEMO_SIZE)
    if fresh:
        synthesize_dataset(data, seed=0, workers=2, **DEMO_SIZE)
    dataset = load_dataset(data)
    cache_features(dataset, work, workers=2, progress=False)
    if fresh or not folds_path(work).is_file():
        write_folds(work, make_folds(dataset.curated.fname, n_folds=DEMO_FOLDS, seed=42))
    return dataset


def fsdd_data(work: Path):
    """FSDD prepared as bench_real.py does (index 0-4 is the test split), folds by speaker."""
    data = work / "fsdd"
    if not FSDD.is_dir():
        sys.exit(f"{FSDD} not found")
    cli = [sys.executable, "-m", "freesound"]
    if not data.is_dir():
        subprocess.run([*cli, "prepare", FSDD, data, "--pattern", "{label}_{group}_{index}.wav",
                        "--test-column", "index", "--test-value", "0,1,2,3,4"], check=True, cwd=REPO)
    dataset = load_dataset(data)
    cache_features(dataset, work, workers=2, progress=False)
    if not folds_path(work).is_file():
        subprocess.run([*cli, "make-folds", "--data", data, "--work", work, "--folds", "3", "--group-by", "group"],
                       check=True, cwd=REPO)
    return dataset


def train(name: str, dataset, work: Path, log) -> float:
    """Train (or finish) an experiment and return its OOF lwlrap."""
    report = train_folds(load_experiment(name, EXPERIMENTS), dataset, work, resume=True,
                         context=RunContext.create(log=log, progress=False))
    return report.oof_scores["lwlrap"]


def test_scores(predictor, logmels, truth) -> float:
    return float(lwlrap(truth, predictor.predict_spectrograms(logmels)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench_distill")
    parser.add_argument("--teacher", default="ensemble", help="an ensemble or experiment of experiments/")
    parser.add_argument("--student", default="small_student")
    parser.add_argument("--extra", nargs="*", default=None,
                        help="more experiments to train and score (default: small_pseudo, small_noisy_pretrain, "
                             "small_finetune on synthetic data, none on FSDD, which has no noisy clips)")
    parser.add_argument("--clips", type=int, default=30, help="test clips timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsdd", action="store_true", help="the real FSDD recordings instead of synthetic data")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = args.work / ("fsdd" if args.fsdd else "synth")

    def log(line: str) -> None:
        if "epoch" not in line:
            print(line, flush=True)

    dataset = fsdd_data(work) if args.fsdd else demo_data(work)
    teacher = load_config(args.teacher, EXPERIMENTS)
    members = teacher.experiments if isinstance(teacher, EnsembleConfig) else [teacher.name]
    oof = {name: train(name, dataset, work, log) for name in members}
    ensure_oof(members, dataset, work, log=log)
    if isinstance(teacher, EnsembleConfig) and teacher.stackers:
        oof.update({f"{args.teacher} {name}": score for name, score in train_stackers(teacher, dataset, work, log=log).items()
                    if name not in members})
    report = distill(args.teacher, load_experiment(args.student, EXPERIMENTS), dataset, work,
                     experiments_dir=EXPERIMENTS, resume=True, progress=False, log=log)
    oof[f"teacher: {args.teacher}"] = report.teacher_lwlrap
    oof[f"student: {args.student}"] = report.training.oof_scores["lwlrap"]
    extra = args.extra if args.extra is not None else [] if args.fsdd else DEMO_EXTRA
    for name in extra:
        oof[name] = train(name, dataset, work, log)

    fnames = dataset.fnames("test")
    labels = read_labels_csv(dataset.root / "test_labels.csv", dataset.classes).set_index("fname")
    truth = multi_hot(labels.loc[fnames, "labels"], dataset.classes)
    logmels = load_features(dataset, work, "test", fnames)
    resolve = lambda path: weights_root(work) / path  # noqa: E731
    predictors = {f"teacher: {args.teacher}": EnsemblePredictor.from_spec(prediction_spec(teacher, work), resolve),
                  f"student: {args.student}": EnsemblePredictor.from_spec(prediction_spec(args.student, work), resolve)}
    test = {name: test_scores(p, logmels, truth) for name, p in predictors.items()}
    timed = logmels[:args.clips]
    n_tiles = sum(tile_layout(m.shape[1])[0] for m in timed)
    times = interleaved({name: (lambda p=p: p.predict_spectrograms(timed)) for name, p in predictors.items()},
                        args.rounds)
    rate = {name: n_tiles / median(values) for name, values in times.items()}
    models = {name: sum(len(t.models) for t in p.taggers.values()) for name, p in predictors.items()}

    print(header(f"Distillation on {'FSDD' if args.fsdd else 'the demo synthetic data'}: "
                 f"{args.teacher} -> {args.student}"))
    print(f"{json.dumps(cpu_description())}; torch threads 1; {len(dataset.curated)} curated, {len(dataset.noisy)} "
          f"noisy, {len(fnames)} test clips; {args.clips} test clips ({n_tiles} tiles) timed, {args.rounds} rounds\n")
    first = next(iter(rate.values()))
    print(table(["predictor", "first-level models", "OOF lwlrap", "test lwlrap", "tiles/s", "speed-up"],
                [(name, models[name], f"{oof[name]:.4f}", f"{test[name]:.4f}", f"{rate[name]:.1f}",
                  f"{rate[name] / first:.2f}x") for name in predictors]))
    print("\nOOF lwlrap of every experiment trained here (one seed each):")
    print(table(["experiment", "OOF lwlrap"], [(name, f"{score:.4f}") for name, score in oof.items()]))
    cached = f"teacher's noisy predictions cached in {predictions_dir(work, args.teacher)}; " if len(dataset.noisy) else ""
    print(f"\n{cached}{(time.perf_counter() - started) / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
