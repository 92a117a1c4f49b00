"""The Kaggle kernel bundler: one self-contained script per trained experiment or ensemble.

``build_kernels(work, experiment="small", ensemble="ensemble")`` writes ``kernel/kernel.py``,
``kernel/ensemble_kernel.py``, ``kernel/kernel-metadata.json`` and
``<work>/experiments/dataset-metadata.json``. jinja2 is needed here, at build time only; the
scripts run on ``freesound.kaggle.runtime`` with what a Kaggle Python image has.

    bundle.py    render the kernels and their metadata
    manifest.py  the weight manifest (paths, sizes, sha256, configs, time budget)
    payload.py   the embedded package as one deterministic text payload
    estimate.py  ``build-kernel --estimate``: the expected kernel time, measured briefly here
"""

from kernel_build.bundle import DEFAULT_DATASET_ID, build_kernels

__all__ = ["DEFAULT_DATASET_ID", "build_kernels"]
