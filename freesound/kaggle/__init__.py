"""The Kaggle kernel runtime: what a built kernel script (``kernel/*.py``) runs on Kaggle.

    runtime.py  find and check the weights, predict sample_submission.csv, write submission.csv
    budget.py   the time budget: cheaper plans, their projected cost, which one fits

It imports only what a Kaggle Python image has (numpy, pandas, scipy, torch, librosa, soundfile),
a rule the import-linter contract in ``setup.cfg``/``.importlinter`` checks. The bundler that
writes the kernels is ``kernel_build/``, outside the package.
"""

from freesound.kaggle.runtime import COMPETITION, MANIFEST_FORMAT, main, run_kernel

__all__ = ["COMPETITION", "MANIFEST_FORMAT", "main", "run_kernel"]
