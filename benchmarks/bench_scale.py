"""Real scale: every pipeline stage on a replica of FSDKaggle2019 (``freesound synth --like``), timed.

    .venv/bin/python benchmarks/bench_scale.py [--scale 0.1 ...] [--rows 1.0 ...] [--work DIR]

Each run (one ``--scale``, the clip-length factor, and one ``--rows``, the fraction of each part's
rows drawn from the real metadata) makes a replica and runs every stage through the library, each
in a child process so that its peak resident memory is its own (``os.wait4``):

    synth        ``synthesize_like`` (2 workers)
    features     ``cache_features`` of every clip (2 workers)
    folds        ``make_folds`` (5 folds, the method's KFold)
    load         ``build_sources`` of fold 0: the log-mels training holds, real corrections applied
    train        one epoch of ``small`` on fold 0 (real corrections); its weights are then copied
                 to folds 1-4 so that the later stages see a full 5-fold experiment
    oof          ``predict_oof`` over every curated clip (each by its fold's model)
    stack        ``train_stackers`` on the OOF tiles of three experiments (copies of ``small``;
                 an FCNet stacker trained 3 epochs a fold: its cost per epoch is what scales)
    select       ``select_ensemble`` over the three
    predict      ``run_prediction`` of ``small`` (5 folds) on every test clip
    relabel      ``propose_relabels`` (every curated and noisy clip)
    build_kernel ``build_kernels`` (single and ensemble kernels)
    kernel       the ensemble kernel run in a simulated /kaggle tree (test audio hard-linked)

The real corrections (``../shared/reference/corrections.json``, ``noisy_corrections.json``) are
applied. A finished stage's figures are kept in ``<run>/stages.json``, so an interrupted benchmark
resumes at the stage it was in. Every child runs torch and BLAS on one thread (the machine is
shared). The report gives, per stage and run, wall time, peak RSS, the cost per clip and per
audio-hour of the clips the stage touches, and a fit ``t = c + a * clips + b * hours`` (least
squares over the runs) extrapolated to the real size at scale 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, header, limit_threads, table  # noqa: E402

REFERENCE = Path(os.environ.get("FREESOUND_REFERENCE", REPO.parent / "shared" / "reference"))
if not REFERENCE.is_dir():
    REFERENCE = Path("/work/shared/reference")
META = REFERENCE / "fsdkaggle2019"
STAGES = ("synth", "features", "folds", "load", "train", "oof", "stack", "select", "predict", "relabel",
          "build_kernel", "kernel")
#: Which clips each stage works through (its cost per clip and per audio-hour divide by these).
STAGE_PARTS = {
    "synth": ("train_curated", "train_noisy", "test"), "features": ("train_curated", "train_noisy", "test"),
    "folds": ("train_curated",), "load": ("train_curated", "train_noisy"),
    "train": ("train_curated", "train_noisy"), "oof": ("train_curated",), "stack": ("train_curated",),
    "select": ("train_curated",), "predict": ("test",), "relabel": ("train_curated", "train_noisy"),
    "build_kernel": (), "kernel": ("test",),
}
REAL_COUNTS = {"train_curated": 4970, "train_noisy": 19815, "test": 4481}
COPIES = ("small_b", "small_c")
ENSEMBLE = """experiments = ["small", "small_b", "small_c"]

[[stackers]]
name = "mlp"
max_epochs = 3
"""


# --------------------------------------------------------------------------------------------------
# The stages (run in a child process: ``bench_scale.py --stage NAME --run DIR``)


def _setup(run: Path) -> None:
    """The run's experiments: ``small`` with the real corrections, and the ensemble file."""
    experiments = run / "experiments"
    experiments.mkdir(parents=True, exist_ok=True)
    small = (REPO / "experiments" / "small.toml").read_text()
    small = small.replace("corrected_noisy = 0.0\nnoisy = 0.3", "corrected_noisy = 0.2\nnoisy = 0.1")
    small += (f'\n[data]\ncorrections = "{REFERENCE / "corrections.json"}"\n'
              f'noisy_corrections = "{REFERENCE / "noisy_corrections.json"}"\n')
    (experiments / "small.toml").write_text(small)
    (experiments / "ens.toml").write_text(ENSEMBLE)


def _copy_experiment(work: Path, experiments: Path, name: str) -> None:
    """A copy of ``small`` named ``name``: its TOML, weights, then predictions (mtimes kept, so its
    OOF stays newer than its weights)."""
    shutil.copy(experiments / "small.toml", experiments / f"{name}.toml")
    for folder in ("experiments", "predictions"):
        shutil.rmtree(work / folder / name, ignore_errors=True)
        shutil.copytree(work / folder / "small", work / folder / name, copy_function=shutil.copy2)


def run_stage(stage: str, run: Path, scale: float, rows: float) -> dict:
    """Run one stage; returns what it made (counts), for the record."""
    from freesound.config import load_ensemble, load_experiment
    from freesound.data.dataset import load_dataset
    from freesound.data.synth_like import sample_reference, synthesize_like

    data, work, experiments = run / "data", run / "work", run / "experiments"
    if stage == "synth":
        meta = META
        if rows < 1.0:
            counts = {split: int(round(rows * count)) for split, count in REAL_COUNTS.items()}
            meta = sample_reference(META, run / "meta", counts, seed=0)
        summary = synthesize_like(data, meta, duration_scale=scale, seed=0, workers=2)
        return {"hours": summary.seconds / 3600, "counts": summary.counts}
    dataset = load_dataset(data)
    if stage == "features":
        from freesound.data.features import cache_features

        report = cache_features(dataset, work, workers=2)
        return {"computed": report.computed, "cached": report.cached, "failures": len(report.failures)}
    if stage == "folds":
        from freesound.data.folds import make_folds, write_folds

        write_folds(work, make_folds(dataset.curated.fname, n_folds=5, seed=42))
        return {}
    experiment = load_experiment("small", experiments)
    if stage == "load":
        from freesound.training.trainer import build_sources

        sources, _, valid = build_sources(experiment, dataset, work, 0)
        held = sum(spec.nbytes for source in sources for spec in source.specs) + sum(s.nbytes for s in valid[0])
        return {"sources": {source.name: len(source) for source in sources}, "valid": len(valid[0]),
                "held_mb": held / 2 ** 20}
    if stage == "train":
        from freesound.paths import weights_root
        from freesound.training.trainer import train_fold

        train_fold(experiment, dataset, work, 0, max_epochs=1)
        fold0 = weights_root(work) / "small" / "fold_0"
        for fold in range(1, 5):
            shutil.rmtree(fold0.parent / f"fold_{fold}", ignore_errors=True)
            shutil.copytree(fold0, fold0.parent / f"fold_{fold}")
        return {}
    if stage == "oof":
        from freesound.training.oof import predict_oof

        scores = predict_oof("small", dataset, work)
        for name in COPIES:
            _copy_experiment(work, experiments, name)
        return {"lwlrap": scores["lwlrap"]}
    ensemble = load_ensemble("ens", experiments)
    if stage == "stack":
        from freesound.ensembling.stack import train_stackers

        return {"cv": train_stackers(ensemble, dataset, work)}
    if stage == "select":
        from freesound.tools.select import load_oof_set, select_ensemble

        selection = select_ensemble(load_oof_set(ensemble.experiments, dataset, work))
        return {"best": list(selection.best), "lwlrap": selection.best_score}
    if stage == "predict":
        from freesound.ensembling.predictions import run_prediction

        run_prediction(experiment, work, dataset=dataset, oof=False)
        return {}
    if stage == "relabel":
        from freesound.tools.relabel import propose_relabels

        result = propose_relabels("small", dataset, work)
        return {"curated_proposals": len(result.curated_proposals), "noisy_proposals": len(result.noisy_proposals)}
    if stage == "build_kernel":
        from kernel_build import build_kernels

        kernels = build_kernels(work, experiment="small", ensemble="ens", out_dir=run / "kernel",
                                experiments_dir=experiments)
        return {"kernels": {kind: str(path) for kind, path in kernels.items()}}
    if stage == "kernel":
        return run_kernel(run / "kernel" / "ensemble_kernel.py", dataset, work, run / "kaggle")
    raise ValueError(f"unknown stage {stage!r}")


def run_kernel(script: Path, dataset, work: Path, root: Path) -> dict:
    """Run a kernel script in a simulated /kaggle tree (test audio hard-linked, weights copied);
    check that its submission has every test clip."""
    import pandas as pd

    from freesound.kaggle import COMPETITION
    from freesound.paths import weights_root

    shutil.rmtree(root, ignore_errors=True)
    competition = root / "input" / COMPETITION
    (competition / "test").mkdir(parents=True)
    for path in dataset.paths("test"):
        os.link(path, competition / "test" / path.name)
    shutil.copy(dataset.root / "sample_submission.csv", competition)
    shutil.copytree(weights_root(work), root / "input" / "freesound-weights" / "experiments",
                    ignore=shutil.ignore_patterns("*.csv", "*.toml"))
    (root / "working").mkdir()
    env = {**os.environ, "FREESOUND_KAGGLE_ROOT": str(root.resolve()), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(script.resolve())], cwd=root / "working", env=env)
    if result.returncode != 0:
        raise SystemExit(f"the kernel failed with status {result.returncode}")
    submission = pd.read_csv(root / "working" / "submission.csv")
    if list(submission.fname) != list(dataset.test_fnames):
        raise SystemExit("the kernel's submission does not list the test clips in sample_submission order")
    return {"rows": len(submission)}


# --------------------------------------------------------------------------------------------------
# The driver


def run_dir(work: Path, scale: float, rows: float) -> Path:
    return work / f"scale{scale:g}-rows{rows:g}"


def clips_and_hours(run: Path) -> dict:
    """Per part: clip count and audio hours of the run's replica (from the wav headers' sizes)."""
    import pandas as pd

    data = run / "data"
    result = {}
    for split, csv in (("train_curated", "train_curated.csv"), ("train_noisy", "train_noisy.csv"),
                       ("test", "sample_submission.csv")):
        fnames = pd.read_csv(data / csv, usecols=["fname"]).fname
        samples = sum((os.path.getsize(data / split / name) - 44) // 2 for name in fnames)
        result[split] = {"clips": len(fnames), "hours": samples / 44100 / 3600}
    return result


def benchmark_run(work: Path, scale: float, rows: float, stages) -> dict:
    """Every stage of one run, each in a child process; resumes from ``stages.json``."""
    run = run_dir(work, scale, rows)
    run.mkdir(parents=True, exist_ok=True)
    _setup(run)
    record_path = run / "stages.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for stage in stages:
        if stage in record:
            continue
        print(f"== scale {scale:g}, rows {rows:g}: {stage}", flush=True)
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--run", str(run),
                                  "--scale", str(scale), "--rows", str(rows)])
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"stage {stage} failed (status {os.waitstatus_to_exitcode(status)})")
        made = json.loads((run / f"{stage}.out.json").read_text())
        record[stage] = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                         "peak_rss_mb": usage.ru_maxrss / 1024, "result": made}
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"   {wall:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB", flush=True)
    record["_size"] = clips_and_hours(run)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def stage_size(size: dict, stage: str) -> tuple:
    parts = STAGE_PARTS[stage]
    return sum(size[p]["clips"] for p in parts), sum(size[p]["hours"] for p in parts)


def fit(points) -> tuple:
    """Least squares ``y = c + a * clips + b * hours`` over ``(clips, hours, y)``, coefficients
    clipped at 0 (a cost is never negative); fewer than 3 points fit ``y = a * clips + b * hours``."""
    import numpy as np

    points = np.asarray(points, dtype=float)
    columns = [points[:, 0], points[:, 1]] + ([np.ones(len(points))] if len(points) >= 3 else [])
    design = np.stack(columns, axis=1)
    from scipy.optimize import nnls

    coefficients, _ = nnls(design, points[:, 2])
    a, b = coefficients[:2]
    c = coefficients[2] if len(coefficients) > 2 else 0.0
    return float(c), float(a), float(b)


def _growth(records, keys, stage, sizes, *, same: int, axis: int) -> str:
    """The growth exponent between the first and last runs that share ``key[same]`` (0: the scale,
    1: the rows) and differ in the other; ``axis`` picks clips (0) or hours (1) as the work measure."""
    import math

    for first in keys:
        for last in keys[::-1]:
            if first != last and first[same] == last[same] and sizes[last][axis] > 1.5 * sizes[first][axis]:
                ratio = records[last][stage]["cpu_s"] / max(records[first][stage]["cpu_s"], 1e-9)
                return f"{math.log(ratio) / math.log(sizes[last][axis] / sizes[first][axis]):.2f}"
    return "-"


#: MiB of float32 log-mel per audio-hour: 44100 / 690 frames a second of 128 bands x 4 bytes.
LOGMEL_MIB_PER_HOUR = 44100 / 690 * 128 * 4 * 3600 / 2 ** 20
#: The audio-hours of log-mels each stage holds at once, as a share of the hours of its clips:
#: training (load, train) holds its sources, minus the clips the corrections drop (measured:
#: ``held_mb`` of the load stage); prediction and the kernel decode the whole test set first;
#: out-of-fold prediction holds one fold's clips; relabel streams (``iter_features``), and the
#: other stages hold one clip at a time, so their peak does not grow with the data.
HELD_SHARE = {"predict": 1.0, "kernel": 1.0, "oof": 1 / 5}


def held_mb(records, key, stage) -> float:
    """MiB of log-mels ``stage`` held in run ``key`` (see ``HELD_SHARE``)."""
    if stage in ("load", "train"):
        return records[key]["load"]["result"]["held_mb"]
    return HELD_SHARE.get(stage, 0.0) * stage_size(records[key]["_size"], stage)[1] * LOGMEL_MIB_PER_HOUR


def real_peak_rss_mb(records, keys, stage) -> float:
    """Peak RSS at the real size (scale 1.0), MiB: the largest run's peak, less the log-mels the
    stage held there, plus those it would hold at the real size. Training holds none past
    ``HOLD_IN_MEMORY_BYTES`` (it reads them on access), so that is the limit of what it adds."""
    from freesound.data.features import HOLD_IN_MEMORY_BYTES

    largest = max(keys, key=lambda k: sum(v["hours"] for v in records[k]["_size"].values()))
    hours = stage_size(records[largest]["_size"], stage)[1]
    real_h = sum({"train_curated": 10.5, "train_noisy": 80.0, "test": 12.9}[p] for p in STAGE_PARTS[stage])
    held = held_mb(records, largest, stage)
    real_held = held * real_h / hours if hours else held
    if stage in ("load", "train") and real_held * 2 ** 20 > HOLD_IN_MEMORY_BYTES:
        real_held = 0.0
    return records[largest][stage]["peak_rss_mb"] - held + real_held


def report(records: dict) -> str:
    """Markdown: one table per run, then growth and the extrapolation to the real size, scale 1.0."""
    lines = []
    real_hours = {"train_curated": 10.5, "train_noisy": 80.0, "test": 12.9}
    for (scale, rows), record in records.items():
        size = record["_size"]
        total_clips = sum(v["clips"] for v in size.values())
        total_hours = sum(v["hours"] for v in size.values())
        lines += ["", f"### scale {scale:g}, rows {rows:g}: {total_clips} clips, {total_hours:.2f} h of audio", ""]
        rows_out = []
        for stage in STAGES:
            if stage not in record:
                continue
            clips, hours = stage_size(size, stage)
            entry = record[stage]
            per_clip = f"{entry['wall_s'] / clips * 1e3:.2f}" if clips else "-"
            per_hour = f"{entry['wall_s'] / hours:.1f}" if hours else "-"
            rows_out.append([stage, f"{entry['wall_s']:.1f}", f"{entry['cpu_s']:.1f}", f"{entry['peak_rss_mb']:.0f}",
                             clips or "-", f"{hours:.3f}" if hours else "-", per_clip, per_hour])
        lines.append(table(["stage", "wall s", "CPU s", "peak RSS MB", "clips", "audio h", "ms/clip", "s/audio-h"],
                           rows_out))
    keys = list(records)
    if len(keys) >= 2:
        lines += ["", "### Growth and extrapolation to FSDKaggle2019 at scale 1.0", "",
                  "`growth x rows`: log(CPU-time ratio) / log(clip ratio) between the most distant runs at the "
                  "same scale (1.0: linear in the clips; the fixed start-up cost of a process pulls it below 1). "
                  "`growth x length`: log(CPU-time ratio) / log(audio-hour ratio) between two runs with the same "
                  "rows (below 1: part of the cost is per clip). CPU time, not wall time: the machine is shared, "
                  "and a neighbour's load stretches wall time, not CPU time. Fit over all runs: "
                  "t = c + a·clips + b·audio-hours (non-negative least squares) for wall and CPU time, "
                  "evaluated at the real counts and hours.", ""]
        rows_out = []
        for stage in STAGES:
            if not all(stage in records[k] for k in keys):
                continue
            sizes = {k: stage_size(records[k]["_size"], stage) for k in keys}
            points = [(*sizes[k], records[k][stage]["wall_s"]) for k in keys]
            c, a, b = fit(points)
            cc, ca, cb = fit([(*sizes[k], records[k][stage]["cpu_s"]) for k in keys])
            parts = STAGE_PARTS[stage]
            real_clips = sum(REAL_COUNTS[p] for p in parts)
            real_h = sum(real_hours[p] for p in parts)
            rows_out.append([stage, _growth(records, keys, stage, sizes, same=0, axis=0),
                             _growth(records, keys, stage, sizes, same=1, axis=1),
                             f"{c:.1f}", f"{a * 1e3:.2f}", f"{b:.1f}",
                             f"{(c + a * real_clips + b * real_h) / 60:.1f}",
                             f"{(cc + ca * real_clips + cb * real_h) / 60:.1f}",
                             f"{real_peak_rss_mb(records, keys, stage) / 1024:.2f}"])
        lines.append(table(["stage", "growth x rows", "growth x length", "c s", "a ms/clip", "b s/audio-h",
                            "scale 1.0 wall min", "scale 1.0 CPU min", "scale 1.0 peak RSS GB"], rows_out))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, nargs="+", default=[0.1], help="Clip-length factors, one run each.")
    parser.add_argument("--rows", type=float, nargs="+", default=[1.0],
                        help="Fractions of the real rows, one per --scale (or one for all).")
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench_scale")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit_threads(1)
    if args.stage:
        import torch

        torch.set_num_threads(1)
        made = run_stage(args.stage, args.run, args.scale[0], args.rows[0])
        (args.run / f"{args.stage}.out.json").write_text(json.dumps(made, indent=2, default=str) + "\n")
        return 0
    if not (META / "train_noisy.csv").is_file():
        print(f"the real FSDKaggle2019 metadata is not at {META}", file=sys.stderr)
        return 1
    rows = args.rows * len(args.scale) if len(args.rows) == 1 else args.rows
    if len(rows) != len(args.scale):
        parser.error("give one --rows, or one per --scale")
    records = {(scale, fraction): benchmark_run(args.work, scale, fraction, args.stages)
               for scale, fraction in zip(args.scale, rows)}
    print(header("bench_scale: every stage on a FSDKaggle2019 replica"))
    print(report(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
