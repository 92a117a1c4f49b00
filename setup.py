"""Packaging: the static metadata is in pyproject.toml; this file adds what is computed.

The version comes from ``freesound/__init__.py`` and the requirements from
``freesound/versions.py`` (the one place that states the minimum versions, which the Kaggle kernel
also checks at run time). The wheel's ``freesound/presets/`` is the repository's ``experiments/``
folder: every TOML file there ships as a built-in experiment.
"""

import re
import runpy
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "freesound/__init__.py").read_text(), re.M).group(1)
# Executed on its own (it imports only the standard library): building needs no dependency installed.
VERSIONS = runpy.run_path(str(HERE / "freesound/versions.py"))

setup(
    version=VERSION,
    python_requires=f">={VERSIONS['PYTHON']}",
    packages=find_packages(include=["freesound", "freesound.*", "kernel_build", "kernel_build.*"])
    + ["freesound.presets"],
    package_dir={"freesound.presets": "experiments"},
    package_data={"kernel_build": ["templates/*.j2"], "freesound.presets": ["*.toml"],
                  "freesound.tools": ["audioset/*.csv", "audioset/*.md"]},
    install_requires=VERSIONS["requirements"](),
    extras_require={
        # pytest-xdist runs the suite on every core (make test); 3.8 is the release tested.
        "dev": ["pytest>=7.4", "pytest-xdist>=3.8", "hypothesis>=6.80", "import-linter>=2.1"],
        # Experiment trackers (freesound.training.tracking): train --track tensorboard|mlflow|wandb.
        "tracking": VERSIONS["TRACKING"],
        "listen": ["sounddevice>=0.4"],
        # timm backbones ([model] name = "timm"); timm brings torchvision (matching torch exactly)
        # and safetensors. The release tested by make test-timm, not older ones.
        "timm": [f"timm>={VERSIONS['TIMM']}"],
        # Faster CPU prediction (freesound.predict.runtimes): the releases tested, not older ones.
        "onnx": ["onnx>=1.23", "onnxruntime>=1.32"],
        "openvino": ["onnx>=1.23", "openvino>=2026.0"],
    },
)
