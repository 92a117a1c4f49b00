"""Window kernel time on a replica of BirdCLEF's test set: N one-minute soundscapes predicted per
5-second window by the kernel runtime itself (``freesound.kaggle.run_kernel`` with a manifest
built with windows), in a simulated Kaggle tree, with the estimate for Kaggle's 4 CPU cores beside it.

    .venv/bin/python benchmarks/bench_soundscapes.py [--n 600] [--soundscapes DIR]
        [--work DIR --experiment NAME] [--base-size 16] [--classes 206] [--folds 1]

Without ``--soundscapes`` the N soundscapes are generated from ``freesound.data.synth``'s class
signatures (12 five-second clips of random classes, one after the other), resampled to 32 kHz
and written as Ogg Vorbis, as BirdCLEF ships them (about 0.5 MB each; the decoding and the
resampling to the front end's 44.1 kHz are part of the kernel's time). Without ``--experiment``
the models are random AuxSkipAttention folds with the SED head, ``--base-size`` wide, over
``--classes`` classes (BirdCLEF 2025's 206): the time depends on the model, so name the trained
experiment you mean to submit for a real figure.

The kernel runs with every CPU this process may use (torch's threads and the decoding workers).
Its time for N soundscapes, less the set-up paid once, is projected to 600 and scaled to
Kaggle's 4 cores (``freesound.kaggle.budget.scale_to_cores``: as if the work divided evenly, an
optimistic figure), against the ``cpu4`` target's budget (80 of the 90 minutes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from common import header, table  # noqa: E402
from freesound.audio import resample  # noqa: E402
from freesound.data.synth import class_signature, render_clip  # noqa: E402
from freesound.ensembling.specs import experiment_spec  # noqa: E402
from freesound.kaggle import run_kernel  # noqa: E402
from freesound.kaggle.budget import TARGETS, scale_to_cores  # noqa: E402
from freesound.models import create_model, save_checkpoint  # noqa: E402
from freesound.paths import weights_root  # noqa: E402
from kernel_build.manifest import build_manifest, windows_entry  # noqa: E402

COMPETITION = "birdclef-replica"
TEST_DIR = "test_soundscapes"
SECONDS, WINDOW, RATE = 60, 5, 32000


def write_soundscape(path: Path, seed: int, n_signatures: int = 20) -> None:
    """One minute of 5-second synth clips of random classes, at 32 kHz, Ogg Vorbis."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(SECONDS // WINDOW):
        classes = rng.choice(n_signatures, size=int(rng.integers(1, 3)), replace=False)
        signatures = [class_signature(int(c), np.random.default_rng([seed, int(c)])) for c in classes]
        parts.append(render_clip(signatures, WINDOW, rng))
    sf.write(path, resample(np.concatenate(parts), 44100, RATE), RATE, format="OGG", subtype="VORBIS")


def random_experiment(work: Path, classes: list, base_size: int, folds: int) -> dict:
    """Random SED AuxSkipAttention folds under ``work``; their spec."""
    params = {"num_classes": len(classes), "base_size": base_size, "head": "sed"}
    for fold in range(folds):
        torch.manual_seed(fold)
        model = create_model("aux_skip_attention", **params).eval()
        save_checkpoint(weights_root(work) / "bench_sed" / f"fold_{fold}" / "model.pt", model,
                        model_name="aux_skip_attention", model_params=params, classes=classes, audio_config={})
    return experiment_spec("bench_sed", work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="soundscapes (generated ones)")
    parser.add_argument("--soundscapes", type=Path, default=None, help="a folder of soundscapes instead")
    parser.add_argument("--work", type=Path, default=None, help="work folder of a trained --experiment")
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--base-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=206)
    parser.add_argument("--folds", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-soundscapes-") as folder:
        root = Path(folder) / "kaggle"
        test_dir = root / "input" / COMPETITION / TEST_DIR
        test_dir.mkdir(parents=True)
        start = time.perf_counter()
        if args.soundscapes is None:
            for index in range(args.n):
                write_soundscape(test_dir / f"soundscape_{index:04d}.ogg", seed=index)
        else:
            for path in sorted(args.soundscapes.iterdir()):
                if path.is_file():
                    os.symlink(path.resolve(), test_dir / path.name)
        generated = time.perf_counter() - start
        paths = sorted(test_dir.iterdir())
        seconds = [sf.info(path).duration for path in paths]

        if args.experiment:
            work, spec = args.work, experiment_spec(args.experiment, args.work)
        else:
            work = Path(folder) / "work"
            spec = random_experiment(work, [f"class_{c:03d}" for c in range(args.classes)], args.base_size,
                                     args.folds)
        classes = torch.load(weights_root(work) / next(iter(spec["experiments"].values()))[0],
                             weights_only=True)["classes"]
        rows = [f"{path.stem}_{end}" for path, length in zip(paths, seconds)
                for end in range(WINDOW, int(round(length)) + 1, WINDOW)]
        pd.DataFrame(0.0, index=pd.Index(rows, name="row_id"), columns=classes).reset_index().to_csv(
            root / "input" / COMPETITION / "sample_submission.csv", index=False)
        (root / "working").mkdir()
        os.symlink(weights_root(work).resolve(), root / "input" / "weights")
        manifest = build_manifest(spec, weights_root(work), windows=windows_entry(WINDOW),
                                  competition={"name": COMPETITION, "test_dir": TEST_DIR})
        marks = {}

        def log(line):
            # The set-up (weights' sha256, loading, one silent window) is paid once, not per soundscape.
            if line.startswith("predicting "):
                marks["predicting"] = time.perf_counter()
            if line.startswith("runtime: "):
                marks["runtime"] = line.removeprefix("runtime: ")

        started = time.perf_counter()
        summary = run_kernel(manifest, root, device="cpu", time_limit=TARGETS["cpu4"]["budget_seconds"], log=log)
        ended = time.perf_counter()

    cpu4 = TARGETS["cpu4"]
    threads = torch.get_num_threads()
    setup = marks["predicting"] - started
    per_file = (ended - marks["predicting"]) / len(paths)
    projected = setup + per_file * cpu4["clips"]
    on_cpu4 = scale_to_cores(projected, threads, cpu4["cores"])
    print(header("Window kernel on one-minute soundscapes (BirdCLEF replica)"))
    model = (f"experiment {args.experiment}" if args.experiment else
             f"random AuxSkipAttention SED, base_size {args.base_size}, {args.classes} classes, {args.folds} fold(s)")
    print(f"{len(paths)} soundscapes ({sum(seconds) / 60:.1f} min of audio{'' if args.soundscapes else ', generated'} "
          f"in {generated:.0f} s), {len(rows)} rows, {model}; torch {threads} threads, "
          f"{summary['device']}, runtime {marks.get('runtime', 'torch')}")
    print()
    print(table(["", "seconds"], [
        [f"kernel, {len(paths)} soundscapes (measured)", f"{ended - started:.1f}"],
        ["of which set-up (weights checked and loaded)", f"{setup:.1f}"],
        ["per soundscape (decoding, front end, models, post-processing)", f"{per_file:.2f}"],
        [f"{cpu4['clips']} soundscapes here (projected)", f"{projected:.0f}"],
        [f"{cpu4['clips']} soundscapes on Kaggle's {cpu4['cores']} cores (scaled)", f"{on_cpu4:.0f}"],
        [f"cpu4 budget (limit {cpu4['limit_seconds']:.0f})", f"{cpu4['budget_seconds']:.0f}"],
    ]))
    print()
    print(f"verdict: {'fits' if on_cpu4 <= cpu4['budget_seconds'] else 'does not fit'} the cpu4 budget; "
          f"failures {len(summary['failures'])}, rows filled {len(summary['filled'])}")
    return 0 if not summary["failures"] and not summary["filled"] else 1


if __name__ == "__main__":
    sys.exit(main())
