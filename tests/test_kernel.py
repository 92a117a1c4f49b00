"""The Kaggle kernels: built here, run in a simulated Kaggle tree by a Python that can import
neither the installed freesound nor click, jinja2 or tqdm, and compared with local prediction."""

import base64
import functools
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import scipy
import soundfile as sf
import torch

import freesound
from freesound.audio import silent_logmel
from freesound.ensembling.specs import experiment_spec
from freesound.errors import FreesoundError
from freesound.kaggle import COMPETITION, run_kernel
from freesound.models import create_model, save_checkpoint
from freesound.predict import EnsemblePredictor
from freesound.versions import MINIMUM
from kernel_build import build_kernels
from kernel_build.bundle import manifest_literal
from kernel_build.manifest import build_manifest

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Bark", "Meow", "Church_bell", "Applause", "Drip"]
# Row order of sample_submission.csv: deliberately not sorted.
TEST_CLIPS = {"d4.wav": 5.0, "broken.wav": None, "a1.wav": 0.3, "c3.wav": 2.5, "b2.wav": 1.0}
# A TOML multi-line literal string: the manifest must survive quotes inside configs.
CONFIG = "[model]\nname = \"aux_skip_attention\"\nnote = '''it's \"quoted\"\\n'''\n"

RUNNER = r'''
import importlib.abc, importlib.util, os, runpy, sys

BLOCKED = {"click", "jinja2", "tqdm", "kernel_build", "matplotlib"}


class NotOnKaggle(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not available in this simulated Kaggle image")
        return None


repo, script = sys.argv[1], sys.argv[2]
sys.meta_path.insert(0, NotOnKaggle())
# The repo (the checkout, or an editable install's path entry) goes; site-packages stays.
sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != os.path.realpath(repo)
               and "__editable__" not in p]
# pip's editable installs also add a finder of their own to sys.meta_path.
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
if importlib.util.find_spec("freesound") is not None:
    sys.exit("the installed freesound is importable; the test would prove nothing")
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
'''


def save_fold(path, name, params, seed, **extra):
    torch.manual_seed(seed)
    model = create_model(name, **params).eval()
    save_checkpoint(path, model, model_name=name, model_params=params, classes=CLASSES, audio_config={}, **extra)


def write_weights(weights_root: Path) -> None:
    """Two tiny experiments of two folds each and an FCNet stacker on their probabilities. exp_b
    reads the frequency-position plane too (``[input] freq_channel``), so the ensemble kernel
    builds each experiment's own network input, and has a noisy-label head, which prediction
    ignores."""
    for fold in range(2):
        save_fold(weights_root / f"exp_a/fold_{fold}/model.pt", "aux_skip_attention",
                  {"num_classes": len(CLASSES), "base_size": 4}, seed=fold)
        save_fold(weights_root / f"exp_b/fold_{fold}/model.pt", "simple_cnn",
                  {"num_classes": len(CLASSES), "base_size": 4, "in_channels": 4, "noisy_head": True},
                  seed=10 + fold, network_input={"freq_channel": True})
        save_fold(weights_root / f"ens_stacker/fold_{fold}/model.pt", "fcnet",
                  {"in_channels": 2 * len(CLASSES), "num_classes": len(CLASSES), "base_size": 8}, seed=20 + fold)
        (weights_root / f"exp_a/fold_{fold}/config.toml").write_text(CONFIG)


def write_competition(folder: Path) -> None:
    """Short synthetic clips, one undecodable file and a sample_submission.csv in unsorted order."""
    rng = np.random.default_rng(0)
    (folder / "test").mkdir(parents=True)
    for index, (fname, seconds) in enumerate(TEST_CLIPS.items()):
        if seconds is None:
            (folder / "test" / fname).write_bytes(rng.bytes(600))
            continue
        t = np.arange(int(seconds * 44100)) / 44100
        clip = 0.3 * np.sin(2 * np.pi * (300 + 200 * index) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / "test" / fname, clip.astype(np.float32), 44100, subtype="PCM_16")
    sample = pd.DataFrame(0.0, index=pd.Index(list(TEST_CLIPS), name="fname"), columns=CLASSES).reset_index()
    sample.to_csv(folder / "sample_submission.csv", index=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("kernel")
    work = base / "work"
    write_weights(work / "experiments")
    write_competition(base / "competition")
    ensemble = {
        "name": "ens",
        "experiments": {name: experiment_spec(name, work)["experiments"][name] for name in ("exp_a", "exp_b")},
        "stackers": {"ens_stacker": ["ens_stacker/fold_0/model.pt", "ens_stacker/fold_1/model.pt"]},
    }
    lines = []
    written = build_kernels(work, experiment="exp_a", ensemble=ensemble, out_dir=base / "kernel",
                            dataset_id="tester/freesound-weights", log=lines.append)
    return {"base": base, "work": work, "written": written, "log": lines,
            "specs": {"kernel": experiment_spec("exp_a", work), "ensemble_kernel": ensemble}}


def kaggle_tree(built, root: Path) -> Path:
    """The competition data, and the weights dataset one level deeper (as zip dir-mode serves it)."""
    shutil.copytree(built["base"] / "competition", root / "input" / COMPETITION)
    shutil.copytree(built["work"] / "experiments", root / "input" / "freesound-weights" / "experiments")
    (root / "working").mkdir()
    return root


def run_script(script: Path, root: Path, tmp_dir: Path, python_path=None, cuda: bool = False) -> subprocess.CompletedProcess:
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    tmp_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    # CPU like the local reference unless asked (CUDA would predict in fp16); TMPDIR shows the unpack folder.
    env.update(FREESOUND_KAGGLE_ROOT=str(root), TMPDIR=str(tmp_dir))
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(runner), str(REPO), str(script)], cwd=root / "working",
                          env=env, capture_output=True, text=True, timeout=300)


def embedded_manifest(script: str) -> dict:
    return json.loads(re.search(r"MANIFEST = json.loads\(r'''(.*?)'''\)", script, re.S).group(1))


def local_prediction(built, spec, device="cpu"):
    paths = [built["base"] / "competition" / "test" / fname for fname in TEST_CLIPS]
    predictor = EnsemblePredictor.from_spec(spec, lambda p: built["work"] / "experiments" / p, device=device)
    failures = []
    return predictor.predict_files(paths, on_error="silence", failures=failures), predictor, failures


@pytest.mark.parametrize("kernel", ["kernel", "ensemble_kernel"])
def test_kernel_reproduces_local_prediction_offline(built, kernel, tmp_path):
    root = kaggle_tree(built, tmp_path / "kaggle")
    result = run_script(built["written"][kernel], root, tmp_path / "tmp")
    assert result.returncode == 0, result.stdout + result.stderr

    # Only the embedded copy, unpacked outside the working directory and removed at exit, served.
    package = re.search(r"\(package (.+)\)", result.stdout).group(1)
    assert Path(package).is_relative_to(tmp_path / "tmp") and not Path(package).exists()
    # ONNX Runtime, where installed, leaves its own ``.ses`` file in TMPDIR when imported.
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name != ".ses"] == []
    assert [p.name for p in (root / "working").iterdir()] == ["submission.csv"]

    submission = pd.read_csv(root / "working" / "submission.csv")
    expected, predictor, failures = local_prediction(built, built["specs"][kernel])
    assert [tagger.input_config.channels for tagger in predictor.taggers.values()] == (
        [3] if kernel == "kernel" else [3, 4])
    assert list(submission.columns) == ["fname", *CLASSES]
    assert list(submission["fname"]) == list(TEST_CLIPS)
    np.testing.assert_allclose(submission[CLASSES].to_numpy(), expected[CLASSES].to_numpy(), rtol=0, atol=1e-5)

    # The broken clip is predicted from silence and listed with its reason.
    assert [fname for fname, _ in failures] == ["broken.wav"]
    assert re.search(r"undecodable clips \(predicted from silence\): 1\n  broken.wav: \S", result.stdout)
    silent = predictor.predict_spectrograms([silent_logmel()])[0]
    np.testing.assert_allclose(submission.set_index("fname").loc["broken.wav"].to_numpy(), silent, atol=1e-5)
    assert "sha256 verified" in result.stdout and "5 clips" in result.stdout
    # The first line names the versions it ran with (read from the packages' metadata, which may
    # lack the build tag of torch.__version__, e.g. +cu130).
    modules = {"numpy": np, "pandas": pd, "scipy": scipy, "torch": torch, "librosa": librosa, "soundfile": sf}
    expected = f"versions: python {platform.python_version()}, " + ", ".join(
        f"{name} {module.__version__}" for name, module in modules.items())
    without_build_tags = functools.partial(re.sub, r"\+[^,]*", "")
    assert without_build_tags(result.stdout.splitlines()[0]) == without_build_tags(expected)


#: The kernel on CUDA against local prediction on CUDA, both fp16 (the kernel's default precision):
#: the same code on the same device, but cuDNN may pick other algorithms in another process.
CUDA_KERNEL_TOLERANCE = 2e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)")
def test_ensemble_kernel_on_cuda_reproduces_local_cuda_prediction(built, tmp_path):
    root = kaggle_tree(built, tmp_path / "kaggle")
    result = run_script(built["written"]["ensemble_kernel"], root, tmp_path / "tmp", cuda=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"device: .*cuda.*, fp16", result.stdout, re.I), result.stdout
    submission = pd.read_csv(root / "working" / "submission.csv")
    expected, _, _ = local_prediction(built, built["specs"]["ensemble_kernel"], device="cuda")
    assert list(submission["fname"]) == list(TEST_CLIPS)
    np.testing.assert_allclose(submission[CLASSES].to_numpy(), expected[CLASSES].to_numpy(), rtol=0,
                               atol=CUDA_KERNEL_TOLERANCE)


def test_kernel_refuses_a_package_older_than_its_minimum(built, tmp_path):
    # An image whose soundfile is too old: its metadata, first on the path, says 0.11.0.
    old = tmp_path / "old_image"
    (old / "soundfile-0.11.0.dist-info").mkdir(parents=True)
    (old / "soundfile-0.11.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: soundfile\nVersion: 0.11.0\n")
    root = kaggle_tree(built, tmp_path / "kaggle")
    result = run_script(built["written"]["kernel"], root, tmp_path / "tmp", python_path=old)
    assert result.returncode == 1
    assert re.search(r"^versions: python .*, soundfile 0\.11\.0$", result.stdout, re.M)
    need = MINIMUM["soundfile"]
    assert result.stderr == (f"error: soundfile 0.11.0 is older than the {need} freesound needs; "
                             f"choose a newer environment or install soundfile>={need}\n")
    assert list((root / "working").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []


def test_corrupt_weight_stops_the_kernel_naming_file_and_hashes(built, tmp_path):
    root = kaggle_tree(built, tmp_path / "kaggle")
    corrupt = root / "input" / "freesound-weights" / "experiments" / "exp_b" / "fold_1" / "model.pt"
    data = bytearray(corrupt.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes
    corrupt.write_bytes(bytes(data))
    manifest = embedded_manifest(built["written"]["ensemble_kernel"].read_text())
    expected_hash = next(w["sha256"] for w in manifest["weights"] if w["path"] == "exp_b/fold_1/model.pt")

    result = run_script(built["written"]["ensemble_kernel"], root, tmp_path / "tmp")
    assert result.returncode == 1
    assert "exp_b/fold_1/model.pt" in result.stderr and expected_hash in result.stderr
    assert str(root / "input" / "freesound-weights" / "experiments") in result.stderr
    assert hashlib.sha256(bytes(data)).hexdigest() in result.stderr
    assert "Traceback" not in result.stderr
    assert list((root / "working").iterdir()) == []


def test_missing_weight_at_run_time_names_file_and_folders(built, tmp_path):
    root = kaggle_tree(built, tmp_path / "kaggle")
    (root / "input" / "freesound-weights" / "experiments" / "exp_a" / "fold_0" / "model.pt").unlink()
    manifest = build_manifest(built["specs"]["kernel"], built["work"] / "experiments")
    with pytest.raises(FreesoundError, match=r"exp_a/fold_0/model.pt is missing.*Folders searched: .*freesound-weights"):
        run_kernel(manifest, root, device="cpu", log=lambda line: None)


def test_build_refuses_an_experiment_whose_folds_take_different_inputs(tmp_path):
    # predict refuses such folds; a kernel built from them would fail only after upload.
    params = {"num_classes": len(CLASSES), "base_size": 4}
    save_fold(tmp_path / "mixed/fold_0/model.pt", "simple_cnn", params, seed=0)
    save_fold(tmp_path / "mixed/fold_1/model.pt", "simple_cnn", {**params, "in_channels": 4}, seed=1,
              network_input={"freq_channel": True})
    spec = {"name": "mixed", "experiments": {"mixed": ["mixed/fold_0/model.pt", "mixed/fold_1/model.pt"]},
            "stackers": {}}
    with pytest.raises(FreesoundError, match=r"mixed/fold_1/model.pt was trained on another network input"):
        build_manifest(spec, tmp_path)


def test_weights_may_be_nested_differently_per_experiment(built, tmp_path):
    # zip dir-mode: each experiment's archive may unpack one level deeper on its own.
    root = tmp_path / "kaggle"
    shutil.copytree(built["base"] / "competition", root / "input" / COMPETITION)
    shutil.copytree(built["work"] / "experiments" / "exp_a", root / "input" / "weights" / "exp_a" / "exp_a")
    manifest = build_manifest(built["specs"]["kernel"], built["work"] / "experiments")
    summary = run_kernel(manifest, root, device="cpu", workers=0, log=lambda line: None)
    assert summary["clips"] == len(TEST_CLIPS)
    assert summary["weights"] == [str(root / "input" / "weights" / "exp_a")]
    assert summary["package"] == freesound.__file__


def test_kernel_on_a_gpu_torch_cannot_drive_falls_back_to_the_cpu(built, tmp_path, monkeypatch):
    """One tiny convolution fails on the device (a P100 under a torch without sm_60; ``meta``
    stands in for it): one warning naming it and torch's architectures, then the CPU predicts
    what it always does, in the manifest's precision."""
    import freesound.kaggle.runtime as runtime
    import freesound.predict.device as device_module

    real_probe = device_module._probe

    def probe(device):
        if device.type != "cpu":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        real_probe(device)

    monkeypatch.setattr(device_module, "_probe", probe)
    precisions = []
    real_from_spec = EnsemblePredictor.from_spec.__func__

    def from_spec(cls, *args, **kwargs):
        precisions.append(kwargs["precision"])
        return real_from_spec(cls, *args, **kwargs)

    monkeypatch.setattr(runtime.EnsemblePredictor, "from_spec", classmethod(from_spec))
    manifest = build_manifest(built["specs"]["kernel"], built["work"] / "experiments", precision="fp32")
    assert manifest["precision"] == "fp32"
    summaries, lines = {}, []
    for device in ("meta", "cpu"):
        root = kaggle_tree(built, tmp_path / device)
        summaries[device] = run_kernel(manifest, root, device=device, workers=0, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: torch {torch.__version__} cannot run a convolution on meta (CUDA error: no kernel "
                        f"image is available for execution on the device); its GPU architectures: "
                        f"{', '.join(torch.cuda.get_arch_list()) or 'none (a CPU-only build)'}; predicting on the "
                        "CPU instead"]
    assert summaries["meta"]["device"] == "cpu" and precisions == ["fp32", "fp32"]
    fallback, cpu = (pd.read_csv(tmp_path / device / "working" / "submission.csv") for device in ("meta", "cpu"))
    pd.testing.assert_frame_equal(fallback, cpu)
    with pytest.raises(FreesoundError, match="precision must be one of fp16, fp32, got 'fp8'"):
        run_kernel(manifest, tmp_path / "cpu", device="cpu", precision="fp8", log=lines.append)


def test_rebuild_is_byte_identical(built, tmp_path):
    # Two builds back to back, in other folders (the package sources may change during a session).
    first, second = (build_kernels(built["work"], experiment="exp_a", ensemble=built["specs"]["ensemble_kernel"],
                                   out_dir=tmp_path / name, dataset_id="tester/freesound-weights",
                                   log=lambda line: None) for name in ("one", "two"))
    for key in ("kernel", "ensemble_kernel", "kernel_metadata"):
        assert first[key].read_bytes() == second[key].read_bytes()


def test_kernel_embeds_every_module_and_the_manifest(built):
    script = built["written"]["ensemble_kernel"].read_text()
    payload = re.search(r'PACKAGE = """(.*?)"""', script, re.S).group(1)
    sources = json.loads(gzip.decompress(base64.b64decode(payload)))
    package = Path(freesound.__file__).parent
    expected = sorted(p.relative_to(package.parent).as_posix() for p in package.rglob("*.py")
                      if "__pycache__" not in p.parts)
    assert sorted(sources) == expected and "freesound/kaggle/runtime.py" in sources
    assert sources["freesound/predict/tagger.py"] == (package / "predict" / "tagger.py").read_text()
    manifest = embedded_manifest(script)
    assert manifest["spec"] == built["specs"]["ensemble_kernel"]
    assert manifest["configs"] == {"exp_a": CONFIG} and manifest["freesound_version"] == freesound.__version__
    assert manifest["precision"] == "fp16"
    assert [w["path"] for w in manifest["weights"]][-1] == "ens_stacker/fold_1/model.pt"
    assert all(len(w["sha256"]) == 64 and w["bytes"] > 0 for w in manifest["weights"])
    assert script.startswith("# freesound Kaggle kernel: ensemble ens")
    code = script.replace(payload, "")
    assert "os.system" not in code and "subprocess" not in code and "pip" not in code
    assert any("6 files" in line for line in built["log"]) and any("script:" in line for line in built["log"])


def test_the_embedded_manifest_keeps_the_ensembles_order_of_experiments():
    # The stackers read the experiments' probabilities concatenated in the ensemble's order; a
    # manifest written with sorted keys fed them in alphabetical order instead.
    spec = {"name": "ens", "experiments": {"zeta": ["zeta/fold_0/model.pt"], "alpha": ["alpha/fold_0/model.pt"]},
            "stackers": {"ens_mlp": ["ens_mlp/fold_0/model.pt"]}}
    manifest = json.loads(manifest_literal({"format": 1, "spec": spec}))
    assert list(manifest["spec"]["experiments"]) == ["zeta", "alpha"] and manifest["spec"] == spec


def test_metadata_files(built):
    kernel = json.loads(built["written"]["kernel_metadata"].read_text())
    assert kernel == {
        "id": "tester/freesound-ens", "title": "Freesound ens", "code_file": "ensemble_kernel.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
        "enable_internet": False, "dataset_sources": ["tester/freesound-weights"],
        "competition_sources": ["freesound-audio-tagging-2019"], "kernel_sources": [],
    }
    dataset = json.loads((built["work"] / "experiments" / "dataset-metadata.json").read_text())
    assert dataset == {"title": "Freesound weights", "id": "tester/freesound-weights",
                       "licenses": [{"name": "CC0-1.0"}]}


def test_missing_weight_refuses_the_build_and_writes_nothing(built, tmp_path):
    spec = {"name": "broken", "experiments": {"exp_a": ["exp_a/fold_0/model.pt", "exp_a/fold_7/model.pt"]},
            "stackers": {}}
    with pytest.raises(FreesoundError, match=r"missing .*exp_a/fold_7/model.pt"):
        build_kernels(built["work"], experiment="exp_a", ensemble=spec, out_dir=tmp_path / "kernel",
                      log=lambda line: None)
    assert not (tmp_path / "kernel").exists()
    with pytest.raises(FreesoundError, match="no trained folds"):
        build_kernels(built["work"], experiment="nope", out_dir=tmp_path / "kernel", log=lambda line: None)


def test_build_kernel_script_reports_errors_in_one_line(built, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "build_kernel.py"), "--work", str(built["work"]),
                             "--experiment", "nope", "--ensemble", "", "--out", str(tmp_path / "k")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_build_names_weight_folders_the_kernels_do_not_use(built, tmp_path):
    """`kaggle datasets create` uploads the whole experiments/ folder: say what it would carry in vain."""
    work = tmp_path / "work"
    shutil.copytree(built["work"], work)
    trial = work / "experiments" / "exp_a-trial0" / "fold_0"
    trial.mkdir(parents=True)
    (trial / "model.pt").write_bytes(b"\0" * 300_000)
    lines = []
    build_kernels(work, experiment="exp_a", out_dir=tmp_path / "kernel", log=lines.append)
    notes = [line for line in lines if "do not use" in line]
    assert len(notes) == 1, lines
    assert re.search(r"note: 3 folder\(s\) in \S+ that these kernels do not use "
                     r"\(ens_stacker, exp_a-trial0, exp_b; [\d.]+ MB\)", notes[0]), notes
    assert not any("do not use" in line for line in built["log"])  # both kernels use every folder


def test_kernel_warns_of_a_truncated_clip_and_lists_it_in_its_summary(built, tmp_path):
    """Issue 33: a clip cut to half its bytes was predicted without a word. It is still predicted,
    from the audio that decodes, with one warning, and the summary lists it. The decoding runs in
    a DataLoader worker, whose warning the kernel's process shows."""
    from freesound.audio import AudioTruncatedWarning

    root = kaggle_tree(built, tmp_path / "kaggle")
    clip = root / "input" / COMPETITION / "test" / "d4.wav"
    clip.write_bytes(clip.read_bytes()[:clip.stat().st_size // 2])
    manifest = build_manifest(built["specs"]["kernel"], built["work"] / "experiments")
    lines = []
    with pytest.warns(AudioTruncatedWarning) as caught:
        summary = run_kernel(manifest, root, device="cpu", workers=1, log=lines.append)
    # What half the bytes hold: a 44-byte header, then 2-byte PCM_16 frames.
    held = (clip.stat().st_size - 44) // 2
    assert held == 110239
    message = (f"{clip} is truncated or damaged: its header states 220500 frames (5.00 s) but only {held} (2.50 s) "
               "decode; the audio that decodes is used")
    assert [str(warning.message) for warning in caught] == [message]
    assert summary["truncated"] == [("d4.wav", message)]
    assert [fname for fname, _ in summary["failures"]] == ["broken.wav"]
    at = lines.index("truncated clips (predicted from the audio that decodes): 1")
    assert lines[at + 1] == f"  d4.wav: {message}"
    submission = pd.read_csv(root / "working" / "submission.csv")
    assert list(submission["fname"]) == list(TEST_CLIPS)
