"""Inference benchmark: ``freesound.predict.Tagger`` against ``reference_predict`` (one clip at a
time, batches of 16 tiles, fp32, ``torch.no_grad``) with the full-size AuxSkipAttention on the CPU.

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--threads N]
    .venv/bin/python benchmarks/bench_inference.py --overlap     # the front end overlapping the model

Both sides use the same torch thread count (default: torch's own, one per core) and their own
copy of the same weights. Prints Markdown tables and exits with status 1 when the two disagree
by more than 1e-4 on any clip probability.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import header, interleaved, median, table  # noqa: E402
from freesound.models import create_model  # noqa: E402
from benchmarks.reference import reference_predict  # noqa: E402
from freesound.predict import Tagger, make_tiles, tile_layout  # noqa: E402

TOLERANCE = 1e-4
SR, HOP = 44100, 690
MODEL = dict(num_classes=80, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8, last_fc=4)
#: The competition's hidden test set and kernel limits (DESIGN.md), and the original ensemble's
#: size: 7 experiments x 5 folds of full-size models (its 3 MLP stackers cost next to nothing).
KAGGLE_TEST_CLIPS, KAGGLE_TEST_HOURS = 4481, 12.9
KAGGLE_CPU_LIMIT_HOURS, KAGGLE_GPU_LIMIT_HOURS = 4.0, 1.0
ENSEMBLE_MODELS = 7 * 5


def kaggle_estimate(tiles_per_second: float) -> dict:
    """What the full ensemble's model passes would take on Kaggle's test set at this tile rate.

    Tiles per model are approximated as clips x the tiles of a clip of the mean length (10.4 s,
    untrimmed); clips under 4 s get one tile each, so the true count is somewhat higher.
    """
    mean_frames = 1 + int(KAGGLE_TEST_HOURS * 3600 / KAGGLE_TEST_CLIPS * SR) // HOP
    tiles = KAGGLE_TEST_CLIPS * tile_layout(mean_frames)[0]
    seconds_per_model = tiles / tiles_per_second
    return {"tiles_per_model": tiles, "ensemble_hours": ENSEMBLE_MODELS * seconds_per_model / 3600,
            "models_within_cpu_limit": int(KAGGLE_CPU_LIMIT_HOURS * 3600 // seconds_per_model),
            "gpu_tiles_per_second_needed": ENSEMBLE_MODELS * tiles / (KAGGLE_GPU_LIMIT_HOURS * 3600)}


def full_size_model(seed: int = 0) -> torch.nn.Module:
    """The method's AuxSkipAttention with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = create_model("aux_skip_attention", **MODEL).eval()
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


def clip_logmels(durations, seed: int = 0) -> list:
    """Log-mel-like arrays (128, 1 + n // 690) for clips of the given durations."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-80.0, 0.0, (128, 1 + int(round(d * SR)) // HOP)).astype(np.float32) for d in durations]


def tiles_timing(logmels, rounds: int) -> tuple:
    """make_tiles (vectorised deltas) against the per-tile loop it replaced, ms for all clips."""
    from freesound.audio.network_input import to_network_input

    def per_tile(logmel, step=64, tile=256):
        n_tiles, left, right = tile_layout(logmel.shape[1], step, tile)
        padded = np.pad(logmel, ((0, 0), (left, right)), constant_values=logmel.min())
        return np.stack([to_network_input(padded[:, i * step:i * step + tile]) for i in range(n_tiles)])

    worst = max(float(np.abs(make_tiles(m) - per_tile(m)).max()) for m in logmels)
    times = interleaved({"per-tile loop": lambda: [per_tile(m) for m in logmels],
                         "make_tiles": lambda: [make_tiles(m) for m in logmels]}, rounds)
    return median(times["per-tile loop"]), median(times["make_tiles"]), worst


class WaitingTagger(Tagger):
    """A Tagger on an accelerator stand-in: each batch of tiles waits ``seconds_per_tile`` per tile
    without using the CPU (as the host does while a GPU computes), and returns zeros."""

    seconds_per_tile = 0.004

    def _forward(self, tiles):
        time.sleep(self.seconds_per_tile * len(tiles) * len(self.models))
        return np.zeros((len(self.models), len(tiles), len(self.classes)), np.float32)


def overlap_timing(rounds: int, n_clips: int, torch_threads: int) -> list:
    """Decode-everything-then-predict against ``predict_files``' streaming (the next chunks decode
    in a worker while the model predicts), on 44.1 kHz wav files of 1-12 s.

    Two models: the accelerator stand-in ``WaitingTagger`` (the CPU is free while it works) and a
    base-16 AuxSkipAttention on the CPU with ``torch_threads`` threads (the worker needs a core the
    model leaves free). Returns table rows; both paths' outputs must agree (checked).
    """
    import tempfile

    from common import write_clips
    from freesound.predict import predict_logmels_from_files

    torch.set_num_threads(torch_threads)
    durations = list(np.random.default_rng(0).uniform(1.0, 12.0, n_clips))
    classes = [f"c{i}" for i in range(20)]
    torch.manual_seed(0)
    small = create_model("aux_skip_attention", num_classes=20, base_size=16).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clips(folder, durations)
        for label, tagger in (("accelerator stand-in (waits 4 ms a tile)", WaitingTagger([small], classes, workers=1)),
                              (f"base-16 model on the CPU, {torch_threads} torch thread(s)",
                               Tagger([small], classes, workers=1))):
            def sequential(tagger=tagger):
                _, logmels = predict_logmels_from_files(paths, tagger.audio_config, workers=tagger.workers)
                return tagger.predict_spectrograms(logmels)

            def decode_only(tagger=tagger):
                return predict_logmels_from_files(paths, tagger.audio_config, workers=0)

            def model_only(tagger=tagger, logmels=decode_only()[1]):
                return tagger.predict_spectrograms(logmels)

            worst = float(np.abs(sequential() - tagger.predict_files(paths).to_numpy()).max())
            times = interleaved({"decode": decode_only, "model": model_only, "sequential": sequential,
                                 "streaming": lambda tagger=tagger: tagger.predict_files(paths)}, rounds)
            t = {name: median(values) for name, values in times.items()}
            rows.append((label, f"{t['decode']:.2f}", f"{t['model']:.2f}", f"{t['sequential']:.2f}",
                         f"{t['streaming']:.2f}", f"{t['sequential'] / t['streaming']:.2f}x", f"{worst:.1e}"))
    return rows


def runtimes_timing(logmels, rounds: int, batch_size: int) -> tuple:
    """The full-size model's clip probabilities from the Tagger on torch, ONNX Runtime, OpenVINO
    (those installed) and ONNX Runtime int8 (static, QDQ, calibrated on 64 of the clips' tiles),
    interleaved. Returns (table rows, worst |diff| of the fp32 runtimes against torch)."""
    from freesound.predict import runtimes

    classes = [f"c{i}" for i in range(MODEL["num_classes"])]
    model = full_size_model()
    taggers = {"torch (BN folded, channels_last)": Tagger([model], classes, batch_size=batch_size, runtime="torch")}
    for name in runtimes.ONNX_RUNTIMES:
        if runtimes.runtime_usable(name):
            taggers[name] = Tagger([model], classes, batch_size=batch_size, runtime=name)
    reference = taggers["torch (BN folded, channels_last)"].predict_spectrograms(logmels)
    outputs = {name: tagger.predict_spectrograms(logmels) for name, tagger in taggers.items()}
    candidates = {name: (lambda tagger=tagger: tagger.predict_spectrograms(logmels)) for name, tagger in taggers.items()}
    if runtimes.runtime_usable("onnxruntime"):
        tiles = np.concatenate([make_tiles(m) for m in logmels])
        int8 = runtimes.CompiledModel(runtimes.quantize_int8(runtimes.export_onnx(model), tiles[:64]), "onnxruntime",
                                      torch.get_num_threads())
        quantized = Tagger([model], classes, batch_size=batch_size, runtime="onnxruntime")
        quantized._compiled = lambda _model, _shape: lambda t: np.concatenate(
            [int8(t[i:i + batch_size]) for i in range(0, len(t), batch_size)])
        outputs["onnxruntime int8 (static, QDQ)"] = quantized.predict_spectrograms(logmels)
        candidates["onnxruntime int8 (static, QDQ)"] = lambda: quantized.predict_spectrograms(logmels)
    times = interleaved(candidates, rounds)
    n_tiles = sum(tile_layout(m.shape[1])[0] for m in logmels)
    base = median(times["torch (BN folded, channels_last)"])
    rows = [(name, f"{median(values):.2f}", f"{n_tiles / median(values):.2f}", f"{base / median(values):.2f}x",
             f"{float(np.abs(outputs[name] - reference).max()):.1e}") for name, values in times.items()]
    worst = max(float(np.abs(outputs[name] - reference).max()) for name in taggers)
    return rows, worst


def int8_oof(work, data, name: str) -> tuple:
    """OOF lwlrap of a trained experiment with each fold model in fp32 (torch) and int8 (ONNX
    Runtime, static QDQ, calibrated on the tiles of 32 of the fold's own training clips)."""
    from freesound.data.dataset import load_dataset
    from freesound.data.features import load_features
    from freesound.data.folds import read_folds
    from freesound.metrics import lwlrap
    from freesound.paths import experiment_checkpoints, experiment_dir
    from freesound.predict import runtimes
    from freesound.training.oof import multi_hot

    dataset = load_dataset(data)
    assignment = read_folds(work, dataset.curated.fname)
    folds = sorted(set(assignment.fold))
    fp32, int8, fnames = [], [], []
    for fold, checkpoint in zip(folds, experiment_checkpoints(experiment_dir(work, name), folds)):
        tagger = Tagger.from_checkpoints([checkpoint], runtime="torch")
        valid = assignment[assignment.fold == fold].fname.tolist()
        train = assignment[assignment.fold != fold].fname.tolist()[:32]
        config = tagger.audio_config
        logmels = load_features(dataset, work, "train_curated", valid, config)
        calibration = np.concatenate([make_tiles(m) for m in load_features(dataset, work, "train_curated", train, config)])
        compiled = runtimes.CompiledModel(runtimes.quantize_int8(runtimes.export_onnx(tagger.models[0]), calibration),
                                          "onnxruntime")
        quantized = Tagger(tagger.models, tagger.classes, runtime="onnxruntime")
        quantized._compiled = lambda _model, _shape: compiled
        fp32.append(tagger.predict_spectrograms(logmels))
        int8.append(quantized.predict_spectrograms(logmels))
        fnames += valid
    labels = dataset.curated.set_index("fname").loc[fnames, "labels"]
    truth = multi_hot(labels, dataset.classes)
    return lwlrap(truth, np.concatenate(fp32)), lwlrap(truth, np.concatenate(int8))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (fewer clips and rounds)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 3, quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=64, help="Tagger batch size (default 64)")
    parser.add_argument("--overlap", action="store_true",
                        help="only measure the front end overlapping the model (predict_files' streaming)")
    parser.add_argument("--runtimes", action="store_true",
                        help="only compare torch, ONNX Runtime, OpenVINO and int8 on the full-size model")
    parser.add_argument("--int8-oof", nargs=3, metavar=("WORK", "DATA", "EXPERIMENT"),
                        help="only the OOF lwlrap of a trained experiment in fp32 and int8")
    args = parser.parse_args(argv)
    if args.int8_oof:
        before, after = int8_oof(*args.int8_oof)
        print(f"OOF lwlrap of {args.int8_oof[2]}: fp32 (torch) {before:.4f}, int8 (ONNX Runtime, static QDQ) "
              f"{after:.4f}, change {after - before:+.4f}")
        return 0
    if args.runtimes:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(header("CPU runtimes: the Tagger's clip probabilities, full-size AuxSkipAttention"))
        durations = [2.0, 5.0, 9.0, 14.0] if args.quick else [1.0, 3.0, 5.0, 7.0, 9.0, 12.0, 15.0, 20.0]
        rows, worst = runtimes_timing(clip_logmels(durations), args.rounds or 3, args.batch_size)
        print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, clips of {durations} s")
        print(table(["runtime", "s (median)", "tiles/s", "speed-up", "max |diff| vs torch"], rows))
        return 0 if worst <= TOLERANCE else 1
        print(header("Front end overlapping the model: decode everything first vs predict_files' streaming"))
        rows = overlap_timing(args.rounds or 3, 24 if args.quick else 64, args.threads or 1)
        print(table(["model", "decode s (1 process)", "model s", "decode all, then predict s",
                     "streaming, 1 worker s", "speed-up", "max |diff|"], rows))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 3)
    durations = [1.0, 3.0, 6.5, 12.0] if args.quick else [1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.0, 9.0, 10.5, 12.0]

    print(header("Inference: Tagger vs reference_predict, full-size AuxSkipAttention on the CPU"))
    print(f"torch threads {torch.get_num_threads()}; model {MODEL}")
    logmels = clip_logmels(durations)
    n_tiles = sum(tile_layout(m.shape[1])[0] for m in logmels)
    print(f"{len(logmels)} clips of {durations[0]:g}-{durations[-1]:g} s, {n_tiles} tiles of 256 frames at step 64\n")

    model = full_size_model()
    reference_model = copy.deepcopy(model)  # the reference never sees anything the Tagger does
    tagger = Tagger([model], classes=[f"c{i}" for i in range(MODEL["num_classes"])], batch_size=args.batch_size,
                    runtime="torch")

    start = time.perf_counter()
    ours = tagger.predict_spectrograms(logmels)  # also builds the Tagger's inference copy once
    first_call = time.perf_counter() - start
    expected = np.stack([reference_predict([reference_model], m) for m in logmels])
    worst = float(np.abs(ours - expected).max())

    times = interleaved({
        "reference_predict (per clip, batch 16, no_grad, NCHW)":
            lambda: [reference_predict([reference_model], m) for m in logmels],
        f"Tagger (batch {args.batch_size}, BN folded, channels_last, inference_mode)":
            lambda: tagger.predict_spectrograms(logmels),
    }, rounds, warmup=0)
    ref_name, ours_name = list(times)
    ref_t, ours_t = median(times[ref_name]), median(times[ours_name])
    audio_s = sum(durations)
    print(table(["predictor", "s (median)", "tiles/s", "audio-s/s", "speed-up"], [
        (ref_name, f"{ref_t:.2f}", f"{n_tiles / ref_t:.2f}", f"{audio_s / ref_t:.1f}", "1.00x"),
        (ours_name, f"{ours_t:.2f}", f"{n_tiles / ours_t:.2f}", f"{audio_s / ours_t:.1f}", f"{ref_t / ours_t:.2f}x"),
    ]))
    print(f"\nrounds {rounds}; all times: reference {[round(t, 2) for t in times[ref_name]]}, "
          f"ours {[round(t, 2) for t in times[ours_name]]}; Tagger's first call (incl. building its "
          f"inference copy) {first_call:.2f} s")

    estimate = kaggle_estimate(n_tiles / ours_t)
    print(f"\nKaggle's test set ({KAGGLE_TEST_CLIPS} clips, {KAGGLE_TEST_HOURS} h) at the Tagger's rate: about "
          f"{estimate['tiles_per_model']} tiles per model; the {ENSEMBLE_MODELS} fold models of a 7-experiment "
          f"ensemble would take {estimate['ensemble_hours']:.0f} h here, against a CPU kernel's "
          f"{KAGGLE_CPU_LIMIT_HOURS:g} h limit ({estimate['models_within_cpu_limit']} full-size models fit); "
          f"within a GPU kernel's {KAGGLE_GPU_LIMIT_HOURS:g} h it needs at least "
          f"{estimate['gpu_tiles_per_second_needed']:.0f} tiles/s")

    loop_t, tiles_t, tiles_diff = tiles_timing(logmels, max(3, rounds * 3))
    print(f"\nmake_tiles for all clips: per-tile loop {loop_t * 1e3:.1f} ms, vectorised {tiles_t * 1e3:.1f} ms "
          f"({loop_t / tiles_t:.2f}x), max |diff| {tiles_diff:.1e}")

    print(f"\nmax |diff| of clip probabilities: {worst:.2e} (tolerance {TOLERANCE:g})")
    if not worst <= TOLERANCE:
        print("FAIL: Tagger disagrees with reference_predict", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
