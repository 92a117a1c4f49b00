"""Tile length: training samples/s of ``experiments/fsdd.toml``'s model at 256, 128 and 64 frames.

    .venv/bin/python benchmarks/bench_tiles.py [--fsdd DIR] [--rounds N] [--batches N]

FSDD's spoken digits (0.14-2.28 s) fill a small part of the method's 256-frame tile: the clips'
widths are read from the recordings' headers (``--fsdd``, the folder holding ``recordings/``;
without it, widths drawn uniformly over that range). For each tile length (``[input]
tile_frames``) the same clips go through the experiment's transforms and mixers
(``SamplingDataset``, no worker) and its model's training step (``train_epoch``) on torch's one
thread, interleaved round by round; the table gives the median samples/s of each part, of the two
in sequence (one core) and overlapped (``fsdd.toml``'s 1-worker DataLoader on a second core: the
slower of the two), and the ratios to 256.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import limit_threads  # noqa: E402

limit_threads(1)

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from bench_train import step_throughput  # noqa: E402
from common import REPO, header, interleaved, median, table  # noqa: E402
from freesound.config import AudioConfig, load_experiment  # noqa: E402
from freesound.training.augment import train_transform  # noqa: E402
from freesound.training.fold_parts import experiment_mixer, transform_options  # noqa: E402
from freesound.training.sampling import ClipSource, SamplingDataset  # noqa: E402

TILES = (256, 128, 64)
CLASSES = 10


def fsdd_widths(folder, n: int, rng: np.random.Generator) -> np.ndarray:
    """Log-mel widths (frames) of ``n`` FSDD clips: read from the headers in ``folder/recordings``
    (at most 0.5 s is padded up to, as the front end does), else uniform over 0.14-2.28 s."""
    config = AudioConfig()
    if folder is not None:
        paths = sorted(Path(folder, "recordings").glob("*.wav"))
        seconds = np.array([sf.info(path).duration for path in rng.choice(paths, size=n, replace=False)])
    else:
        seconds = rng.uniform(0.14, 2.28, n)
    seconds = np.maximum(seconds, config.min_seconds)
    return 1 + (seconds * config.sample_rate).astype(int) // config.hop_length


def sampler(experiment, widths, rng: np.random.Generator) -> SamplingDataset:
    logmels = [rng.uniform(-80.0, 0.0, (experiment.audio.n_mels, int(w))).astype(np.float32) for w in widths]
    targets = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, len(widths))]
    return SamplingDataset([ClipSource("curated", logmels, targets, False)], [1.0], 10 ** 6,
                           transform=train_transform(experiment.input.tile_frames, **transform_options(experiment)),
                           mixer=experiment_mixer(experiment), seed=0)


def batches(dataset, batch_size: int, n: int, start: int = 0) -> list:
    """``n`` collated batches of ``dataset`` items from ``start`` on."""
    out = []
    for b in range(n):
        items = [dataset[start + b * batch_size + i] for i in range(batch_size)]
        out.append(tuple(torch.stack([torch.as_tensor(item[k]) for item in items]) for k in range(3)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", default=None, help="FSDD folder (with recordings/); default: uniform widths")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3, help="timed batches a round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    base = load_experiment(REPO / "experiments" / "fsdd.toml")
    batch_size = base.train.batch_size
    widths = fsdd_widths(args.fsdd, 400, rng)
    experiments = {tile: dataclasses.replace(base, input=dataclasses.replace(base.input, tile_frames=tile))
                   for tile in TILES}
    datasets = {tile: sampler(experiment, widths, np.random.default_rng(1)) for tile, experiment in experiments.items()}
    fixed = {tile: batches(dataset, batch_size, args.batches + 1) for tile, dataset in datasets.items()}
    device = torch.device("cpu")
    load_before = os.getloadavg()
    step_rates = {tile: [] for tile in TILES}

    def pipeline(tile):
        return lambda: batches(datasets[tile], batch_size, args.batches, start=10 ** 5)

    def step(tile):
        return lambda: step_rates[tile].append(step_throughput(experiments[tile], CLASSES, fixed[tile], device,
                                                               False)[0])

    pipeline_times = interleaved({tile: pipeline(tile) for tile in TILES}, args.rounds)
    interleaved({tile: step(tile) for tile in TILES}, args.rounds, warmup=0)
    load_after = os.getloadavg()
    samples = args.batches * batch_size
    rows = []
    for tile in TILES:
        pipe = samples / median(pipeline_times[tile])
        model = median(step_rates[tile])
        sequence, overlapped = 1.0 / (1.0 / pipe + 1.0 / model), min(pipe, model)
        rows.append([tile, f"{pipe:.0f}", f"{model:.1f}", f"{sequence:.1f}", f"{overlapped:.1f}"])
    sequence_256, overlapped_256 = float(rows[0][3]), float(rows[0][4])
    for row in rows:
        row.append(f"{float(row[3]) / sequence_256:.2f}x / {float(row[4]) / overlapped_256:.2f}x")
    print(header("Tile length (fsdd.toml's model, torch on 1 thread)"))
    print(f"clip widths: median {int(np.median(widths))} frames (min {widths.min()}, max {widths.max()}), "
          f"{'FSDD headers' if args.fsdd else 'uniform 0.14-2.28 s'}; batch {batch_size}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(table(["tile_frames", "pipeline samples/s", "model step samples/s", "in sequence", "overlapped",
                 "vs 256 (sequence / overlapped)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
