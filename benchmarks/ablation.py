"""Ablation of the other top solutions' options (issue 21): each option on, against the method.

    .venv/bin/python benchmarks/ablation.py [--datasets synthetic,fsdd] [--rows all|NAME,...]
                                            [--seeds 0,1,2] [--jobs 2] [--root DIR]

Every row is the demo-size experiment with one option switched on through its TOML keys, trained
with three seeds (``train.seed``) on fold 0 and scored by the OOF lwlrap of fold 0's held-out
clips (``freesound.tools.search.fold_oof_lwlrap``, what ``freesound predict`` scores). Two
datasets:

synthetic
    the demo's (``freesound.tools.demo.DEMO_SIZE``: 10 classes, 300 curated and 200 noisy clips,
    3 folds) with ``experiments/small.toml`` as it is.
fsdd
    real recordings, the Free Spoken Digit Dataset (``../shared/data/fsdd``; 6 speakers, 10
    digits, 50 takes each): takes 5-29 are the curated set, fold 0 holds out two speakers
    (george, jackson) and folds 1-2 split the other four; takes 30-49 of those four speakers are a
    noisy set in which 30% of the labels are replaced by another digit (seeded), so the
    noisy-label options have something to act on while validation stays on unseen speakers;
    takes 0-4 (FSDD's own test split) are the test folder. ``small.toml`` with 1,024 samples an
    epoch for 8 epochs (``FSDD_SETTINGS``): about 2 minutes a run on one core, against 9 minutes
    a fold for ``fsdd.toml``.

A row is a list of stages; a stage is an experiment trained on fold 0 from the row's settings
(dotted keys, as a search sets them). Names in a stage's settings in braces name another stage's
experiment: ``{baseline}`` is the baseline of the same seed (a teacher), ``{pretrain}`` the
row's own earlier stage. Rows that need the baseline run after it. Runs go ``--jobs`` at a time,
each process on one torch thread with no DataLoader worker; results are appended to
``<root>/results.jsonl`` as they finish, so an interrupted ablation continues where it stopped and
rows added later join the same table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, header, limit_threads, table  # noqa: E402

limit_threads(1)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
FSDD_HELD_OUT = ("george", "jackson")
FSDD_NOISE_RATE = 0.3
FSDD_SETTINGS = {"train.epoch_size": 1024, "train.max_epochs": 8, "train.early_stop_patience": 8}
#: Settings of every run: one process per core, so no DataLoader worker beside it.
RUN_SETTINGS = {"train.workers": 0}
FOLD = 0

#: Row name -> stages; a stage is (suffix, settings). The last stage is the one scored.
ROWS = {
    "baseline": [("", {})],
    "LSEP loss": [("", {"loss.curated": {"name": "lsep"}, "loss.noisy": {"name": "lsep"}})],
    "frequency channel": [("", {"input.freq_channel": True})],
    "SWA": [("", {"averaging.method": "swa", "averaging.swa_start": 5})],
    "EMA": [("", {"averaging.method": "ema", "averaging.ema_decay": 0.95})],
    "noisy head": [("", {"model.params": {"noisy_head": True}})],
    "SpecMix": [("", {"mixers.sigmoid_concat": 0.4, "mixers.add": 0.3, "mixers.specmix": 0.3})],
    "frequency warp": [("", {"transforms.freq_warp_prob": 0.5})],
    "soft pseudo-labels": [("", {"targets.teacher": "{baseline}", "targets.sources": ["noisy"],
                                 "targets.weight": 0.5})],
    "noisy pretraining": [
        ("pretrain", {"sampling.curated": 0.0, "sampling.corrected_noisy": 0.0, "sampling.noisy": 1.0}),
        ("", {"pretrained.experiment": "{pretrain}", "sampling.curated": 1.0, "sampling.noisy": 0.0}),
    ],
}
#: Rows whose settings name ``{baseline}``: they run after the baselines.
NEEDS_BASELINE = {name for name, stages in ROWS.items() if "{baseline}" in json.dumps(stages)}


def slug(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row.lower()).strip("_")


def run_name(row: str, seed: int, suffix: str = "") -> str:
    return f"{slug(row)}{'_' + suffix if suffix else ''}_s{seed}"


def fill(value, names: dict):
    """``value`` with every ``{stage}`` in its strings replaced by that stage's experiment name."""
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {key: fill(item, names) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# Datasets


def build_synthetic(root: Path) -> None:
    from freesound.data.dataset import load_dataset
    from freesound.data.features import cache_features
    from freesound.data.folds import make_folds, write_folds
    from freesound.data.synth import synthesize_dataset
    from freesound.tools.demo import DEMO_FOLDS, DEMO_SIZE

    synthesize_dataset(root / "data", seed=0, workers=2, **DEMO_SIZE)
    dataset = load_dataset(root / "data")
    cache_features(dataset, root / "work", workers=2)
    write_folds(root / "work", make_folds(dataset.curated.fname, n_folds=DEMO_FOLDS, seed=42))


def fsdd_tables(recordings: Path, seed: int = 0) -> dict:
    """The ablation's FSDD split (module docstring): split name -> DataFrame of ``fname``,
    ``labels``, ``source``, ``speaker`` (and ``given`` for noisy clips: the true digit)."""
    rows = []
    for path in sorted(recordings.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        rows.append({"fname": path.name, "labels": digit, "source": path, "speaker": speaker, "take": int(take)})
    clips = pd.DataFrame(rows)
    if clips.empty:
        raise SystemExit(f"no FSDD recordings in {recordings}")
    training_speaker = ~clips.speaker.isin(FSDD_HELD_OUT)
    noisy = clips[(clips["take"] >= 30) & training_speaker].copy()
    rng = np.random.default_rng(seed)
    flip = rng.random(len(noisy)) < FSDD_NOISE_RATE
    wrong = [str((int(d) + int(rng.integers(1, 10))) % 10) for d in noisy.labels]
    noisy["given"] = noisy.labels
    noisy["labels"] = np.where(flip, wrong, noisy.labels)
    return {"test": clips[clips["take"] < 5], "train_curated": clips[(clips["take"] >= 5) & (clips["take"] < 30)],
            "train_noisy": noisy}


def build_fsdd(root: Path, recordings: Path) -> None:
    from freesound.data.dataset import load_dataset
    from freesound.data.features import cache_features
    from freesound.data.folds import write_folds
    from freesound.fileio import atomic_write_csv

    data = root / "data"
    tables = fsdd_tables(recordings)
    for split, frame in tables.items():
        (data / split).mkdir(parents=True, exist_ok=True)
        for fname, source in zip(frame.fname, frame.source):
            target = data / split / fname
            if not target.exists():
                target.symlink_to(source)
        if split != "test":
            atomic_write_csv(data / f"{split}.csv", frame[["fname", "labels"]])
    classes = [str(d) for d in range(10)]
    submission = pd.DataFrame(0.0, index=range(len(tables["test"])), columns=classes)
    submission.insert(0, "fname", tables["test"].fname.tolist())
    atomic_write_csv(data / "sample_submission.csv", submission)
    curated = tables["train_curated"]
    others = sorted(set(curated.speaker) - set(FSDD_HELD_OUT))
    fold_of = {speaker: 0 for speaker in FSDD_HELD_OUT} | {s: 1 + i % 2 for i, s in enumerate(others)}
    write_folds(root / "work", pd.DataFrame({"fname": curated.fname, "fold": curated.speaker.map(fold_of)}))
    cache_features(load_dataset(data), root / "work", workers=2)


def base_settings(dataset: str) -> dict:
    return {**RUN_SETTINGS, **(FSDD_SETTINGS if dataset == "fsdd" else {})}


# --------------------------------------------------------------------------------------------
# Runs


def train_row(root: str, dataset_kind: str, row: str, seed: int) -> dict:
    """Train every stage of ``row`` for ``seed`` on fold 0; the last stage's OOF lwlrap.

    Every fold trains with ``resume``: a finished one is not trained again and an interrupted
    one continues exactly, so rerunning an ablation costs only what is missing. A row that names
    ``{baseline}`` as a teacher first completes the baseline's other folds: a teacher's targets
    for a clip come from the fold model that did not train on it (``freesound.training.teacher``).
    ``seconds`` is the training time the runs' logs recorded, summed over their stages.
    """
    import torch

    from freesound.config import load_experiment
    from freesound.data.dataset import load_dataset
    from freesound.data.folds import recorded_folds
    from freesound.paths import fold_dir
    from freesound.tools.search import ExperimentTarget, TrialSetup, fold_oof_lwlrap
    from freesound.training.trainer import train_fold

    torch.set_num_threads(1)
    root = Path(root)
    dataset = load_dataset(root / "data")
    work = root / "work"
    target = ExperimentTarget(load_experiment("small", REPO / "experiments"))
    names = {"baseline": run_name("baseline", seed)}
    common = {**base_settings(dataset_kind), "train.seed": seed}

    def train(name: str, settings: dict, fold: int) -> float:
        train_fold(target.config({**common, **settings}, name), dataset, work, fold, resume=True, progress=False,
                   log=lambda *_: None)
        return float(pd.read_csv(fold_dir(work, name, fold) / "log.csv").seconds.sum())

    seconds = 0.0
    if row in NEEDS_BASELINE:
        seconds += sum(train(names["baseline"], {}, fold) for fold in recorded_folds(work) if fold != FOLD)
    for suffix, settings in ROWS[row]:
        name = run_name(row, seed, suffix)
        if suffix:
            names[suffix] = name
        seconds += train(name, fill(settings, names), FOLD)
    score = fold_oof_lwlrap(name, TrialSetup.create(dataset, work, [FOLD]))
    return {"dataset": dataset_kind, "row": row, "seed": seed, "lwlrap": score, "seconds": seconds}


def band_statistics_lwlrap(root: Path) -> float:
    """The yardstick beside the table: the band-statistics logistic regression
    (``freesound.training.baseline``) trained on fold 0's curated training clips and scored on
    its held-out ones, as the rows are (without the noisy set: it is not robust to wrong labels)."""
    from freesound.data.dataset import load_dataset, multi_hot
    from freesound.data.features import load_features
    from freesound.data.folds import read_folds
    from freesound.metrics import lwlrap
    from freesound.training.baseline import fit_baseline, predict_baseline

    dataset = load_dataset(root / "data")
    curated = dataset.curated.merge(read_folds(root / "work", dataset.curated.fname), on="fname")
    specs = load_features(dataset, root / "work", "train_curated", curated.fname)
    truth = multi_hot(curated.labels, dataset.classes)
    held = (curated.fold == FOLD).to_numpy()
    model = fit_baseline([s for s, h in zip(specs, held) if not h], truth[~held])
    return float(lwlrap(truth[held], predict_baseline(model, [s for s, h in zip(specs, held) if h])))


def read_results(path: Path) -> list:
    """The results recorded in ``path``, the last one of each dataset, row and seed (a rerun that
    found a run finished records it again)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    latest = {}
    for line in filter(str.strip, lines):
        result = json.loads(line)
        latest[result["dataset"], result["row"], result["seed"]] = result
    return list(latest.values())


def run_all(root: Path, datasets, rows, seeds, jobs: int, log=partial(print, flush=True)) -> None:
    results_path = root / "results.jsonl"
    done = {(r["dataset"], r["row"], r["seed"]) for r in read_results(results_path)}
    # Seed by seed, both datasets, so that an ablation cut short has as many seeds for every row.
    jobs_in_order = [(d, r, s) for s in seeds for d in datasets for r in rows]
    waiting = {job for job in jobs_in_order if job[1] in NEEDS_BASELINE and (job[0], "baseline", job[2]) not in done}
    waves = [[job for job in jobs_in_order if job not in waiting], [job for job in jobs_in_order if job in waiting]]
    with ProcessPoolExecutor(jobs) as pool:
        for wave in waves:
            todo = [job for job in wave if job not in done]
            futures = {pool.submit(train_row, str(root / d), d, r, s): (d, r, s) for d, r, s in todo}
            for future in as_completed(futures):
                dataset, row, seed = futures[future]
                try:
                    result = future.result()
                except Exception:  # one failed run is reported and the others go on
                    log(f"{dataset:9s} {row:24s} seed {seed}: FAILED\n{traceback.format_exc()}")
                    continue
                with results_path.open("a") as out:
                    out.write(json.dumps(result) + "\n")
                log(f"{dataset:9s} {row:24s} seed {seed}: {result['lwlrap']:.4f} ({result['seconds']:.0f} s)")


def summary(results: list, datasets, rows) -> str:
    """Per row and dataset: the OOF lwlrap's mean ± std over seeds, and the change against the
    baseline, paired by seed (the mean ± std of option minus baseline over the seeds both have:
    seeds move the score more than most options do, so unpaired means would mostly compare seeds)."""
    frame = pd.DataFrame(results)
    scores = frame.set_index(["dataset", "row", "seed"]).lwlrap.sort_index()
    minutes = frame.groupby(["dataset", "row"]).seconds.mean() / 60
    headers = ["option"]
    for d in datasets:
        headers += [f"{d} OOF lwlrap", f"{d} change (paired)", f"{d} min/run"]
    lines = []
    for row in rows:
        cells = [row]
        for d in datasets:
            if (d, row) not in minutes.index:
                cells += ["-", "-", "-"]
                continue
            mine = scores.loc[(d, row)]
            cells += [f"{mine.mean():.4f} ± {mine.std(ddof=1) if len(mine) > 1 else 0:.4f} (n={len(mine)})"]
            if row == "baseline" or (d, "baseline") not in minutes.index:
                cells.append("")
            else:
                paired = (mine - scores.loc[(d, "baseline")]).dropna()
                spread = f" ± {paired.std(ddof=1):.4f}" if len(paired) > 1 else ""
                cells.append(f"{paired.mean():+.4f}{spread} (n={len(paired)})")
            cells.append(f"{minutes.loc[(d, row)]:.1f}")
        lines.append(cells)
    return table(headers, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="synthetic,fsdd")
    parser.add_argument("--rows", default="all", help=f"Comma-separated, from: {', '.join(ROWS)}.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (one core each).")
    parser.add_argument("--root", type=Path, default=None,
                        help="Datasets, weights and results.jsonl (default: a new temporary folder); "
                             "reuse one to continue or extend an ablation.")
    parser.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD's recordings/ folder.")
    parser.add_argument("--table-only", action="store_true", help="Print the table of --root's results.")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    rows = list(ROWS) if args.rows == "all" else args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS)) + sorted(set(datasets) - {"synthetic", "fsdd"})
    if unknown:
        parser.error(f"unknown row or dataset {unknown}")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.root or Path(tempfile.mkdtemp(prefix="ablation_"))
    root.mkdir(parents=True, exist_ok=True)
    print(header("Ablation of the other top solutions' options, fold 0, OOF lwlrap"))
    print(f"root {root}; datasets {datasets}; seeds {seeds}; {args.jobs} runs at a time\n")
    if not args.table_only:
        for kind in datasets:
            if not (root / kind / "work" / "folds.csv").is_file():
                print(f"building the {kind} dataset")
                build_synthetic(root / kind) if kind == "synthetic" else build_fsdd(root / kind, args.fsdd)
        run_all(root, datasets, rows, seeds, args.jobs)
    print()
    print(summary(read_results(root / "results.jsonl"), datasets, [r for r in ROWS if r in rows]))
    print("\nband statistics + logistic regression, same fold: " + ", ".join(
        f"{kind} {band_statistics_lwlrap(root / kind):.4f}" for kind in datasets))


if __name__ == "__main__":
    main()
