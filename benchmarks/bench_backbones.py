"""Backbone benchmark: timm CNNs against the full-size AuxSkipAttention on the method's tile.

    .venv-timm/bin/python benchmarks/bench_backbones.py [--quick] [--threads 2] [--rounds 5]

For each network (80 classes, 3 input planes, random weights, eval mode): parameters, GFLOP per
``(3, 128, 256)`` tile counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products only; a multiply-add counts as 2 FLOP; elementwise work such as activations,
batch norms and pooling is not counted), and tiles/s in batches of 16 on ``--threads`` CPU threads
in torch and in ONNX Runtime (the model exported by ``freesound.predict.runtimes.export_onnx``,
the path kernels and ``predict --runtime`` use). Every network in both runtimes is timed in one
round-robin (``common.interleaved``), and the ratios are against AuxSkipAttention in the same run.
timm models get non-trivial batch-norm statistics and a classifier scaled to spread the
probabilities (``spread_out``), so that the comparison of runtimes means something.
Needs timm and onnxruntime (``pip install 'freesound[timm,onnx]'``); exits with status 1 when
torch and ONNX Runtime disagree by more than 1e-4 on any probability.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, interleaved, median, runtime_timing_options, table  # noqa: E402

TOLERANCE = 1e-4
TILE = (3, 128, 256)
BATCH = 16
CLASSES = 80
#: The timm backbones of issue 30: the BirdCLEF winners' EfficientNet-B0 and RegNetY-008, and a
#: MobileNetV3 as the small end.
TIMM_BACKBONES = ("efficientnet_b0", "mobilenetv3_large_100", "regnety_008")
#: experiments/default.toml's model.
AUX_SKIP_ATTENTION = dict(num_classes=CLASSES, base_size=64, dropout=0.4, ratio=16, kernel_size=7, last_filters=8,
                          last_fc=4)


def networks() -> dict:
    """Name -> model (eval mode, random weights) returning a tuple whose first item is the logits,
    as freesound's first-level models do (what ``export_onnx`` expects)."""
    import timm
    import torch

    from bench_inference import full_size_model

    class FirstOfTuple(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, tiles):
            return (self.model(tiles),)

    models = {"AuxSkipAttention (base 64)": full_size_model()}
    for name in TIMM_BACKBONES:
        torch.manual_seed(0)
        models[name] = FirstOfTuple(spread_out(timm.create_model(name, pretrained=False, num_classes=CLASSES,
                                                                 in_chans=TILE[0]).eval()))
    return models


def spread_out(model, seed: int = 0):
    """Give a freshly initialised timm model batch-norm statistics and scales that are not the
    identity, and a classifier whose logits have a standard deviation of about 2 on the benchmark's
    tiles: timm zero-initialises the last batch-norm scale of residual blocks and draws small
    classifier weights, so its logits start within 1e-5 of 0 and every probability at 0.5, where a
    comparison of runtimes would show nothing."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        features = model.forward_head(model.forward_features(torch.from_numpy(benchmark_tiles())), pre_logits=True)
        classifier = model.get_classifier()
        scale = 2.0 / (float(features.std()) * classifier.in_features ** 0.5)
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * scale)
        classifier.bias.zero_()
    return model


def benchmark_tiles():
    """The timed batch: ``BATCH`` tiles of N(0, 0.3) noise (log-mel deltas / 100 are of that order)."""
    import numpy as np

    return np.random.default_rng(0).normal(0.0, 0.3, (BATCH, *TILE)).astype(np.float32)


def gflop_per_tile(model) -> float:
    """Forward-pass GFLOP for one tile, by ``FlopCounterMode`` (multiply-add = 2 FLOP)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *TILE))
    return counter.get_total_flops() / 1e9


def prepare(model, threads: int) -> dict:
    """Parameters, GFLOP per tile, the largest torch/ONNX Runtime difference, and the two forward
    passes (``torch``, ``onnxruntime``) on the benchmark's batch as zero-argument callables."""
    import numpy as np
    import torch

    from freesound.predict.runtimes import compile_model

    tiles = benchmark_tiles()
    batch = torch.from_numpy(tiles)
    compiled = compile_model(model, "onnxruntime", threads=threads, tile_shape=TILE)

    def torch_forward():
        with torch.inference_mode():
            return torch.sigmoid(model(batch)[0]).numpy()

    reference = torch_forward()
    return {"parameters": sum(p.numel() for p in model.parameters()), "gflop": gflop_per_tile(model),
            "difference": float(np.abs(reference - compiled(tiles)).max()),
            "spread": (float(reference.min()), float(reference.max())),
            "torch": torch_forward, "onnxruntime": lambda: compiled(tiles)}


def measure(models: dict, threads: int, rounds: int) -> list:
    """One row per network: ``prepare``'s figures and tiles/s in each runtime (medians), every
    network and runtime timed in one round-robin, so a neighbour's load hits them alike."""
    rows = {name: {"name": name, **prepare(model, threads)} for name, model in models.items()}
    candidates = {(name, runtime): row[runtime] for name, row in rows.items() for runtime in ("torch", "onnxruntime")}
    times = interleaved(candidates, rounds=rounds)
    for (name, runtime), seconds in times.items():
        rows[name][runtime] = BATCH / median(seconds)
    return list(rows.values())


def main(argv=None) -> int:
    args, rounds = runtime_timing_options(argv, __doc__.splitlines()[0], rounds=5, quick_rounds=2)
    import timm
    import torch

    torch.set_num_threads(args.threads)
    print(header("Backbones on the (3, 128, 256) tile"))
    print(f"timm {timm.__version__}; {args.threads} threads, batch {BATCH}, {rounds} rounds, medians\n")
    rows = measure(networks(), args.threads, rounds)
    base = rows[0]
    print(table(
        ["network", "parameters", "GFLOP/tile", "FLOP vs ASA", "torch tiles/s", "vs ASA", "ORT tiles/s", "vs ASA",
         "ORT/torch", "max |diff|", "probabilities"],
        [[row["name"], f"{row['parameters']:,}", f"{row['gflop']:.2f}", f"{row['gflop'] / base['gflop']:.3f}x",
          f"{row['torch']:.1f}", f"{row['torch'] / base['torch']:.1f}x", f"{row['onnxruntime']:.1f}",
          f"{row['onnxruntime'] / base['onnxruntime']:.1f}x", f"{row['onnxruntime'] / row['torch']:.2f}x",
          f"{row['difference']:.1e}", f"{row['spread'][0]:.2f}-{row['spread'][1]:.2f}"] for row in rows]))
    worst = max(row["difference"] for row in rows)
    if worst > TOLERANCE:
        print(f"torch and ONNX Runtime disagree by {worst:.1e} > {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
