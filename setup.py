import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'^__version__ = "([^"]+)"', Path("freesound/__init__.py").read_text(), re.M).group(1)

setup(
    name="freesound",
    version=VERSION,
    description="Multi-label audio tagging the way the Freesound Audio Tagging 2019 winners did it, "
    "with offline prediction and self-contained Kaggle kernels.",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["freesound", "freesound.*", "kernel_build", "kernel_build.*"]),
    package_data={"kernel_build": ["templates/*.j2"]},
    install_requires=[
        "torch>=2.1",
        "librosa>=0.10",
        "soundfile>=0.12",
        "numpy>=1.24",
        "pandas>=2.0",
        "scikit-learn>=1.3",
        "click>=8.1",
        "jinja2>=3.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "optuna>=5.0",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "hypothesis>=6.80", "import-linter>=2.1"],
        "listen": ["sounddevice>=0.4"],
    },
    entry_points={"console_scripts": ["freesound=freesound.cli:main"]},
)
