"""CPU runtimes: torch, or the models exported to ONNX and run by ONNX Runtime or OpenVINO. The
torch fallback is tested everywhere; the ONNX runtimes where their packages are installed
(``pip install 'freesound[onnx]'`` / ``'freesound[openvino]'``: CI installs only ``.[dev]``)."""

import numpy as np
import pytest
import torch

from freesound.errors import FreesoundError
from freesound.models import create_model
from freesound.predict import Tagger, make_tiles
from freesound.predict import runtimes
from freesound.predict.runtimes import resolve_runtime, runtime_usable

CLASSES = [f"c{i}" for i in range(6)]


def tiny_models(count=2):
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(create_model("aux_skip_attention", num_classes=len(CLASSES), base_size=4, ratio=4).eval())
    return models


def logmels():
    rng = np.random.default_rng(0)
    return [rng.uniform(-80, 0, (128, width)).astype(np.float32) for width in (40, 300, 700)]


def needs(runtime):
    return pytest.mark.skipif(not runtime_usable(runtime),
                              reason=f"{runtime} or onnx not installed (pip install '{runtimes.EXTRAS[runtime]}')")


def test_auto_falls_back_to_torch_without_an_onnx_runtime(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda module: False)
    assert resolve_runtime("auto", "cpu") == "torch"
    tagger = Tagger(tiny_models(), CLASSES)
    assert tagger.runtime == "torch"
    reference = Tagger(tiny_models(), CLASSES, runtime="torch").predict_spectrograms(logmels())
    np.testing.assert_array_equal(tagger.predict_spectrograms(logmels()), reference)
    for name in ("onnxruntime", "openvino"):
        with pytest.raises(FreesoundError, match=rf"the {name} runtime needs .*pip install 'freesound\["):
            Tagger(tiny_models(), CLASSES, runtime=name)


def test_runtime_choice(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda module: module in ("onnx", "openvino"))
    assert resolve_runtime("auto", "cpu") == "openvino"       # ONNX Runtime first, when it is there
    monkeypatch.setattr(runtimes, "installed", lambda module: True)
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    assert resolve_runtime("onnxruntime", "cuda") == "torch"   # a GPU runs torch
    assert resolve_runtime("torch", "cpu") == "torch"
    monkeypatch.setattr(runtimes, "installed", lambda module: module != "onnx")
    assert resolve_runtime("auto", "cpu") == "torch"           # the export needs onnx
    with pytest.raises(FreesoundError, match="unknown runtime 'tensorrt'; choose one of auto, torch"):
        resolve_runtime("tensorrt", "cpu")


@needs("onnxruntime")
def test_onnxruntime_agrees_with_torch():
    check_agreement("onnxruntime")


@needs("openvino")
def test_openvino_agrees_with_torch():
    """In a child process: OpenVINO loaded into the test process was followed, later in the
    suite, by a segfault of pytest itself when other tests fork workers."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import test_runtimes; test_runtimes.check_agreement('openvino'); print('agreed')"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "agreed", result.stderr[-2000:]


def check_agreement(runtime):
    models = tiny_models()
    torch_probs = Tagger(models, CLASSES, runtime="torch", batch_size=8).predict_spectrograms(logmels())
    tagger = Tagger(models, CLASSES, runtime=runtime, batch_size=8)
    assert tagger.runtime == runtime
    probs = tagger.predict_spectrograms(logmels())
    assert probs.shape == (3, len(CLASSES)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, torch_probs, atol=1e-5)
    # New weights in a model are exported again; the old export is not reused.
    with torch.no_grad():
        models[0].fc[5].bias.add_(1.0)
    changed = tagger.predict_spectrograms(logmels())
    np.testing.assert_allclose(changed, Tagger(models, CLASSES, runtime="torch").predict_spectrograms(logmels()),
                               atol=1e-5)
    assert np.abs(changed - probs).max() > 1e-2


@needs("onnxruntime")
def test_int8_quantization_runs_close_to_fp32():
    model = tiny_models(1)[0]
    tiles = np.concatenate([make_tiles(logmel) for logmel in logmels()])
    exported = runtimes.export_onnx(model)
    fp32 = runtimes.CompiledModel(exported, "onnxruntime")(tiles)
    quantized = runtimes.quantize_int8(exported, tiles)
    assert len(quantized) < len(exported)
    int8 = runtimes.CompiledModel(quantized, "onnxruntime")(tiles)
    assert int8.shape == fp32.shape and 0 < np.abs(int8 - fp32).max() < 0.1


def test_kernel_attaches_wheels_from_its_inputs_and_falls_back_to_torch(tmp_path, monkeypatch):
    import sys
    import zipfile

    from freesound.kaggle import wheels

    dataset = tmp_path / "input" / "runtime-wheels" / "nested"
    dataset.mkdir(parents=True)
    for name, body in (("fs_fake_onnx", "OK = 1\n"), ("fs_fake_rt", "import fs_fake_onnx\nVERSION = '9'\n"),
                       ("fs_broken_rt", "raise ImportError('built for another Python')\n")):
        with zipfile.ZipFile(dataset / f"{name}-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", "w") as archive:
            archive.writestr(f"{name}/__init__.py", body)
            archive.writestr(f"{name}-1.0.dist-info/METADATA", f"Name: {name}\n")
    assert wheels.wheel_distribution("onnxruntime_gpu-1.32.0-cp311-none.whl") == "onnxruntime_gpu"
    assert [w.name.split("-")[0] for w in wheels.find_wheels(tmp_path / "input")] == [
        "fs_broken_rt", "fs_fake_onnx", "fs_fake_rt"]
    monkeypatch.setattr(sys, "path", list(sys.path))
    lines = []
    monkeypatch.setattr(wheels, "RUNTIME_MODULES", {"broken": ("fs_broken_rt",), "fake": ("fs_fake_onnx", "fs_fake_rt")})
    target = tmp_path / "extracted"
    monkeypatch.setattr(wheels.tempfile, "mkdtemp", lambda prefix: str(target))
    assert wheels.kernel_runtime(tmp_path / "input", lines.append) == "fake"
    assert lines == ["runtime: fake (from fs_fake_onnx-1.0-cp311-cp311-manylinux_2_28_x86_64.whl, "
                     "fs_fake_rt-1.0-cp311-cp311-manylinux_2_28_x86_64.whl)"]
    assert (target / "fs_fake_rt" / "__init__.py").is_file() and sys.path[0] == str(target)
    # Nothing that imports: torch, with the reason.
    monkeypatch.setattr(wheels, "RUNTIME_MODULES", {"broken": ("fs_broken_rt",)})
    lines.clear()
    assert wheels.kernel_runtime(tmp_path / "input", lines.append) == "torch"
    assert lines == ["runtime: torch (fs_broken_rt: ImportError: built for another Python)"]
    lines.clear()
    monkeypatch.setattr(wheels, "RUNTIME_MODULES", {"absent": ("fs_not_anywhere",)})
    assert wheels.kernel_runtime(tmp_path / "nothing", lines.append) == "torch"
    assert lines == ["runtime: torch (no ONNX runtime installed or attached as wheels)"]


@needs("onnxruntime")
def test_onnxruntime_windows_of_an_ensemble_with_a_stacker_agree_with_torch():
    """The window path (window kernels included) runs the runtime the Tagger chose: a window's tiles
    are a batch of the fixed tile shape the model was exported for."""
    from freesound.predict import EnsemblePredictor, WindowSpec

    torch.manual_seed(2)
    sed = create_model("aux_skip_attention", num_classes=len(CLASSES), base_size=4, ratio=4, head="sed").eval()
    stacker = create_model("fcnet", in_channels=2 * len(CLASSES), num_classes=len(CLASSES), base_size=8,
                           reduction_scale=1).eval()

    def ensemble(runtime):
        taggers = {"a": Tagger(tiny_models(), CLASSES, runtime=runtime, batch_size=8),
                   "sed": Tagger([sed], CLASSES, runtime=runtime, batch_size=8)}
        return EnsemblePredictor(taggers, {"mlp": [stacker]})

    onnx = ensemble("onnxruntime")
    assert {tagger.runtime for tagger in onnx.taggers.values()} == {"onnxruntime"}
    probs, bounds = onnx.predict_windows(logmels(), WindowSpec(5))
    expected, expected_bounds = ensemble("torch").predict_windows(logmels(), WindowSpec(5))
    assert bounds == expected_bounds and [len(clip) for clip in probs] == [1, 1, 3]
    for clip, reference in zip(probs, expected):
        np.testing.assert_allclose(clip, reference, rtol=0, atol=1e-5)
