"""The package as a user gets it: a wheel built from the sources, installed (not editable) into a
fresh virtual environment, runs the chain from an empty folder - so a file the wheel lacks (a kernel
template, a preset experiment) fails here, not on a user's machine."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import freesound

REPO = Path(__file__).resolve().parents[1]
#: Top-level entries of a checkout that are not sources: environments, outputs, caches.
NOT_SOURCES = {".git", "data", "kernel", "build", "dist", ".pytest_cache", ".hypothesis"}
#: The one torch build on these machines' disk; a plain requirement would download a CUDA build.
TORCH = "torch==2.13.0"


def not_sources(folder, names):
    top = Path(folder) == REPO
    return {name for name in names if name == "__pycache__" or name.endswith(".egg-info")
            or (top and (name in NOT_SOURCES or name.startswith(".venv")))}


def run(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment holding torch and the wheel, and an empty folder to work in."""
    base = tmp_path_factory.mktemp("packaging")
    sources = base / "sources"
    shutil.copytree(REPO, sources, ignore=not_sources)  # a copy: no stale build/ can leak into the wheel
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", base / "dist", sources], base)
    (wheel,) = (base / "dist").glob("freesound-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv], base)
    # --no-compile: byte-compiling all of torch at install takes longer than the whole chain below.
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", TORCH], base)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", wheel], base)
    (base / "empty").mkdir()
    return {"bin": venv / "bin", "cwd": base / "empty", "venv": venv}


@pytest.mark.slow
def test_the_installed_wheel_runs_the_chain_from_an_empty_folder(installed):
    cwd, freesound_cli = installed["cwd"], installed["bin"] / "freesound"
    package = run([installed["bin"] / "python", "-c", "import freesound; print(freesound.__file__)"], cwd)
    assert Path(package.stdout.strip()).is_relative_to(installed["venv"])

    assert run([freesound_cli, "--version"], cwd).stdout == f"freesound, version {freesound.__version__}\n"
    # Every experiment file of the repository ships as a preset.
    listing = run([freesound_cli, "experiments"], cwd).stdout
    for path in sorted((REPO / "experiments").glob("*.toml")):
        assert f"preset: {installed['venv']}" in listing and f"/freesound/presets/{path.name}" in listing

    data = cwd / "data" / "synth"
    run([freesound_cli, "synth", data, "--classes", "3", "--curated", "12", "--noisy", "4", "--test", "3"], cwd)
    run([freesound_cli, "features", "--data", data, "--workers", "1"], cwd)
    run([freesound_cli, "make-folds", "--data", data, "--folds", "2"], cwd)
    run([freesound_cli, "train", "small", "--data", data, "--epochs", "1", "--device", "cpu", "--no-oof"], cwd)
    for fold in range(2):
        assert (cwd / "data" / "experiments" / "small" / f"fold_{fold}" / "model.pt").is_file()
    run([freesound_cli, "predict", "small", "--data", data, "--device", "cpu"], cwd)
    test = pd.read_csv(cwd / "data" / "predictions" / "small" / "test.csv")
    classes = list(pd.read_csv(data / "sample_submission.csv").columns[1:])
    assert list(test.columns) == ["fname", *classes] and len(classes) == 3 and len(test) == 3
    assert np.all((test[classes] > 0) & (test[classes] < 1))

    run([freesound_cli, "build-kernel", "--experiment", "small"], cwd)
    script = (cwd / "kernel" / "kernel.py").read_text()
    compile(script, "kernel.py", "exec")
    assert "from freesound.versions import kernel_report" in script
    assert json.loads((cwd / "kernel" / "kernel-metadata.json").read_text())["enable_internet"] is False
    assert (cwd / "data" / "experiments" / "dataset-metadata.json").is_file()
