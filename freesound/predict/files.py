"""Decoding files for prediction, with a policy for files that cannot be used.

``on_error`` is ``"raise"`` (stop at the first bad file), ``"skip"`` (leave its row out) or
``"silence"`` (predict it from a silent clip, so every file keeps its row: the kernel's policy).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from freesound.audio import AudioDecodeError, read_as_melspectrogram, silent_logmel
from freesound.config import AudioConfig

ON_ERROR = ("raise", "skip", "silence")


def _as_is(item):
    """Keep worker results as NumPy arrays (DataLoader would turn them into tensors)."""
    return item


class _FileFeatures(TorchDataset):
    """Decodes files in DataLoader workers so the front end overlaps the model."""

    def __init__(self, paths, config: AudioConfig):
        self.paths = list(paths)
        self.config = config

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            return index, read_as_melspectrogram(self.paths[index], self.config), None
        except AudioDecodeError as error:
            return index, None, error.reason



def predict_files(predictor, paths, *, on_error: str = "raise", failures: list | None = None,
                  track=None) -> pd.DataFrame:
    """``predictor.predict_spectrograms`` on decoded files, as a DataFrame indexed by ``fname``.

    ``predictor`` is a ``Tagger`` or an ``EnsemblePredictor``: anything with ``audio_config``,
    ``workers``, ``classes`` and ``predict_spectrograms``. Each file is decoded once. ``track``
    (as for ``Tagger.tile_probabilities``) wraps the decoding and each model pass.
    """
    names, logmels = predict_logmels_from_files(
        paths, predictor.audio_config, on_error=on_error, failures=failures, workers=predictor.workers,
        track=track,
    )
    return pd.DataFrame(predictor.predict_spectrograms(logmels, track=track), index=pd.Index(names, name="fname"),
                        columns=predictor.classes)


def predict_logmels_from_files(paths, config: AudioConfig, *, on_error: str = "raise",
                               failures: list | None = None, workers: int = 0,
                               track=None) -> tuple[list, list]:
    """Decode files to log-mels (in DataLoader workers when ``workers`` > 0), applying the
    ``on_error`` policy of ``Tagger.predict_files``.

    Returns
    -------
    (fnames, logmels) for the files that get a row, in the input order.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    paths = [Path(p) for p in paths]
    loader = DataLoader(_FileFeatures(paths, config), batch_size=None, num_workers=workers, collate_fn=_as_is)
    names, logmels, silent = [], [], None
    for index, logmel, reason in track(loader, total=len(paths), desc="decoding") if track else loader:
        if reason is not None:
            if on_error == "raise":
                raise AudioDecodeError(paths[index], reason)
            if failures is not None:
                failures.append((paths[index].name, reason))
            if on_error == "skip":
                continue
            if silent is None:
                silent = silent_logmel(config)
            logmel = silent
        names.append(paths[index].name)
        logmels.append(logmel)
    return names, logmels

