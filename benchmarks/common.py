"""Shared helpers for the speed benchmarks: thread limits, interleaved timing, synthetic clips,
machine description and Markdown tables.

Timing on a shared machine is noisy, so the benchmarks never time "all of A, then all of B":
``interleaved`` runs the candidates round-robin, alternating which goes first, and the scripts
report medians over the rounds. Import this module before NumPy/torch only through
``limit_threads`` (which must run before those libraries start their thread pools).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


def limit_threads(n: int = 1) -> None:
    """Cap BLAS/OpenMP pools at ``n`` threads. Call before importing numpy, scipy or torch."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)


def runtime_timing_options(argv, description: str, rounds: int, quick_rounds: int) -> tuple:
    """``--threads``, ``--rounds`` and ``--quick``, the options of the benchmarks that time networks
    in torch and ONNX Runtime: parses ``argv`` and caps the thread pools (``limit_threads``, so call
    it before importing torch). Returns ``(args, the rounds to time)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--rounds", type=int, default=rounds, help="timed batches per runtime and network")
    parser.add_argument("--quick", action="store_true", help=f"{quick_rounds} round(s)")
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    return args, quick_rounds if args.quick else args.rounds


def interleaved(candidates: dict, rounds: int, warmup: int = 1) -> dict:
    """Time each zero-argument callable once per round, round-robin.

    The order is reversed every other round, so neither candidate always runs right after the
    other (caches, CPU frequency, a neighbour's burst of work). Returns name -> list of seconds.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])


def spread(values) -> str:
    """``median [min-max]`` in milliseconds."""
    return f"{median(values) * 1e3:.1f} [{min(values) * 1e3:.1f}-{max(values) * 1e3:.1f}]"


def cpu_description() -> dict:
    """CPU model (from /proc/cpuinfo), logical CPUs, and what this process may use."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable}


def versions() -> dict:
    import librosa
    import numpy
    import scipy
    import torch

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "librosa": librosa.__version__, "torch": torch.__version__}


def header(title: str) -> str:
    """A few lines naming the machine, the libraries and the date."""
    cpu = cpu_description()
    lib = versions()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"# {title}\n"
            f"date {date.today().isoformat()}; CPU {cpu['cpu']}, {cpu['logical_cpus']} logical CPUs "
            f"({cpu['usable_cpus']} usable); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
            f"python {lib['python']}, numpy {lib['numpy']}, scipy {lib['scipy']}, librosa {lib['librosa']}, "
            f"torch {lib['torch']}")


def table(headers, rows) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Synthetic audio


def synth_clip(seconds: float, seed: int):
    """A dataset-like clip (``freesound.data.synth``'s procedural classes mixed over a noise floor),
    float32 mono at 44.1 kHz."""
    import numpy as np

    from freesound.data.synth import class_signature, render_clip

    rng = np.random.default_rng(seed)
    classes = rng.choice(20, size=int(rng.integers(1, 4)), replace=False)
    signatures = [class_signature(int(c), np.random.default_rng([seed, int(c)])) for c in classes]
    return render_clip(signatures, seconds, rng, shifted=bool(seed % 2))


def write_clips(directory, durations, seed: int = 0) -> list:
    """Write one 44.1 kHz PCM_16 wav per duration; returns the paths."""
    import soundfile as sf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, seconds in enumerate(durations):
        path = directory / f"clip{index:03d}_{seconds:.1f}s.wav"
        sf.write(path, synth_clip(seconds, seed + index), 44100, subtype="PCM_16")
        paths.append(path)
    return paths


def edge_clips(directory, seed: int = 0) -> list:
    """The awkward cases the front end must agree on: digital silence, clips shorter than the
    0.5 s minimum and than one FFT frame, other sample rates, stereo, a pure tone, a very steep
    (doubly integrated noise) spectrum, near-silence, a short burst in a long silent file."""
    import numpy as np
    import soundfile as sf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sr = 44100
    t = np.arange(3 * sr) / sr
    steep = np.cumsum(np.cumsum(rng.standard_normal(t.size)))
    burst = np.zeros(4 * sr)
    burst[2 * sr:2 * sr + 2000] = 0.5 * rng.standard_normal(2000)
    cases = [
        ("silence.wav", np.zeros(sr), sr, "PCM_16"),
        ("short_0.05s.wav", 0.5 * np.sin(2 * np.pi * 440 * t[:2205]), sr, "PCM_16"),
        ("short_0.3s.wav", synth_clip(0.3, seed + 1), sr, "PCM_16"),
        ("tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr, "FLOAT"),
        ("steep_spectrum.wav", 0.5 * steep / np.abs(steep).max(), sr, "FLOAT"),
        ("near_silence.wav", 1e-4 * rng.standard_normal(2 * sr), sr, "FLOAT"),
        ("burst_in_silence.wav", burst, sr, "PCM_16"),
        ("sr22050.wav", synth_clip(2.0, seed + 2)[::2], 22050, "PCM_16"),
        ("sr48000.flac", synth_clip(2.0, seed + 3), 48000, "PCM_24"),
        ("stereo.wav", np.stack([synth_clip(2.5, seed + 4), synth_clip(2.5, seed + 5)], axis=1), sr, "PCM_16"),
    ]
    paths = []
    for name, audio, rate, subtype in cases:
        path = directory / name
        sf.write(path, np.asarray(audio, dtype=np.float32), rate, subtype=subtype)
        paths.append(path)
    return paths
