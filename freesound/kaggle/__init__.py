"""The Kaggle kernel runtime: what a built kernel script (``kernel/*.py``) runs on Kaggle.

    runtime.py  find and check the weights, predict sample_submission.csv (clips, or windows of
                soundscapes), write submission.csv
    budget.py   the time budget: cheaper plans, their projected cost, which one fits
    wheels.py   an ONNX runtime from wheels attached as a Kaggle dataset (else torch runs)

It imports only what a Kaggle Python image has (numpy, pandas, scipy, torch, librosa, soundfile),
and an ONNX runtime only where one is installed or attached (``wheels.py``), a rule the
import-linter contract ``kernel-runtime`` in ``.importlinter`` checks. The bundler that writes the
kernels is ``kernel_build/``, outside the package.
"""

from freesound.kaggle.runtime import COMPETITION, MANIFEST_FORMAT, TEST_DIR, main, run_kernel

__all__ = ["COMPETITION", "MANIFEST_FORMAT", "TEST_DIR", "main", "run_kernel"]
