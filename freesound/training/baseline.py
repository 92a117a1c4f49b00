"""A simple yardstick: one-vs-rest logistic regression on each mel band's mean and std."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def band_statistics(logmels) -> np.ndarray:
    """Per clip, each mel band's mean and standard deviation over time.

    Parameters
    ----------
    logmels : iterable of np.ndarray (n_mels, frames)

    Returns
    -------
    np.ndarray, float32 (N, 2·n_mels)
    """
    return np.stack([np.concatenate([m.mean(axis=1), m.std(axis=1)]) for m in logmels]).astype(np.float32)


def fit_baseline(logmels, targets: np.ndarray, *, C: float = 1.0):
    """Fit the baseline on log-mels and their (N, classes) 0/1 targets."""
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)))
    return model.fit(band_statistics(logmels), targets.astype(int))


def predict_baseline(model, logmels) -> np.ndarray:
    """Class probabilities (N, classes), float32."""
    return model.predict_proba(band_statistics(logmels)).astype(np.float32)
