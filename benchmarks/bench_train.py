"""Training benchmark: the `default` experiment's step throughput, its data pipeline, and memory.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--device cuda] [--batch-size N]

1. Model steps: samples/s of ``freesound.training.trainer.train_epoch`` (the training loop's own step, with
   the method's loss and channels-last layout) on the full-size AuxSkipAttention, fp32 against
   fp16 autocast + GradScaler (CUDA only), on the same fixed batches.
2. Data pipeline: samples/s that ``SamplingDataset`` (the method's transforms and mixers) delivers
   through a DataLoader with 0..N worker processes, on random log-mels with the real data's mean
   clip lengths, against the model's fastest rate from 1.: does the CPU keep the device busy?
3. Memory: bytes of RAM per audio-second for log-mels held in memory, measured, and what that
   means for the full FSDKaggle2019 shape (10.5 h curated + 80 h noisy), plus the peak resident
   memory of ``cache_features`` on a synthetic dataset, and whether forked DataLoader workers
   share the held log-mels or copy them.

Exits with status 1 when a step's loss is not finite or AMP's first-step loss differs from fp32's
by more than 2% (same weights, same batch).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from common import REPO, header, median, table  # noqa: E402
from freesound.training.augment import train_transform  # noqa: E402
from freesound.config import load_experiment  # noqa: E402
from freesound.training.fold_parts import (  # noqa: E402
    adam_with_plateau,
    build_loss,
    create_training_model,
    experiment_mixer,
    transform_options,
)
from freesound.training.trainer import train_epoch  # noqa: E402
from freesound.training.sampling import ClipSource, SamplingDataset  # noqa: E402

FRAMES_PER_SECOND = 44100 / 690
#: FSDKaggle2019: clips and hours of audio (the competition's data description).
REAL_SHAPE = {"train_curated": (4970, 10.5), "train_noisy": (19815, 80.0)}
AMP_TOLERANCE = 0.02


def random_logmels(n: int, mean_seconds: float, rng: np.random.Generator) -> list:
    """Log-mel-like float32 arrays (128, frames) with exponentially distributed durations."""
    seconds = np.clip(rng.exponential(mean_seconds, n), 0.5, 30.0)
    return [rng.uniform(-80.0, 0.0, (128, int(s * FRAMES_PER_SECOND) + 1)).astype(np.float32) for s in seconds]


def sampling_dataset(experiment, num_classes: int, size: int, rng: np.random.Generator,
                     clips_per_source: int = 200) -> SamplingDataset:
    """The experiment's sampler, transforms and mixers over random clips shaped like the real sets."""
    def source(name, n, seconds, noisy):
        targets = (rng.random((n, num_classes)) < 1.5 / num_classes).astype(np.float32)
        return ClipSource(name, random_logmels(n, seconds, rng), targets, noisy)

    sampling = experiment.sampling
    sources = [source("curated", clips_per_source, 7.6, False),
               source("corrected_noisy", clips_per_source, 14.5, False),
               source("noisy", clips_per_source, 14.5, True)]
    return SamplingDataset(
        sources, [sampling.curated, sampling.corrected_noisy, sampling.noisy], size,
        transform=train_transform(experiment.transforms.crop, **transform_options(experiment)),
        mixer=experiment_mixer(experiment), seed=0, freq_channel=experiment.input.freq_channel,
    )


def step_throughput(experiment, num_classes, batches, device, use_amp) -> tuple:
    """(samples/s over ``batches`` after one warm-up batch, loss of the warm-up batch)."""
    torch.manual_seed(0)
    model = create_training_model(experiment, num_classes, device)
    cfg = experiment.train
    optimizer, _ = adam_with_plateau(model.parameters(), cfg.lr, cfg.plateau_factor, cfg.plateau_patience)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = build_loss(experiment)
    moved = [(x.to(device), y.to(device), n.to(device)) for x, y, n in batches]
    first_loss = train_epoch(model, moved[:1], loss_fn, optimizer, scaler, device, use_amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_epoch(model, moved[1:], loss_fn, optimizer, scaler, device, use_amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(x) for x, _, _ in moved[1:]) / (time.perf_counter() - start), first_loss


def pipeline_throughput(dataset, batch_size: int, workers: int, n_batches: int) -> float:
    """Samples/s a DataLoader delivers (worker start-up included, as in every training epoch)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True)
    start = time.perf_counter()
    for index, _ in enumerate(loader):
        if index + 1 == n_batches:
            break
    return n_batches * batch_size / (time.perf_counter() - start)


def peak_rss_mib(code: str) -> tuple:
    """(peak resident memory in MiB, lines printed) of a fresh Python process running ``code``.

    Reads the kernel's high-water mark ``VmHWM`` (Linux): unlike ``getrusage``'s ``ru_maxrss``,
    it is not inherited from the parent across fork and exec.
    """
    child = subprocess.run([sys.executable, "-c", code + "\nfrom pathlib import Path\n"
                            "print([l.split()[1] for l in Path('/proc/self/status').read_text().splitlines()"
                            " if l.startswith('VmHWM')][0])"],
                           capture_output=True, text=True, check=True, cwd=REPO)
    lines = child.stdout.split()
    return int(lines[-1]) / 1024, lines[:-1]


#: Run in a fresh process by ``worker_sharing_rows`` with arguments CLIPS WORKERS BATCHES: hold
#: log-mels, fork DataLoader workers that sample from them, and print each process's memory (kB,
#: from /proc/<pid>/smaps_rollup).
SHARING_CODE = """
import sys
import numpy as np
from pathlib import Path
from torch.utils.data import DataLoader
sys.path.insert(0, 'benchmarks')
from bench_train import sampling_dataset
from freesound.config import load_experiment

CLIPS, WORKERS, BATCHES = map(int, sys.argv[1:])

def memory(pid):
    fields = dict(line.split()[:2] for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()[1:])
    return int(fields['Rss:']), int(fields['Pss:']), int(fields['Private_Clean:']) + int(fields['Private_Dirty:'])

dataset = sampling_dataset(load_experiment('default', 'experiments'), 80, 10 ** 6, np.random.default_rng(0),
                           clips_per_source=CLIPS)
held = sum(spec.nbytes for source in dataset.sources for spec in source.specs) // 1024
iterator = iter(DataLoader(dataset, batch_size=16, num_workers=WORKERS))
for _ in range(BATCHES):
    next(iterator)
print(held, *memory('self'), *(value for worker in iterator._workers for value in memory(worker.pid)))
"""


def worker_sharing_rows(quick: bool, workers: int = 2) -> list:
    """Do forked DataLoader workers share the held log-mels (copy-on-write) or copy them?

    A worker's private memory (pages only it maps) is what it costs on top of the main process;
    proportional set sizes (shared pages split between the processes that map them) sum to the
    whole job's real footprint.
    """
    arguments = ["100", str(workers), "4"] if quick else ["600", str(workers), "20"]
    child = subprocess.run([sys.executable, "-c", SHARING_CODE, *arguments], capture_output=True, text=True,
                           check=True, cwd=REPO)
    held, main_rss, main_pss, _, *per_worker = (int(v) / 1024 for v in child.stdout.split())
    workers_rss, workers_pss, workers_private = (per_worker[i::3] for i in range(3))
    return [
        (f"training with {workers} DataLoader workers: log-mels held", f"{held:.0f} MiB",
         f"main process RSS {main_rss:.0f} MiB"),
        ("  each worker's private memory", f"{max(workers_private):.0f} MiB",
         f"{max(workers_private) / held:.0%} of the held log-mels (worker RSS {max(workers_rss):.0f} MiB, the rest shared)"),
        ("  whole job, sum of PSS", f"{main_pss + sum(workers_pss):.0f} MiB",
         f"{main_rss + workers * held:.0f} MiB if each worker copied the log-mels"),
    ]


def memory_rows(quick: bool) -> list:
    n, seconds = (50, 14.5) if quick else (200, 14.5)
    prelude = "import sys\nimport numpy as np\nsys.path.insert(0, 'benchmarks')\nfrom bench_train import random_logmels\n"
    baseline, _ = peak_rss_mib(prelude)
    held, printed = peak_rss_mib(prelude +
                        f"specs = random_logmels({n}, {seconds}, np.random.default_rng(0))\n"
                        f"print(sum(s.shape[1] for s in specs) / {FRAMES_PER_SECOND})")
    audio_seconds = float(printed[0])
    per_second = (held - baseline) * 2**20 / audio_seconds
    rows = [("log-mels held in RAM, measured", f"{per_second / 1024:.1f} KiB per audio-second",
             f"{n} clips, {audio_seconds / 3600:.2f} h")]
    total_hours = 0.0
    for split, (clips, hours) in REAL_SHAPE.items():
        total_hours += hours
        rows.append((f"{split}: {clips} clips, {hours} h", f"{per_second * hours * 3600 / 2**30:.2f} GiB", "extrapolated"))
    rows.append(("all training log-mels", f"{per_second * total_hours * 3600 / 2**30:.2f} GiB", "extrapolated"))
    with tempfile.TemporaryDirectory() as tmp:
        clips = 20 if quick else 60
        code = (f"from freesound.data.synth import synthesize_dataset\n"
                f"synthesize_dataset({str(tmp)!r} + '/data', num_classes=8, num_curated={clips}, num_noisy={clips}, "
                f"num_test=4, seed=0, progress=False)\n")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        imports = "from freesound.data.dataset import load_dataset\nfrom freesound.data.features import cache_features\n"
        imports_alone, _ = peak_rss_mib(imports)
        features, _ = peak_rss_mib(imports +
                                f"cache_features(load_dataset({str(tmp)!r} + '/data'), {str(tmp)!r} + '/work', "
                                f"workers=1, progress=False)")
    rows.append((f"cache_features peak RSS ({2 * clips + 4} clips, 1 worker)", f"{features:.0f} MiB",
                 f"its imports alone: {imports_alone:.0f} MiB"))
    return rows + worker_sharing_rows(quick)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="default: the experiment's on CUDA, 16 on the CPU")
    parser.add_argument("--steps", type=int, help="timed batches per mode (default 20 on CUDA, 3 on CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    experiment = load_experiment("default", REPO / "experiments")
    num_classes = 80
    batch_size = args.batch_size or (experiment.train.batch_size if cuda else 16)
    steps = args.steps or ((5 if args.quick else 20) if cuda else (2 if args.quick else 3))
    device_name = torch.cuda.get_device_name(device) if cuda else "CPU"

    print(header(f"Training: the default experiment on {device_name}"))
    print(f"model {experiment.model.params}, batch {batch_size}, {steps} timed steps per mode, "
          f"torch threads {torch.get_num_threads()}\n")
    rng = np.random.default_rng(0)
    dataset = sampling_dataset(experiment, num_classes, (steps + 1) * batch_size, rng)
    batches = list(DataLoader(dataset, batch_size=batch_size, drop_last=True))

    modes = [("fp32", False)] + ([("AMP fp16", True)] if cuda else [])
    results, failed = {}, False
    for name, use_amp in modes:
        results[name] = step_throughput(experiment, num_classes, batches, device, use_amp)
        failed |= not np.isfinite(results[name][1])
    fp32_rate, fp32_loss = results["fp32"]
    print(table(["mode", "samples/s", "vs fp32", "first-step loss"],
                [(name, f"{rate:.1f}", f"{rate / fp32_rate:.2f}x", f"{loss:.5f}") for name, (rate, loss) in results.items()]))
    for name, (_, loss) in results.items():
        if abs(loss - fp32_loss) > AMP_TOLERANCE * abs(fp32_loss):
            print(f"FAIL: {name}'s first-step loss {loss:.5f} differs from fp32's {fp32_loss:.5f}", file=sys.stderr)
            failed = True
    if not cuda:
        print("(no CUDA device: AMP rows need a GPU)")

    best_rate = max(rate for rate, _ in results.values())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n_batches = 3 if args.quick else 8
    rows = []
    for workers in sorted({0, 1, min(2, cpus), max(1, cpus // 2), cpus}):
        rates = [pipeline_throughput(dataset, batch_size, workers, n_batches) for _ in range(1 if args.quick else 3)]
        rate = median(rates)
        rows.append((workers, f"{rate:.0f}", f"{rate / best_rate:.2f}x", "yes" if rate >= best_rate else "no"))
    print(f"\nData pipeline ({type(dataset).__name__}, the method's transforms and mixers, batch {batch_size}), "
          f"against the fastest model step above ({best_rate:.1f} samples/s):")
    print(table(["DataLoader workers", "samples/s", "vs model", "keeps up"], rows))

    print("\nMemory:")
    print(table(["what", "figure", "note"], memory_rows(args.quick)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
