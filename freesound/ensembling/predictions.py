"""``freesound predict``: a resolved experiment or ensemble on a test set or a folder of audio.

An experiment on a dataset is first predicted out of fold (its CV score); then the test set
(``sample_submission.csv`` order) or every audio file under a folder is predicted and written as
a submission-format CSV. Files that cannot be used are listed in ``<out>.errors.csv``: on a test
set their rows are predicted from silence so the submission stays complete, from a folder they
are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from freesound.audio import find_audio_files
from freesound.config import EnsembleConfig, Experiment
from freesound.data.dataset import Dataset
from freesound.ensembling.specs import prediction_spec
from freesound.fileio import atomic_write_csv
from freesound.paths import predictions_dir, weights_root
from freesound.predict import EnsemblePredictor
from freesound.training.oof import predict_oof


@dataclass(frozen=True)
class PredictionResult:
    """What ``run_prediction`` wrote.

    Attributes
    ----------
    name : the experiment's or ensemble's name
    predictions : DataFrame indexed by fname, one column per class
    out_csv : Path of the submission-format CSV
    failures : list of (fname, reason), the files that could not be used
    errors_csv : Path of the CSV listing them (written only when there are any)
    oof_scores : dict or None, an experiment's out-of-fold scores (``predict_oof``)
    checkpoints, stacker_checkpoints : int, the first-level and stacker weights used
    """

    name: str
    predictions: pd.DataFrame
    out_csv: Path
    failures: list
    errors_csv: Path
    oof_scores: dict | None
    checkpoints: int
    stacker_checkpoints: int


def run_prediction(config: Experiment | EnsembleConfig, work, *, dataset: Dataset | None = None, audio_dir=None,
                   out_csv=None, oof: bool = True, device="cpu", batch_size: int = 64, workers: int = 0,
                   precision: str = "fp16", log=print) -> PredictionResult:
    """Predict ``dataset``'s test set, or every audio file under ``audio_dir`` (give exactly one).

    Parameters
    ----------
    config : the resolved experiment or ensemble (``freesound.config.load_config``)
    work : the work directory holding the weights
    oof : for an experiment on a dataset, predict and score it out of fold first
    out_csv : default ``<work>/predictions/<name>/test.csv`` (or ``audio.csv``)
    device, batch_size, workers : as for ``EnsemblePredictor``
    precision : "fp16" or "fp32", the first-level models' arithmetic on CUDA (``Tagger``), for the
        out-of-fold scores too

    Raises
    ------
    ValueError
        Neither or both of ``dataset`` and ``audio_dir``.
    """
    if (dataset is None) == (audio_dir is None):
        raise ValueError("give exactly one of dataset and audio_dir")
    spec = prediction_spec(config, work)
    name = spec["name"]
    scores = None
    if dataset is not None and isinstance(config, Experiment) and oof:
        scores = predict_oof(name, dataset, work, device=device, batch_size=batch_size, precision=precision, log=log)
    predictor = EnsemblePredictor.from_spec(spec, lambda path: weights_root(work) / path, device=device,
                                            batch_size=batch_size, workers=workers, precision=precision)
    if dataset is not None:
        paths, on_error, default_name = dataset.paths("test"), "silence", "test.csv"
    else:
        paths, on_error, default_name = find_audio_files(audio_dir), "skip", "audio.csv"
    out_csv = Path(out_csv or predictions_dir(work, name) / default_name)
    failures = []
    frame = predictor.predict_files(paths, on_error=on_error, failures=failures)
    atomic_write_csv(out_csv, frame.reset_index(), index=False)
    errors_csv = Path(str(out_csv).removesuffix(".csv") + ".errors.csv")
    if failures:
        atomic_write_csv(errors_csv, pd.DataFrame(failures, columns=["fname", "reason"]), index=False)
    return PredictionResult(
        name=name, predictions=frame, out_csv=out_csv, failures=failures, errors_csv=errors_csv, oof_scores=scores,
        checkpoints=sum(len(p) for p in spec["experiments"].values()),
        stacker_checkpoints=sum(len(p) for p in spec["stackers"].values()),
    )
