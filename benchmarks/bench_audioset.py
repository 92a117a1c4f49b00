"""AudioSet-pretrained families against the method's AuxSkipAttention: size, arithmetic, speed.

    .venv-timm/bin/python benchmarks/bench_audioset.py [--quick] [--threads 2] [--rounds 3]

For each network (random weights, eval mode): parameters at its released size (527 AudioSet
classes; AuxSkipAttention with 80, ``experiments/default.toml``'s), GFLOP per second of audio
counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; a
multiply-add is 2 FLOP), inputs per second on ``--threads`` CPU threads in torch and, where it
imports, ONNX Runtime (the graph ``freesound.predict.runtimes.export_onnx`` writes, with a dynamic
number of frames for the whole-clip families), and the CPU time of a fine-tuning step (forward,
backward, Adam) per 1,000 training samples.

What one input is differs, as prediction does: AuxSkipAttention predicts 256-frame tiles of the
method's front end (4.0 s) at a step of 64 frames (1.0 s), so a long clip costs one tile per second
of audio; the AudioSet families (``[input] whole_clip``) take a whole clip in one pass, here
``CLIP_SECONDS`` of audio. "audio s/s" puts both on one scale: seconds of audio predicted per second.
Fine-tuning crops ``TRAIN_SECONDS`` for the families and the method's 256-frame tile for
AuxSkipAttention. Exits with status 1 when torch and ONNX Runtime disagree by more than 1e-4.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, interleaved, median, runtime_timing_options, table  # noqa: E402

TOLERANCE = 1e-4
#: The whole-clip families' benchmark clip: AudioSet's 10 s.
CLIP_SECONDS = 10.0
#: The families' training crop (``[input] tile_frames`` of docs/audioset.md's example).
TRAIN_SECONDS = 5.0
BATCH = {"tiled": 8, "whole_clip": 2}
TRAIN_BATCH = 4
#: The method's front end: 44.1 kHz, hop 690, 128 bands; tiles of 256 frames at a step of 64.
METHOD = {"frames_per_second": 44100 / 690, "n_mels": 128, "tile": 256, "step": 64}
#: experiments/default.toml's model.
AUX_SKIP_ATTENTION = dict(num_classes=80, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8,
                          last_fc=4)
#: The AudioSet families measured: registered name -> their front end's mel bands and frames per
#: second (``[audio] preset``). Add another family's registered name here (e.g. EfficientAT's).
AUDIOSET_MODELS = {
    "panns_cnn14": {"n_mels": 64, "frames_per_second": 32000 / 320},
    "panns_cnn10": {"n_mels": 64, "frames_per_second": 32000 / 320},
    "panns_cnn6": {"n_mels": 64, "frames_per_second": 32000 / 320},
}


def specs() -> list:
    """One dict per network: name, model factory, input shape, seconds of audio per input, batch."""
    from freesound.models import create_model

    tile = (3, METHOD["n_mels"], METHOD["tile"])
    rows = [{"name": "AuxSkipAttention (base 64)", "make": lambda: create_model("aux_skip_attention", **AUX_SKIP_ATTENTION),
             "shape": tile, "audio_seconds": METHOD["step"] / METHOD["frames_per_second"], "batch": BATCH["tiled"],
             "train_shape": tile, "dynamic": False}]
    for name, front_end in AUDIOSET_MODELS.items():
        frames = int(CLIP_SECONDS * front_end["frames_per_second"]) + 1
        train_frames = int(TRAIN_SECONDS * front_end["frames_per_second"])
        rows.append({"name": name, "make": lambda name=name: create_model(name, num_classes=527),
                     "shape": (3, front_end["n_mels"], frames), "audio_seconds": CLIP_SECONDS,
                     "batch": BATCH["whole_clip"], "train_shape": (3, front_end["n_mels"], train_frames),
                     "dynamic": True})
    return rows


def spread_out(model, seed: int = 0):
    """Non-trivial batch-norm statistics, so eval mode and the runtimes' comparison mean something."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def inputs(shape, batch: int, seed: int = 0):
    """A batch of network inputs: the log-mel plane near -40 dB / 100, the deltas near 0."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.05, (batch, *shape)).astype(np.float32)
    x[:, 0] += -0.4
    return x


def gflop(model, shape) -> float:
    """Forward-pass GFLOP of one input of ``shape`` (``FlopCounterMode``; multiply-add = 2 FLOP)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


def train_step(model, shape):
    """A zero-argument fine-tuning step (forward, BCE on the main head, backward, Adam) on a batch of
    ``TRAIN_BATCH`` inputs of ``shape``."""
    import torch

    model = model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = torch.from_numpy(inputs(shape, TRAIN_BATCH, seed=1))
    target = torch.zeros(TRAIN_BATCH, model(batch[:2])[0].shape[1])

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch)[0], target)
        loss.backward()
        optimizer.step()

    return step


def prepare(spec: dict, threads: int, onnx: bool) -> dict:
    """The figures that need no timing, and the timed callables (torch, ONNX Runtime, training)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = spread_out(spec["make"]())
    x = inputs(spec["shape"], spec["batch"])
    batch = torch.from_numpy(x)

    def torch_forward():
        with torch.inference_mode():
            return torch.sigmoid(model(batch)[0]).numpy()

    row = {"name": spec["name"], "parameters": sum(p.numel() for p in model.parameters()),
           "gflop_per_audio_second": gflop(model, spec["shape"]) / spec["audio_seconds"],
           "torch": torch_forward, "batch": spec["batch"], "audio_seconds": spec["audio_seconds"]}
    if onnx:
        from freesound.predict.runtimes import compile_model

        compiled = compile_model(model, "onnxruntime", threads, spec["shape"], dynamic_frames=spec["dynamic"])
        row["difference"] = float(np.abs(torch_forward() - compiled(x)).max())
        row["onnxruntime"] = lambda: compiled(x)
    train_model = spec["make"]()
    row["train"] = train_step(train_model, spec["train_shape"])
    return row


def measure(threads: int, rounds: int, onnx: bool) -> list:
    """``prepare`` for every network, then every timed callable in one round-robin (medians)."""
    rows = {spec["name"]: prepare(spec, threads, onnx) for spec in specs()}
    kinds = ("torch", "onnxruntime") if onnx else ("torch",)
    candidates = {(name, kind): row[kind] for name, row in rows.items() for kind in kinds}
    for (name, kind), seconds in interleaved(candidates, rounds=rounds).items():
        rows[name][kind] = rows[name]["batch"] / median(seconds)
    started = time.perf_counter()
    for (name, _), seconds in interleaved({(name, "train"): row["train"] for name, row in rows.items()},
                                          rounds=max(1, rounds - 1)).items():
        rows[name]["train"] = 1000 / TRAIN_BATCH * median(seconds)
    print(f"(fine-tuning steps timed in {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return list(rows.values())


def main(argv=None) -> int:
    args, rounds = runtime_timing_options(argv, __doc__.splitlines()[0], rounds=3, quick_rounds=1)
    import torch

    torch.set_num_threads(args.threads)
    onnx = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    print(header("AudioSet families against AuxSkipAttention"))
    print(f"{args.threads} threads, {rounds} rounds, medians; ONNX Runtime {'on' if onnx else 'not installed'}\n")
    rows = measure(args.threads, rounds, onnx)
    columns = ["network", "parameters", "GFLOP / audio s", "input", "torch inputs/s", "torch audio s/s"]
    columns += ["ORT inputs/s", "ORT audio s/s", "max |diff|"] if onnx else []
    columns += ["fine-tuning s / 1000 samples"]
    body = []
    for row in rows:
        what = "4.0 s tile" if row["audio_seconds"] < 2 else f"{row['audio_seconds']:g} s clip"
        line = [row["name"], f"{row['parameters']:,}", f"{row['gflop_per_audio_second']:.2f}", what,
                f"{row['torch']:.2f}", f"{row['torch'] * row['audio_seconds']:.1f}"]
        if onnx:
            line += [f"{row['onnxruntime']:.2f}", f"{row['onnxruntime'] * row['audio_seconds']:.1f}",
                     f"{row['difference']:.1e}"]
        body.append(line + [f"{row['train']:.0f}"])
    print(table(columns, body))
    worst = max((row.get("difference", 0.0) for row in rows), default=0.0)
    if worst > TOLERANCE:
        print(f"torch and ONNX Runtime disagree by {worst:.1e} > {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
