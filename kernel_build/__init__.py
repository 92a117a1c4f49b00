"""The Kaggle kernel bundler: one self-contained script per trained experiment or ensemble.

``build_kernels(work, experiment="small", ensemble="ensemble")`` writes ``kernel/kernel.py``,
``kernel/ensemble_kernel.py``, ``kernel/kernel-metadata.json`` and
``<work>/experiments/dataset-metadata.json``. jinja2 is needed here, at build time only; the
scripts run on ``freesound.kaggle.runtime`` with what a Kaggle Python image has.
"""

from kernel_build.bundle import DEFAULT_DATASET_ID, build_kernels

__all__ = ["DEFAULT_DATASET_ID", "build_kernels"]
