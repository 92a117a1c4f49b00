"""Scaling benchmark (issue #18): can the CPUs feed a fast GPU, and does ``torch.compile`` pay?

    .venv/bin/python benchmarks/bench_scaling.py [--quick] [--part pipeline|compile|all]

1. Pipeline: samples/s one DataLoader worker delivers for the ``default`` experiment, (a) the
   whole CPU pipeline (``SamplingDataset``: pad, crop, resized crop, SpecAugment, deltas, mixing)
   against (b) ``train.augment_on_device``'s part of it (``WindowSamplingDataset``: windows and
   random draws; ``BatchAugment`` does the rest on the device), per sample in one process
   (interleaved rounds) and through DataLoaders with 1 and all CPU workers; what ``BatchAugment``
   costs per sample on this device; and how many workers a GPU doing ``TARGET`` samples/s needs.
2. Compile: the training step of the ``small`` experiment's model (base 4) eager against
   ``torch.compile``d (``train.compile``), on this device: the first compiled step's time (the
   compilation) and the median step time of each, interleaved.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench_train import pipeline_throughput, random_logmels  # noqa: E402
from common import REPO, header, interleaved, median, table  # noqa: E402
from freesound.config import load_experiment  # noqa: E402
from freesound.training.device_augment import BatchAugment  # noqa: E402
from freesound.training.sampling import ClipSource  # noqa: E402
from freesound.training.trainer import build_loss, compiled, create_training_model, training_set  # noqa: E402

#: The GPU rate the issue asks about (samples/s).
TARGET = 3000


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def both_sets(experiment, num_classes: int = 80, size: int = 10 ** 6, clips: int = 200) -> dict:
    """The experiment's training set both ways, over the same random clips shaped like the real
    sets (mean 7.6 s curated, 14.5 s noisy): ``{"CPU pipeline": ..., "window only": ...}``."""
    rng = np.random.default_rng(0)

    def source(name, seconds, noisy):
        targets = (rng.random((clips, num_classes)) < 1.5 / num_classes).astype(np.float32)
        return ClipSource(name, random_logmels(clips, seconds, rng), targets, noisy)

    sources = [source("curated", 7.6, False), source("corrected_noisy", 14.5, False), source("noisy", 14.5, True)]
    sampling = experiment.sampling
    probs = [sampling.curated, sampling.corrected_noisy, sampling.noisy]
    sets = {}
    for name, on_device in (("CPU pipeline", False), ("window only", True)):
        variant = replace(experiment, train=replace(experiment.train, augment_on_device=on_device, epoch_size=size))
        sets[name] = training_set(variant, sources, probs, seed=0)
    return sets


def pipeline_rows(experiment, device: torch.device, quick: bool, batch_size: int = 32) -> tuple:
    """(table rows, per-worker samples/s of each mode, BatchAugment's samples/s on ``device``)."""
    sets = both_sets(experiment)
    per_round = 16 if quick else 48
    counter = {"next": 0}

    def samples(dataset):
        def run():
            start = counter["next"]
            counter["next"] += per_round
            for index in range(start, start + per_round):
                dataset[index]
        return run

    times = interleaved({name: samples(dataset) for name, dataset in sets.items()}, rounds=3 if quick else 7)
    per_worker = {name: per_round / median(seconds) for name, seconds in times.items()}

    augment = BatchAugment(experiment.transforms.crop, device)
    batch = [torch.stack(parts) for parts in zip(*(sets["window only"][i] for i in range(batch_size)))]
    moved = [part.to(device) for part in batch[:4]]

    def augment_batch():
        augment(*moved)
        if device.type == "cuda":
            torch.cuda.synchronize()

    augment_rate = batch_size / median(interleaved({"augment": augment_batch}, rounds=5)["augment"])
    workers = sorted({1, cpu_count()})
    rows = []
    n_batches = 3 if quick else 6
    for name, dataset in sets.items():
        loader_rates = [median([pipeline_throughput(dataset, batch_size, w, n_batches) for _ in range(1 if quick else 2)])
                        for w in workers]
        rows.append([name, f"{per_worker[name]:.0f}", *(f"{rate:.0f}" for rate in loader_rates),
                     str(math.ceil(TARGET / per_worker[name]))])
    return rows, workers, per_worker, augment_rate


def compile_rows(device: torch.device, quick: bool, batch_size: int = 16) -> list:
    """Eager against compiled training steps of the ``small`` experiment's model on ``device``."""
    experiment = load_experiment("small", REPO / "experiments")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(-0.8, 0, (batch_size, 3, 128, 256)).astype(np.float32)).to(
        device, memory_format=torch.channels_last)
    targets = torch.from_numpy((rng.random((batch_size, 80)) < 0.05).astype(np.float32)).to(device)
    noisy = torch.zeros(batch_size, dtype=torch.bool, device=device)
    loss_fn = build_loss(experiment)
    steps, first = {}, {}
    for name, enabled in (("eager", False), ("torch.compile", True)):
        torch.manual_seed(0)
        model = create_training_model(experiment, 80, device)
        train_model = compiled(model, enabled)
        optimizer = torch.optim.Adam(model.parameters(), lr=experiment.train.lr)

        def step(train_model=train_model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(tuple(head.float() for head in train_model(images)), targets, noisy)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return loss.item()

        start = time.perf_counter()
        first[name] = (step(), time.perf_counter() - start)
        steps[name] = step
    times = interleaved(steps, rounds=3 if quick else 10, warmup=1)
    eager = median(times["eager"])
    return [[name, f"{first[name][1]:.1f}", f"{median(seconds) * 1e3:.0f}", f"{eager / median(seconds):.2f}",
             f"{first[name][0]:.5f}"] for name, seconds in times.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--part", choices=("pipeline", "compile", "all"), default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.part in ("pipeline", "all"):
        experiment = load_experiment("default", REPO / "experiments")
        print(header(f"Data pipeline of `default` ({cpu_count()} CPUs, batch work on {device})"))
        rows, workers, per_worker, augment_rate = pipeline_rows(experiment, device, args.quick)
        print(table(["training set", "samples/s per worker (one process)",
                     *(f"DataLoader, {w} worker{'s' * (w > 1)}" for w in workers), f"workers for {TARGET}/s"], rows))
        print(f"\nBatchAugment (SpecAugment, deltas, mixing of a batch of 32) on {device}: {augment_rate:.0f} samples/s; "
              f"window only + BatchAugment in one CPU process: "
              f"{1 / (1 / per_worker['window only'] + 1 / augment_rate):.0f} samples/s")
    if args.part in ("compile", "all"):
        print(header(f"torch.compile of the training step (`small`'s model, batch 16) on {device}"))
        print(f"torch threads {torch.get_num_threads()}\n")
        print(table(["model", "first step s (compile)", "ms/step", "speed-up", "first-step loss"],
                    compile_rows(device, args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
