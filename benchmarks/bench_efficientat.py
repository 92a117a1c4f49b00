"""EfficientAT's MobileNetV3 at its released widths beside the method's AuxSkipAttention, per second of audio.

    .venv-timm/bin/python benchmarks/bench_efficientat.py [--quick] [--threads 2] [--rounds 5]

For each network (527 AudioSet classes for EfficientAT, 80 for AuxSkipAttention; random weights
with non-trivial batch-norm statistics, eval mode): parameters; GFLOP of one input, counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; a multiply-add is
2 FLOP), and per second of audio; inputs/s in batches of ``BATCH`` on ``--threads`` CPU threads
in torch and ONNX Runtime (``freesound.predict.runtimes.compile_model``, what ``predict
--runtime`` and kernels run), as seconds of audio per second. EfficientAT's input is the
original's 10 s clip, ``(3, 128, 1000)`` (its front end's 100 frames a second; the network reads
plane 0), AuxSkipAttention's the method's 256-frame tile, 4.0 s at 44.1 kHz and hop 690. Every
network and runtime is timed in one round-robin (``common.interleaved``). Without onnxruntime the
ONNX columns are left out; exits 1 when the runtimes disagree by more than 1e-4.
``efficientat_figures`` gives one network's figures, for other benchmarks (e.g. the AudioSet page's).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, interleaved, median, runtime_timing_options, table  # noqa: E402

TOLERANCE = 1e-4
BATCH = 4
#: EfficientAT's input: 10 s at 32 kHz, hop 320 (100 frames a second).
EAT_INPUT, EAT_SECONDS = (3, 128, 1000), 10.0
#: The method's tile: 256 frames at hop 690 and 44.1 kHz.
ASA_INPUT, ASA_SECONDS = (3, 128, 256), 256 * 690 / 44100
#: The widths of the released AudioSet models timed (all of them are counted).
TIMED_WIDTHS = (0.4, 1.0, 2.0)
COUNTED_WIDTHS = (0.4, 0.5, 1.0, 2.0, 3.0, 4.0)


def efficientat_model(width: float, classes: int = 527, seed: int = 0):
    """``efficientat_mn`` at ``width`` in eval mode, random weights, outputs that spread.

    Fresh batch norms in eval mode are identities, through which 15 blocks shrink the activations
    to about 1e-9 (every probability 0.5, where a comparison of runtimes says nothing): each batch
    norm takes the statistics of one batch of the benchmark's inputs, and EfficientAT's N(0, 0.01)
    class layer is scaled up.
    """
    import numpy as np
    import torch

    from freesound.models import create_model

    torch.manual_seed(seed)
    model = create_model("efficientat_mn", num_classes=classes, width_mult=width)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: one batch sets the statistics
    inputs = np.random.default_rng(seed + 1).normal(0.0, 0.3, (BATCH, *EAT_INPUT[:2], 200)).astype(np.float32)
    with torch.no_grad():
        model.train()(torch.from_numpy(inputs))  # the timed inputs' distribution (``prepare``)
        model.classifier[5].weight.mul_(30.0)
    return model.eval()


def gflop(model, shape) -> float:
    """Forward-pass GFLOP of one input of ``shape``, by ``FlopCounterMode``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


def efficientat_figures(width: float, frames: int = 1000, classes: int = 527) -> dict:
    """Parameters and GFLOP per second of audio of ``efficientat_mn`` at ``width`` on a
    ``frames``-frame input (100 frames a second)."""
    model = efficientat_model(width, classes)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "gflop_per_second": gflop(model, (3, 128, frames)) / (frames / 100)}


def prepare(model, shape, seconds: float, threads: int, onnx: bool) -> dict:
    """Figures and the forward passes (zero-argument callables) of one network on a batch."""
    import numpy as np
    import torch

    inputs = np.random.default_rng(0).normal(0.0, 0.3, (BATCH, *shape)).astype(np.float32)
    batch = torch.from_numpy(inputs)

    def torch_forward():
        with torch.inference_mode():
            return torch.sigmoid(model(batch)[0]).numpy()

    row = {"parameters": sum(p.numel() for p in model.parameters()), "gflop": gflop(model, shape),
           "seconds": seconds, "torch": torch_forward}
    if onnx:
        from freesound.predict.runtimes import compile_model

        compiled = compile_model(model, "onnxruntime", threads=threads, tile_shape=shape)
        row["difference"] = float(np.abs(torch_forward() - compiled(inputs)).max())
        row["onnxruntime"] = lambda: compiled(inputs)
    return row


def main(argv=None) -> int:
    args, rounds = runtime_timing_options(argv, __doc__.splitlines()[0], rounds=5, quick_rounds=2)
    import torch

    from bench_inference import full_size_model
    from freesound.predict.runtimes import runtime_usable

    torch.set_num_threads(args.threads)
    onnx = runtime_usable("onnxruntime")
    runtimes = ("torch", "onnxruntime") if onnx else ("torch",)
    print(header("EfficientAT MobileNetV3 beside AuxSkipAttention"))
    print(f"{args.threads} threads, batch {BATCH}, {rounds} rounds, medians; runtimes: {', '.join(runtimes)}\n")

    counted = [[f"mn{round(w * 10):02d} (width {w:g})", f"{f['parameters']:,}", f"{f['gflop_per_second']:.3f}"]
               for w in COUNTED_WIDTHS for f in [efficientat_figures(w)]]
    print(table(["network, 527 classes", "parameters", "GFLOP per second of audio"], counted) + "\n")

    rows = {"AuxSkipAttention (base 64)": prepare(full_size_model(), ASA_INPUT, ASA_SECONDS, args.threads, onnx)}
    for width in TIMED_WIDTHS:
        rows[f"mn{round(width * 10):02d}"] = prepare(efficientat_model(width), EAT_INPUT, EAT_SECONDS, args.threads, onnx)
    times = interleaved({(name, rt): row[rt] for name, row in rows.items() for rt in runtimes}, rounds=rounds)
    for (name, runtime), seconds in times.items():
        rows[name][f"{runtime}_rate"] = BATCH * rows[name]["seconds"] / median(seconds)
    base = rows["AuxSkipAttention (base 64)"]
    headers = ["network", "input", "parameters", "GFLOP/input", "GFLOP per s of audio", "torch: audio s per s", "vs ASA"]
    if onnx:
        headers += ["ORT: audio s per s", "vs ASA", "max |diff|"]
    lines = []
    for name, row in rows.items():
        line = [name, f"{row['seconds']:.1f} s", f"{row['parameters']:,}", f"{row['gflop']:.2f}",
                f"{row['gflop'] / row['seconds']:.3f}", f"{row['torch_rate']:.3g}",
                f"{row['torch_rate'] / base['torch_rate']:.1f}x"]
        if onnx:
            line += [f"{row['onnxruntime_rate']:.3g}", f"{row['onnxruntime_rate'] / base['onnxruntime_rate']:.1f}x",
                     f"{row['difference']:.1e}"]
        lines.append(line)
    print(table(headers, lines))
    worst = max((row.get("difference", 0.0) for row in rows.values()), default=0.0)
    if worst > TOLERANCE:
        print(f"torch and ONNX Runtime disagree by {worst:.1e} > {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
