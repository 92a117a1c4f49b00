"""GPU check: the CUDA-only tests and the CUDA measurements, written to a dated results file.

    make gpu-check                       # or: .venv/bin/python benchmarks/gpu_check.py [--quick]

Without a CUDA GPU it prints "no GPU: skipped" and exits 0. With one, each ``check_*`` function
below runs one check and returns a ``Check`` (passed or not, and a Markdown section); the
sections go to ``benchmarks/results/gpu_check_<date>.md`` (or ``--out``) after a header naming
the GPU and the libraries. The exit status is 1 when any check failed.

    check_cuda_tests       ``pytest -m cuda``: exact resume under ``train.deterministic``, a CPU
                           fold resumed on CUDA, fp16/fp32 prediction against the CPU's fp32, the
                           device probe, pinning on cuda:1 (two GPUs), one AMP training step
    check_inference_speed  tiles/s of the full-size AuxSkipAttention: as the Tagger ran before
                           (NCHW, no cuDNN autotuning) against now (folded batch norms,
                           channels-last, autotuning), fp16 and fp32; max |diff| against the CPU
    check_optimizer_steps  Adam steps of the full-size model with ``step`` counters on the CPU (as
                           a resume restores them now) against on the GPU (as it did before)
    check_training_feed    the ``default`` experiment's training samples/s, fp32 against AMP at
                           batch 128, and the samples/s its data pipeline delivers with 1, 4 and
                           all CPU workers, whole on the CPU and with ``train.augment_on_device``
                           (plus ``BatchAugment`` on the GPU): is the GPU starved?

The CUDA tests include the ensemble kernel run on CUDA against local CUDA prediction
(``tests/test_kernel.py``) and DDP under torchrun with one process per GPU present
(``tests/test_distributed.py``).

To add a check, write one more ``check_*`` function and list it in ``CHECKS``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import REPO, interleaved, median, table, versions  # noqa: E402
from freesound.fileio import atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
#: The method's network (DESIGN.md), 80 classes.
FULL_SIZE = dict(num_classes=80, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8, last_fc=4)
#: The tolerance the CUDA prediction test holds fp16 and fp32 to (against the CPU's fp32).
PROBABILITY_TOLERANCE = 2e-3
DEVICE = torch.device("cuda")
#: Tiles per inference pass.
TILES = 1024


@dataclass
class Check:
    name: str
    passed: bool
    markdown: str


def gpu_header() -> str:
    """The device, its architecture and the libraries, for the results file."""
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    lib = versions()
    return (f"# GPU check\n\ndate {date.today().isoformat()}; GPU {torch.cuda.get_device_name(index)} (sm_{major}{minor}, "
            f"{torch.cuda.device_count()} visible); torch {lib['torch']} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, architectures {', '.join(torch.cuda.get_arch_list())}); python "
            f"{lib['python']}, numpy {lib['numpy']}\n")


def full_size_model(seed: int = 0) -> torch.nn.Module:
    """The full-size AuxSkipAttention with random weights and batch-norm statistics, on the CPU."""
    from freesound.models import create_model

    torch.manual_seed(seed)
    model = create_model("aux_skip_attention", **FULL_SIZE).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def check_cuda_tests(quick: bool) -> Check:
    """Every test marked ``cuda`` (they skip on machines without a GPU)."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", "tests"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    tail = "\n".join(result.stdout.strip().splitlines()[-15:])
    return Check("CUDA tests", result.returncode == 0,
                 f"## CUDA tests\n\n`{' '.join(command[2:])}`: exit status {result.returncode}\n\n```\n{tail}\n```\n")


def check_inference_speed(quick: bool) -> Check:
    """The full-size model on ``TILES`` tiles in batches of 64: the Tagger's path before this change
    (the module itself, NCHW input, cuDNN's default algorithms, fp16 autocast) against its path
    now, in fp16 and fp32; probabilities compared with the CPU's fp32 on the first 64 tiles."""
    from freesound.predict import Tagger

    device = DEVICE
    batch_size, rounds = 64, 3 if quick else 10
    tiles = np.random.default_rng(0).uniform(-0.8, 0.0, (TILES, 3, 128, 256)).astype(np.float32)
    model = full_size_model()
    before_model = full_size_model().to(device)

    def before(x=tiles):
        torch.backends.cudnn.benchmark = False
        batch = torch.from_numpy(x).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16):
            probs = [torch.sigmoid(before_model(batch[i:i + batch_size])[0].float())
                     for i in range(0, len(batch), batch_size)]
        return torch.cat(probs).cpu().numpy()

    taggers = {p: Tagger([model], [str(i) for i in range(80)], device=device, batch_size=batch_size, precision=p)
               for p in ("fp16", "fp32")}
    candidates = {"before (NCHW, fp16)": before, "now, fp16": lambda: taggers["fp16"]._forward(tiles)[0],
                  "now, fp32": lambda: taggers["fp32"]._forward(tiles)[0]}
    times = interleaved(candidates, rounds=rounds)
    reference = Tagger([model], [str(i) for i in range(80)], device="cpu", precision="fp32")._forward(tiles[:64])[0]
    outputs = {"before (NCHW, fp16)": before(tiles[:64]), "now, fp16": taggers["fp16"]._forward(tiles[:64])[0],
               "now, fp32": taggers["fp32"]._forward(tiles[:64])[0]}
    base = median(times["before (NCHW, fp16)"])
    rows = [[name, f"{len(tiles) / median(seconds):.0f}", f"{base / median(seconds):.2f}",
             f"{np.abs(outputs[name] - reference).max():.2e}"] for name, seconds in times.items()]
    passed = all(np.abs(output - reference).max() < PROBABILITY_TOLERANCE for output in outputs.values())
    return Check("inference speed", passed,
                 f"## Inference, full-size AuxSkipAttention, {len(tiles):,} tiles in batches of {batch_size}\n\n"
                 f"Medians of {rounds} interleaved rounds; max |diff| against the CPU's fp32 on 64 tiles "
                 f"(tolerance {PROBABILITY_TOLERANCE}).\n\n"
                 + table(["path", "tiles/s", "speed-up", "max abs diff vs CPU fp32"], rows) + "\n")


def check_optimizer_steps(quick: bool) -> Check:
    """Adam steps of the full-size model on the GPU after one step, with the ``step`` counters on
    the CPU (``torch.load`` onto the CPU, then ``load_state_dict``: torch's default) against moved
    to the GPU (what ``torch.load(map_location=cuda)`` gave a resumed run): the latter syncs the
    device once per parameter per step."""
    device = DEVICE
    steps = 10 if quick else 50
    model = full_size_model().to(device)
    optimizers = {}
    for where in ("cpu", device.type):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        optimizer.step()
        for state in optimizer.state.values():
            state["step"] = state["step"].to(where)
        optimizers[f"step counters on {where}"] = optimizer

    def run(optimizer):
        def steps_of():
            for _ in range(steps):
                optimizer.step()
            torch.cuda.synchronize()
        return steps_of

    times = interleaved({name: run(optimizer) for name, optimizer in optimizers.items()}, rounds=3 if quick else 7)
    base = median(times[f"step counters on {device.type}"])
    rows = [[name, f"{median(seconds) / steps * 1e3:.2f}", f"{base / median(seconds):.2f}"]
            for name, seconds in times.items()]
    on_cpu = all(s["step"].device.type == "cpu" for s in optimizers["step counters on cpu"].state.values())
    return Check("optimizer steps", on_cpu,
                 f"## Adam steps, full-size model ({sum(p.numel() for p in model.parameters()):,} parameters)\n\n"
                 f"Medians over interleaved rounds of {steps} steps.\n\n"
                 + table(["optimizer state", "ms/step", "speed-up"], rows) + "\n")


def check_training_feed(quick: bool) -> Check:
    """Training samples/s of ``default`` at batch 128 (fp32, AMP), against what its DataLoader
    delivers with 1, 4 and all CPU workers, both ways (``bench_scaling.both_sets``)."""
    from torch.utils.data import DataLoader

    from bench_scaling import both_sets, cpu_count
    from bench_train import pipeline_throughput, sampling_dataset, step_throughput
    from freesound.config import load_experiment
    from freesound.training.device_augment import BatchAugment

    experiment = load_experiment("default", REPO / "experiments")
    batch_size, steps = 128, 5 if quick else 15
    dataset = sampling_dataset(experiment, 80, (steps + 1) * batch_size, np.random.default_rng(0))
    batches = list(DataLoader(dataset, batch_size=batch_size, drop_last=True))
    rates = {name: step_throughput(experiment, 80, batches, DEVICE, amp) for name, amp in (("fp32", False), ("AMP", True))}
    consumed = max(rate for rate, _ in rates.values())
    train_rows = [[name, f"{rate:.0f}", f"{rate / rates['fp32'][0]:.2f}", f"{loss:.5f}"]
                  for name, (rate, loss) in rates.items()]
    sets = both_sets(experiment)
    window = sets["window only"]
    augment = BatchAugment(experiment.transforms.crop, DEVICE)
    sample = [torch.stack(parts).to(DEVICE) for parts in zip(*(window[i] for i in range(batch_size)))][:4]

    def augment_batch():
        augment(*sample)
        torch.cuda.synchronize()

    augment_rate = batch_size / median(interleaved({"augment": augment_batch}, rounds=5)["augment"])
    pipeline_rows = []
    for workers in sorted({1, 4, cpu_count()}):
        row = [str(workers)]
        for dataset in sets.values():
            rate = pipeline_throughput(dataset, batch_size, workers, 3 if quick else 8)
            row += [f"{rate:.0f}", "yes" if rate >= consumed else "no"]
        pipeline_rows.append(row)
    return Check("training feed", all(np.isfinite(loss) for _, loss in rates.values()),
                 f"## Training `default` at batch {batch_size}, and its data pipeline\n\n"
                 + table(["mode", "samples/s", "vs fp32", "first-step loss"], train_rows)
                 + f"\n\nDataLoader samples/s (worker start-up included), against the {consumed:.0f} samples/s the "
                 f"GPU consumes; BatchAugment on the GPU: {augment_rate:.0f} samples/s.\n\n"
                 + table(["workers", "CPU pipeline", "keeps up", "augment_on_device", "keeps up"], pipeline_rows) + "\n")


CHECKS = [check_cuda_tests, check_inference_speed, check_optimizer_steps, check_training_feed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: benchmarks/results/gpu_check_<date>.md)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: skipped (torch sees no CUDA device; the CUDA tests and measurements need one)")
        return 0
    out = args.out or RESULTS / f"gpu_check_{date.today().isoformat()}.md"
    sections, failed = [gpu_header()], []
    for check in CHECKS:
        print(f"{check.__name__} ...", flush=True)
        try:
            result = check(args.quick)
        except Exception as error:  # a crashing check is a failed check, reported with the others
            result = Check(check.__name__, False, f"## {check.__name__}\n\nfailed: {type(error).__name__}: {error}\n")
        print(result.markdown)
        sections.append(result.markdown)
        if not result.passed:
            failed.append(result.name)
    sections.append(f"**{'failed: ' + ', '.join(failed) if failed else 'all checks passed'}**\n")
    atomic_write_text(out, "\n".join(sections))
    print(f"results -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
