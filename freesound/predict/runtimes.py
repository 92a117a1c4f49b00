"""CPU inference runtimes for first-level models: torch, or the model exported to ONNX and run by
ONNX Runtime or OpenVINO.

Both ONNX runtimes run the full-size AuxSkipAttention faster than torch's own CPU path (batch
norms folded, channels-last, oneDNN) and agree with it far inside 1e-4 (``benchmarks/RESULTS.md``,
"Kernel time budget, ``--estimate``, ONNX runtimes, int8"), so ``"auto"`` picks ONNX Runtime,
else OpenVINO, when installed (``pip install 'freesound[onnx]'`` or ``'freesound[openvino]'``)
and torch otherwise. Local prediction asks for ``"torch"`` unless
told (``predict --runtime auto``); a kernel uses an installed or attached ONNX runtime. A CUDA
device always runs torch. The exported graph computes the sigmoid of the main head only.

Optional int8 static quantization (ONNX Runtime's ``quantize_static``, QDQ format, calibrated on
tiles the caller gives) is opt-in: it changes the probabilities by far more than 1e-4.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings

import numpy as np
import torch

from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_bytes

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
#: The order ``"auto"`` tries on a CPU: the faster measured first (benchmarks/RESULTS.md).
ONNX_RUNTIMES = ("onnxruntime", "openvino")
#: The ONNX opset of the export: 17 is the oldest with every operator the models use in its
#: current form and is read by ONNX Runtime >= 1.14 and OpenVINO >= 2023.0.
OPSET = 17
#: What ``pip`` installs for each runtime (the export needs ``onnx`` too).
EXTRAS = {"onnxruntime": "freesound[onnx]", "openvino": "freesound[openvino]"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def runtime_usable(runtime: str) -> bool:
    """Whether ``runtime`` can run here: torch always; an ONNX runtime with ``onnx`` for the export."""
    return runtime == "torch" or (installed("onnx") and installed(runtime))


def resolve_runtime(runtime: str, device) -> str:
    """The runtime that will run: ``"auto"`` is the first usable of ``ONNX_RUNTIMES`` on a CPU,
    else torch; a CUDA (or other non-CPU) device runs torch whatever was asked.

    Raises
    ------
    FreesoundError
        An unknown runtime, or an ONNX runtime asked for by name that is not installed.
    """
    if runtime not in RUNTIMES:
        raise FreesoundError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if torch.device(device).type != "cpu" or runtime == "torch":
        return "torch"
    if runtime == "auto":
        return next((name for name in ONNX_RUNTIMES if runtime_usable(name)), "torch")
    if not runtime_usable(runtime):
        raise FreesoundError(f"the {runtime} runtime needs the onnx and {runtime} packages: "
                             f"pip install '{EXTRAS[runtime]}'")
    return runtime


class _MainProbabilities(torch.nn.Module):
    """The sigmoid of a model's main head (the first item of its output tuple)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(tiles)[0])


def export_onnx(model: torch.nn.Module, tile_shape=(3, 128, 256), dynamic_frames: bool = False) -> bytes:
    """The ONNX model (bytes) of ``model``'s main-head probabilities, for any batch size (and,
    with ``dynamic_frames``, any number of frames: a whole-clip model's, ``[input] whole_clip``).

    Input ``tiles`` float32 ``(B, *tile_shape)``, output ``probabilities`` float32 ``(B, C)``.
    The caller's model is not modified (an eval-mode copy is exported).
    """
    tile_axes = {0: "batch", 3: "frames"} if dynamic_frames else {0: "batch"}
    wrapper = _MainProbabilities(copy.deepcopy(model).cpu().float()).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(wrapper, (torch.zeros(1, *tile_shape),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["tiles"], output_names=["probabilities"],
                          dynamic_axes={"tiles": tile_axes, "probabilities": {0: "batch"}})
    return buffer.getvalue()


def quantize_int8(onnx_model: bytes, calibration_tiles: np.ndarray) -> bytes:
    """int8 static quantization (x86, QDQ, per-channel weights) of an exported model with ONNX
    Runtime's ``quantize_static``, calibrated (min-max) on ``calibration_tiles`` ``(N, 3, 128, 256)``.

    Raises
    ------
    FreesoundError
        ONNX Runtime is not installed.
    """
    if not runtime_usable("onnxruntime"):
        raise FreesoundError(f"int8 quantization needs ONNX Runtime: pip install '{EXTRAS['onnxruntime']}'")
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration_tiles.astype(np.float32), max(1, len(calibration_tiles) // 8)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"tiles": batch}

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        atomic_write_bytes(source, onnx_model)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return target.read_bytes()


class CompiledModel:
    """An exported model loaded into an ONNX runtime: ``model(tiles) -> probabilities``.

    Parameters
    ----------
    onnx_model : bytes, from ``export_onnx`` (or ``quantize_int8``)
    runtime : "onnxruntime" or "openvino"
    threads : int, intra-op threads (0: the runtime's default, one per core)
    """

    def __init__(self, onnx_model: bytes, runtime: str, threads: int = 0):
        if runtime not in ONNX_RUNTIMES:
            raise ValueError(f"runtime must be one of {ONNX_RUNTIMES}, got {runtime!r}")
        self.runtime = runtime
        if runtime == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3  # errors only: its warnings go to stderr unasked
            self._session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        else:
            import openvino

            core = openvino.Core()
            config = {"INFERENCE_PRECISION_HINT": "f32"}  # no bf16/fp16 on CPUs that have it: 1e-4 agreement
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self._compiled = core.compile_model(core.read_model(onnx_model), "CPU", config)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, C)`` float32 of tiles ``(B, planes, H, W)`` float32 (the planes the
        model was exported for: 3, or 4 with ``[input] freq_channel``)."""
        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        if self.runtime == "onnxruntime":
            return self._session.run(None, {"tiles": tiles})[0]
        return np.asarray(self._compiled(tiles)[0], dtype=np.float32)


def compile_model(model: torch.nn.Module, runtime: str, threads: int = 0, tile_shape=(3, 128, 256),
                  dynamic_frames: bool = False) -> CompiledModel:
    """``export_onnx`` then ``CompiledModel``: ``model`` ready to run in ``runtime``."""
    return CompiledModel(export_onnx(model, tile_shape, dynamic_frames), runtime, threads)
