"""Tiled inference: the ``Tagger``.

A clip's log-mel is padded with its minimum and cut into 256-frame tiles at a step of
``tile_step`` frames; each tile gets its deltas (``augment.to_network_input``); a model's
probability for the clip is the mean over tiles of the sigmoid of its main head; several models
(folds) are combined by geometric mean. Tiles of many clips share each batch.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from freesound.audio import AudioConfig, AudioDecodeError, read_as_melspectrogram, to_log_mel
from freesound.augment import to_network_input_batch
from freesound.errors import FreesoundError
from freesound.models import load_checkpoint, load_model

TILE = 256
ON_ERROR = ("raise", "skip", "silence")


def tile_layout(width: int, step: int = 64, tile: int = TILE) -> tuple[int, int, int]:
    """How a clip of ``width`` frames is tiled.

    ``n = max(1, ceil((W - (tile - step)) / step))`` tiles starting at 0, step, 2·step, ...
    after padding ``extra = step·n - (W - (tile - step))`` frames: ``extra // 2`` on the left,
    the rest on the right.

    Returns
    -------
    (n_tiles, pad_left, pad_right)
    """
    if width < 1 or step < 1 or step > tile:
        raise ValueError(f"cannot tile width={width} with step={step} and tile={tile}")
    covered = width - (tile - step)
    n_tiles = max(1, math.ceil(covered / step))
    extra = step * n_tiles - covered
    return n_tiles, extra // 2, extra - extra // 2


def make_tiles(logmel: np.ndarray, step: int = 64, tile: int = TILE) -> np.ndarray:
    """Cut a log-mel into network-input tiles.

    Parameters
    ----------
    logmel : np.ndarray, float32 (n_mels, frames)

    Returns
    -------
    np.ndarray, float32 (n_tiles, 3, n_mels, tile): each tile with its deltas, /100.
    """
    n_tiles, left, right = tile_layout(logmel.shape[1], step, tile)
    padded = np.pad(logmel, ((0, 0), (left, right)), mode="constant", constant_values=logmel.min())
    # The tiles as overlapping views (n_mels, n_tiles, tile); their deltas in one vectorised call.
    windows = np.lib.stride_tricks.sliding_window_view(padded, tile, axis=1)[:, ::step][:, :n_tiles]
    return to_network_input_batch(windows.transpose(1, 0, 2))


def geometric_mean(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Geometric mean of probabilities along ``axis`` (computed in float64 logs)."""
    logs = np.log(np.clip(probabilities.astype(np.float64), 1e-12, None))
    return np.exp(logs.mean(axis=axis)).astype(np.float32)


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


def _weights_fingerprint(model: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (or the mode flips)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return (model.training,) + tuple((t.data_ptr(), t._version) for t in tensors)


def _cpu_inference_model(model: torch.nn.Module, cache: dict) -> torch.nn.Module:
    """A CPU inference copy of ``model``: batch norms folded into the preceding convolutions
    (``torch.fx.experimental.optimization.fuse``) and channels-last weights.

    Folding saves the batch-norm passes over the large early feature maps; the outputs match the
    model's to float rounding (~1e-7). The copy is cached in ``cache`` under the model's identity
    with a fingerprint of its tensors' versions, so training or loading new weights into the
    model invalidates it. Models in training mode, or that FX cannot trace, run as they are.
    """
    if model.training:
        return model
    try:
        fingerprint = _weights_fingerprint(model)
    except RuntimeError:  # e.g. inference tensors carry no version counter
        return model
    entry = cache.get(id(model))
    if entry is not None and entry[0] is model and entry[1] == fingerprint:
        return entry[2]
    try:
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the module's import and FX tracing may warn
            from torch.fx.experimental.optimization import fuse

            runner = fuse(model, inplace=False).to(memory_format=torch.channels_last).eval()
    except Exception:  # noqa: BLE001 - untraceable models simply run unfused
        runner = model
    cache[id(model)] = (model, fingerprint, runner)
    return runner


class Tagger:
    """Predicts clip-level class probabilities with one or more models.

    Parameters
    ----------
    models : list of nn.Module, first-level models returning a tuple whose first item is the main
        head's logits ``(B, C)``
    classes : sequence of str, C class names
    tile_step : int, frames between tile starts
    device : str or torch.device
    batch_size : int, tiles per forward pass (tiles of many clips share a batch)
    audio_config : AudioConfig used by ``predict_files``
    workers : int, DataLoader workers decoding audio in ``predict_files``
    """

    def __init__(self, models, classes, tile_step: int = 64, device="cpu", batch_size: int = 64,
                 audio_config: AudioConfig | None = None, workers: int = 0):
        self.device = torch.device(device)
        self.models = [model.to(self.device).eval() for model in models]
        if not self.models:
            raise ValueError("a Tagger needs at least one model")
        self.classes = list(classes)
        self.tile_step = tile_step
        self.batch_size = batch_size
        self.audio_config = audio_config or AudioConfig()
        self.workers = workers

    @classmethod
    def from_checkpoints(cls, paths, **kwargs) -> "Tagger":
        """Load checkpoints written by training or the argus importer; they must agree on classes."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise FreesoundError("no checkpoints given")
        device = kwargs.get("device", "cpu")
        first = load_checkpoint(paths[0])
        for path in paths[1:]:
            if list(load_checkpoint(path)["classes"]) != list(first["classes"]):
                raise FreesoundError(f"{path} predicts other classes than {paths[0]}")
        kwargs.setdefault("audio_config", AudioConfig.from_dict(first.get("audio_config") or {}))
        models = [load_model(path, device=device) for path in paths]
        return cls(models, first["classes"], **kwargs)

    @classmethod
    def from_experiment(cls, directory, folds=None, required=None, **kwargs) -> "Tagger":
        """Every ``fold_<k>/model.pt`` of a trained (or imported) experiment directory (see
        ``experiment_checkpoints`` for ``folds`` and ``required``)."""
        return cls.from_checkpoints(experiment_checkpoints(directory, folds, required), **kwargs)

    # -- spectrograms -------------------------------------------------------------------------

    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        """Sigmoid of every model's main head on a stack of tiles: (M, T, C) float32.

        On the CPU each model runs as an inference copy with its batch norms folded into the
        convolutions, in channels-last layout (``_cpu_inference_model``); the copy is rebuilt
        whenever the model's weights change, and the model itself is never modified.
        """
        outputs = []
        batch = torch.from_numpy(tiles).to(self.device)
        on_cpu = self.device.type == "cpu"
        if on_cpu and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        use_amp = self.device.type == "cuda"
        cache = self.__dict__.setdefault("_inference_models", {})
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
            for model in self.models:
                runner = _cpu_inference_model(model, cache) if on_cpu else model
                probs = [torch.sigmoid(runner(batch[i:i + self.batch_size])[0].float())
                         for i in range(0, len(batch), self.batch_size)]
                outputs.append(torch.cat(probs).cpu().numpy())
        return np.stack(outputs)

    def tile_probabilities(self, logmels) -> list:
        """Per-tile probabilities of every model for every clip.

        Returns
        -------
        list of np.ndarray, one per clip, float32 (n_models, n_tiles, C)
        """
        # Tiles of consecutive clips queue up and run in full batches of ``batch_size``; what is
        # left over waits for the next clip's tiles, so only the very last batch can be short.
        counts, done = [], []
        queue, queued = [], 0
        for logmel in logmels:
            tiles = make_tiles(logmel, self.tile_step)
            counts.append(len(tiles))
            queue.append(tiles)
            queued += len(tiles)
            if queued >= self.batch_size:
                stacked = np.concatenate(queue)
                full = queued - queued % self.batch_size
                done.append(self._forward(stacked[:full]))
                queue = [stacked[full:]] if full < queued else []
                queued -= full
        if queued:
            done.append(self._forward(np.concatenate(queue)))
        if not counts:
            return []
        probs = np.concatenate(done, axis=1)
        bounds = np.cumsum([0] + counts)
        return [probs[:, start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    def predict_spectrograms(self, logmels) -> np.ndarray:
        """Clip probabilities: mean over tiles per model, geometric mean over models.

        Parameters
        ----------
        logmels : iterable of np.ndarray float32 (n_mels, frames)

        Returns
        -------
        np.ndarray, float32 (N, C)
        """
        clip_probs = [geometric_mean(probs.mean(axis=1)) for probs in self.tile_probabilities(logmels)]
        if not clip_probs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.stack(clip_probs)

    # -- files --------------------------------------------------------------------------------

    def predict_files(self, paths, *, on_error: str = "raise", failures: list | None = None) -> pd.DataFrame:
        """Predict audio files.

        Parameters
        ----------
        paths : sequence of paths
        on_error : "raise" (stop at the first undecodable file), "skip" (leave its row out) or
            "silence" (predict it from a silent clip, so every file keeps its row)
        failures : list, optional; each undecodable file is appended as ``(fname, reason)``

        Returns
        -------
        DataFrame indexed by ``fname`` with one column per class, in the input order.
        """
        return predict_files(self, paths, on_error=on_error, failures=failures)


def predict_files(predictor, paths, *, on_error: str = "raise", failures: list | None = None) -> pd.DataFrame:
    """``predictor.predict_spectrograms`` on decoded files, as a DataFrame indexed by ``fname``.

    ``predictor`` is a ``Tagger`` or an ``EnsemblePredictor``: anything with ``audio_config``,
    ``workers``, ``classes`` and ``predict_spectrograms``. Each file is decoded once.
    """
    names, logmels = predict_logmels_from_files(
        paths, predictor.audio_config, on_error=on_error, failures=failures, workers=predictor.workers
    )
    return pd.DataFrame(predictor.predict_spectrograms(logmels), index=pd.Index(names, name="fname"),
                        columns=predictor.classes)


def predict_logmels_from_files(paths, config: AudioConfig, *, on_error: str = "raise",
                               failures: list | None = None, workers: int = 0) -> tuple[list, list]:
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
    for index, logmel, reason in loader:
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


def silent_logmel(config: AudioConfig | None = None) -> np.ndarray:
    """The log-mel of the front end's shortest clip of digital silence."""
    config = config or AudioConfig()
    return to_log_mel(np.zeros(config.min_samples, dtype=np.float32), config)


def experiment_checkpoints(directory, folds=None, required=None) -> list:
    """``fold_<k>/model.pt`` paths of an experiment directory, sorted by fold.

    With ``folds`` given, exactly those folds, each of which must be there. Otherwise every fold
    found, and none may be missing: no fold numbered below the highest one, no ``fold_<k>``
    folder without its ``model.pt`` (a training that never finished an epoch) and none of
    ``required`` (e.g. the folds of ``folds.csv``, ``freesound.folds.recorded_folds``). A
    prediction from some of the folds would silently differ from the ensemble's, so an error
    names the missing ones.
    """
    directory = Path(directory)
    fold_dirs = {int(path.name.removeprefix("fold_")): path for path in directory.glob("fold_*")
                 if path.is_dir() and path.name.removeprefix("fold_").isdigit()}
    found = {k: path / "model.pt" for k, path in fold_dirs.items() if (path / "model.pt").is_file()}
    if folds is None:
        if not found:
            raise FreesoundError(f"no trained folds in {directory} (expected fold_<k>/model.pt)")
        expected = set(range(max(found) + 1)) | set(fold_dirs) | set(required or ())
        folds = sorted(found)
    else:
        expected = set(folds)
    missing = sorted(expected - set(found))
    if missing:
        raise FreesoundError(f"{directory}: fold(s) {', '.join(map(str, missing))} have no model.pt "
                             f"(expected folds {', '.join(map(str, sorted(expected)))})")
    return [found[k] for k in folds]


def reference_predict(models, logmel: np.ndarray, tile_step: int = 64, batch_size: int = 16) -> np.ndarray:
    """The plain way: one clip at a time, batches of 16 tiles, fp32 on the CPU.

    The yardstick ``Tagger`` is tested and benchmarked against: (C,) float32.
    """
    tiles = torch.from_numpy(make_tiles(logmel, tile_step))
    per_model = []
    with torch.no_grad():
        for model in models:
            model.eval()
            probs = torch.cat([torch.sigmoid(model(tiles[i:i + batch_size])[0]) for i in range(0, len(tiles), batch_size)])
            per_model.append(probs.mean(dim=0).numpy())
    return geometric_mean(np.stack(per_model))
