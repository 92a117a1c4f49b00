"""``freesound predict``: a resolved experiment or ensemble on a test set or a folder of audio.

An experiment on a dataset is first predicted out of fold (its CV score); then the test set
(``sample_submission.csv`` order) or every audio file under a folder is predicted and written as
a submission-format CSV. Files that cannot be used are listed in ``<out>.errors.csv``: on a test
set their rows are predicted from silence so the submission stays complete, from a folder they
are left out. A folder's files are chosen by ``freesound.audio.scan_audio_folder`` (audio by
name, or every file with ``all_files``), and the files it passes over are reported; each row is
named by the file's path relative to the folder, so ``a/x.wav`` and ``b/x.wav`` stay apart.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from freesound.audio import AudioFolder, scan_audio_folder
from freesound.config import EnsembleConfig, Experiment
from freesound.data.dataset import Dataset
from freesound.ensembling.specs import prediction_spec
from freesound.ensembling.stack import check_window_tiles
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.fileio import atomic_write_csv
from freesound.paths import predictions_dir, weights_root
from freesound.predict import EnsemblePredictor, WindowSpec, predict_file_windows
from freesound.progress import progress_bar
from freesound.training.oof import predict_oof, reported_metrics


@dataclass(frozen=True)
class PredictionResult:
    """What ``run_prediction`` wrote.

    Attributes
    ----------
    name : the experiment's or ensemble's name
    predictions : DataFrame indexed by fname (by row_id with windows), one column per class
    out_csv : Path of the submission-format CSV
    failures : list of (fname, reason), the files that could not be used
    errors_csv : Path of the CSV listing them (written only when there are any)
    oof_scores : dict or None, an experiment's out-of-fold scores (``predict_oof``)
    checkpoints, stacker_checkpoints : int, the first-level and stacker weights used
    audio_folder : ``AudioFolder`` of ``audio_dir`` (the files read and those left out), or None
    truncated : list of (fname, warning message), files that decode fewer frames than their
        header states, predicted from the audio that decodes
    """

    name: str
    predictions: pd.DataFrame
    out_csv: Path
    failures: list
    errors_csv: Path
    oof_scores: dict | None
    checkpoints: int
    stacker_checkpoints: int
    audio_folder: AudioFolder | None = None
    truncated: list = field(default_factory=list)


def run_prediction(config: Experiment | EnsembleConfig, work, *, dataset: Dataset | None = None, audio_dir=None,
                   out_csv=None, oof: bool = True, device="cpu", batch_size: int = 64, workers: int = 0,
                   all_files: bool = False, feature_workers: int = 1, precision: str = "fp16",
                   runtime: str = "torch", progress: bool = True, allow_unfinished: bool = False,
                   windows: WindowSpec | None = None, combine: str = "gmean", smooth=None,
                   file_rescale: float | None = None, log=print) -> PredictionResult:
    """Predict ``dataset``'s test set, or every audio file under ``audio_dir`` (give exactly one).

    Parameters
    ----------
    config : the resolved experiment or ensemble (``freesound.config.load_config``)
    work : the work directory holding the weights
    oof : for an experiment on a dataset, predict and score it out of fold first (computing
        curated log-mels not cached yet in ``feature_workers`` processes)
    out_csv : default ``<work>/predictions/<name>/test.csv`` (or ``audio.csv``)
    device, batch_size, workers : as for ``EnsemblePredictor``
    all_files : under ``audio_dir``, decode every file, not only those named as audio
    precision : "fp16" or "fp32", the first-level models' arithmetic on CUDA (``Tagger``), for the
        out-of-fold scores too
    runtime : what runs the first-level models on a CPU (``Tagger``), for the out-of-fold scores too
    progress : a progress bar over the clips predicted, and over each out-of-fold pass
    allow_unfinished : use folds that have not finished training, with a warning naming them
        (default: refused)
    windows : WindowSpec, optional; one row per window of each file (``row_id`` then the
        classes; ``freesound.predict.predict_file_windows``) instead of one per clip, written by
        default to ``test_windows.csv`` (or ``audio_windows.csv``); no out-of-fold pass then
    combine, smooth, file_rescale : with ``windows``: how models combine (gmean, mean, min), the
        smoothing weights over neighbouring windows and the file-maximum power
        (``freesound.predict.postprocess``)

    Raises
    ------
    ValueError
        Neither or both of ``dataset`` and ``audio_dir``.
    FreesoundError
        ``audio_dir`` holds no file to predict (the message names what was left out), or
        ``dataset`` has no test clip (a prepared collection without test rows, e.g. BirdCLEF's).
    """
    if (dataset is None) == (audio_dir is None):
        raise ValueError("give exactly one of dataset and audio_dir")
    if dataset is not None and not dataset.test_fnames:
        # Refused before any work: an empty test set would be written as an empty CSV without a word.
        raise FreesoundError(f"{dataset.root / 'sample_submission.csv'} lists no test clips, so there is nothing "
                             "to predict; pass the folder of recordings to predict with --audio instead "
                             "(for BirdCLEF, its test_soundscapes/)")
    spec = prediction_spec(config, work, allow_unfinished)
    name = spec["name"]
    scores = None
    if windows is None and (combine != "gmean" or smooth is not None or file_rescale is not None):
        raise FreesoundError("model combination, smoothing and file rescaling apply to windows: give windows")
    if dataset is not None and isinstance(config, Experiment) and oof and windows is None:
        scores = predict_oof(name, dataset, work, device=device, batch_size=batch_size, precision=precision,
                             feature_workers=feature_workers, progress=progress, runtime=runtime,
                             allow_unfinished=allow_unfinished, log=log,
                             metrics=reported_metrics(config.train.metric))
    folder = None if audio_dir is None else scan_audio_folder(audio_dir, all_files=all_files)
    if folder is not None and not folder.files:
        left_out = f"; left out as not audio by name: {folder.describe_left_out()} (--all-files decodes every file)"
        raise FreesoundError(f"no audio files under {audio_dir}" + (left_out if folder.left_out else ""))
    predictor = EnsemblePredictor.from_spec(spec, lambda path: weights_root(work) / path, device=device,
                                            batch_size=batch_size, workers=workers, precision=precision,
                                            runtime=runtime)
    if windows is not None and predictor.stackers:
        beyond = check_window_tiles(predictor, windows, work)
        if beyond:
            warnings.warn(beyond, FreesoundWarning, stacklevel=2)
    if dataset is not None:
        paths, on_error, default_name = dataset.paths("test"), "silence", "test.csv"
        names = None
    else:
        paths, on_error, default_name = folder.files, "skip", "audio.csv"
        # Unique where file names repeat in subfolders; a flat folder's are the competition's fname.
        names = [path.relative_to(folder.root).as_posix() for path in paths]
    if windows is not None:
        default_name = default_name.replace(".csv", "_windows.csv")
    out_csv = Path(out_csv or predictions_dir(work, name) / default_name)
    failures, truncated = [], []
    track = partial(progress_bar, unit="clip", enabled=progress)
    if windows is None:
        frame = predictor.predict_files(paths, on_error=on_error, failures=failures, truncated=truncated, names=names,
                                        track=track)
    else:
        frame = predict_file_windows(predictor, paths, windows, combine=combine, smooth=smooth,
                                     file_rescale=file_rescale, on_error=on_error, failures=failures,
                                     truncated=truncated, names=names, track=track)
    atomic_write_csv(out_csv, frame.reset_index(), index=False)
    errors_csv = Path(str(out_csv).removesuffix(".csv") + ".errors.csv")
    if failures:
        atomic_write_csv(errors_csv, pd.DataFrame(failures, columns=["fname", "reason"]), index=False)
    return PredictionResult(
        name=name, predictions=frame, out_csv=out_csv, failures=failures, errors_csv=errors_csv, oof_scores=scores,
        checkpoints=sum(len(p) for p in spec["experiments"].values()),
        stacker_checkpoints=sum(len(p) for p in spec["stackers"].values()), audio_folder=folder,
        truncated=truncated,
    )
