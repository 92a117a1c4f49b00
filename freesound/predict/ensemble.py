"""Ensemble prediction: first-level experiments, stackers on their probabilities, and the blend.

An ensemble is described for prediction by a plain, JSON-able *spec*::

    {
      "name": "ensemble",
      "experiments": {"small": ["small/fold_0/model.pt", ...], ...},   # first level, in order
      "stackers": {"ensemble_stacker": ["ensemble_stacker/fold_0/model.pt", ...]},
    }

Paths are relative to the weights folder (``<work>/experiments`` locally, the Kaggle weights
dataset in a kernel); ``resolve`` turns them into files. A single experiment is the same spec
with one experiment and no stackers, so local prediction and both kernels share one code path.

Prediction: each experiment's folds are combined by ``Tagger`` (its own tiles, tile mean, fold
geometric mean); experiments may differ in tile length and in audio config (``n_mels``...): each
file is decoded once per audio config (``front_end``) and each experiment tiles its own log-mels;
each stacker sees the experiments' probabilities concatenated in spec order and its folds are
combined by geometric mean; the blend is the geometric mean of every experiment and stacker.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch

from freesound.errors import FreesoundError
from freesound.models import load_model
from freesound.predict.files import predict_files
from freesound.predict.postprocess import combine_models
from freesound.predict.tagger import Tagger
from freesound.predict.tiles import geometric_mean
from freesound.predict.windows import WindowSpec


class EnsemblePredictor:
    """Predicts with every experiment of a spec, its stackers and the blend.

    Parameters
    ----------
    taggers : dict name -> Tagger, the first-level experiments in stacking order
    stackers : dict name -> list of nn.Module (FCNet folds); each runs as a copy on ``device``,
        the caller's modules stay where they are
    device : str or torch.device, where the stackers run (the taggers have their own)
    workers : int, processes decoding audio in ``predict_files``
    """

    def __init__(self, taggers: dict, stackers: dict | None = None, device="cpu", workers: int = 0):
        if not taggers:
            raise FreesoundError("an ensemble needs at least one experiment")
        first = next(iter(taggers.values()))
        for name, tagger in taggers.items():
            if tagger.classes != first.classes:
                raise FreesoundError(f"experiment {name!r} predicts other classes than the first experiment")
        self.taggers = dict(taggers)
        self.stackers = {name: [copy.deepcopy(m).to(device).eval() for m in models]
                         for name, models in (stackers or {}).items()}
        self.classes = first.classes
        #: The experiments' distinct audio configs, in order of first use.
        self.audio_configs = tuple(dict.fromkeys(tagger.audio_config for tagger in taggers.values()))
        self.audio_config = first.audio_config
        self.device = torch.device(device)
        self.workers = workers

    @classmethod
    def from_spec(cls, spec: dict, resolve, *, device="cpu", batch_size: int = 64, workers: int = 0,
                  tile_step: int | None = None, precision: str = "fp16", runtime: str = "torch") -> "EnsemblePredictor":
        """Load every checkpoint named by ``spec``; ``resolve(relative_path) -> Path``; ``tile_step``
        as ``Tagger``'s (default: 64 frames, or a model's tile where that is shorter).
        ``precision`` is the first-level models' arithmetic on CUDA, ``runtime`` what runs them on
        a CPU (``Tagger``)."""
        taggers = {
            name: Tagger.from_checkpoints([resolve(p) for p in paths], device=device, batch_size=batch_size,
                                          tile_step=tile_step, precision=precision, runtime=runtime)
            for name, paths in spec["experiments"].items()
        }
        stackers = {name: [load_model(resolve(p)) for p in paths]
                    for name, paths in spec.get("stackers", {}).items()}
        return cls(taggers, stackers, device=device, workers=workers)

    def subset(self, folds: dict, tile_step: int | None = None, stackers: bool = True) -> "EnsemblePredictor":
        """This ensemble on fewer models: ``folds`` maps each experiment kept (in this ensemble's
        order) to how many of its folds run (the first ones), at ``tile_step`` (default each
        experiment's own); ``stackers`` keeps the stackers, which need every experiment.
        Models are shared, not copied (``Tagger.subset``).

        Raises
        ------
        ValueError
            An unknown experiment, experiments out of order, or stackers without every experiment.
        """
        names = list(folds)
        if [name for name in self.taggers if name in folds] != names:
            raise ValueError(f"experiments {names} are not a subset of {list(self.taggers)} in its order")
        if stackers and self.stackers and names != list(self.taggers):
            raise ValueError("the stackers read every experiment's probabilities: keep them all or drop the stackers")
        other = copy.copy(self)
        other.taggers = {name: self.taggers[name].subset(folds[name], tile_step) for name in names}
        other.stackers = self.stackers if stackers else {}
        return other

    @property
    def front_end(self):
        """What each clip is decoded to (``freesound.predict.files.iter_logmel_chunks``): the
        ``AudioConfig`` every experiment shares, or the tuple ``audio_configs`` when they differ
        (a clip is then a tuple of log-mels, one per config)."""
        return self.audio_configs if len(self.audio_configs) > 1 else self.audio_config

    def experiment_logmels(self, name: str, logmels: list) -> list:
        """The log-mels experiment ``name`` predicts from: ``logmels`` as they are under one
        audio config; each clip's item of that experiment's audio config when they differ.

        Raises
        ------
        FreesoundError
            The experiments differ in audio config and a clip is not a tuple of one log-mel per
            config (``front_end``).
        """
        if len(self.audio_configs) == 1:
            return logmels
        if not all(isinstance(clip, tuple) and len(clip) == len(self.audio_configs) for clip in logmels):
            raise FreesoundError(f"the ensemble's experiments use {len(self.audio_configs)} audio configs: each clip "
                                 "must be a tuple of one log-mel per config (decode it with the ensemble's front_end)")
        index = self.audio_configs.index(self.taggers[name].audio_config)
        return [clip[index] for clip in logmels]

    def level_probabilities(self, logmels, timings: dict | None = None, clock=time.perf_counter) -> dict:
        """Every experiment's and stacker's clip probabilities: name -> (N, C) float32.

        ``logmels`` are decoded as ``front_end`` says. ``timings``, when given, gets each
        experiment's seconds (by ``clock``) added to its entry.
        """
        logmels = list(logmels)
        levels = {}
        for name, tagger in self.taggers.items():
            start = clock()
            levels[name] = tagger.predict_spectrograms(self.experiment_logmels(name, logmels))
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + clock() - start
        if self.stackers:
            stack_input = np.concatenate([levels[name] for name in self.taggers], axis=1)
            for name, models in self.stackers.items():
                levels[name] = predict_stacker(models, stack_input, self.device)
        return levels

    def predict_spectrograms(self, logmels, timings: dict | None = None, clock=time.perf_counter) -> np.ndarray:
        """The blend: geometric mean over experiments and stackers, (N, C) float32
        (``timings`` and ``clock``: as for ``level_probabilities``)."""
        levels = self.level_probabilities(logmels, timings, clock)
        return geometric_mean(np.stack(list(levels.values())))

    def predict_windows(self, logmels, windows: WindowSpec, combine: str = "gmean", timings: dict | None = None,
                        clock=time.perf_counter) -> tuple[list, list]:
        """Each clip's window probabilities (``Tagger.window_probabilities``): each experiment's
        folds combined by ``combine``; each stacker on the experiments' fold-geometric-mean window
        probabilities concatenated (its clip input, per window: ``stacker_window_inputs``); then
        the experiments and stackers by ``combine`` (with the default geometric mean, as clips are).
        ``timings`` and ``clock``: as for ``level_probabilities``.

        Returns
        -------
        (list of np.ndarray float32 (n_windows, C), one per clip; list of ``window_bounds`` lists)

        Raises
        ------
        FreesoundError
            Experiments whose audio configs cut a clip into different windows.
        """
        logmels = list(logmels)
        per_model, bounds = {}, None
        for name, tagger in self.taggers.items():
            start = clock()
            per_model[name], tagger_bounds = tagger.window_probabilities(self.experiment_logmels(name, logmels),
                                                                         windows)
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + clock() - start
            counts = [len(clip) for clip in tagger_bounds]
            if bounds is not None and counts != [len(clip) for clip in bounds]:
                raise FreesoundError(f"experiment {name!r} cuts the clips into other windows than "
                                     f"{next(iter(self.taggers))!r} (their audio configs differ in hop or rate)")
            bounds = bounds or tagger_bounds
        levels = [[combine_models(probs, combine) for probs in clips] for clips in per_model.values()]
        if self.stackers and logmels:
            stack_input = stacker_window_inputs(list(per_model.values()))
            edges = np.cumsum([0] + [len(clip) for clip in bounds])
            for models in self.stackers.values():
                stacked = predict_stacker(models, stack_input, self.device)
                levels.append([stacked[start:end] for start, end in zip(edges[:-1], edges[1:])])
        return [combine_models(np.stack(clip), combine) for clip in zip(*levels)], bounds

    def predict_files(self, paths, *, on_error: str = "raise", failures: list | None = None,
                      truncated: list | None = None, track=None, names=None) -> pd.DataFrame:
        """Like ``Tagger.predict_files``: each file is decoded once for all models."""
        return predict_files(self, paths, on_error=on_error, failures=failures, truncated=truncated, track=track,
                             names=names)


def stacker_window_inputs(per_model: list) -> np.ndarray:
    """The stackers' input for every window: each experiment's fold geometric mean (what a
    stacker reads for a clip, ``level_probabilities``), concatenated in stacking order.

    Parameters
    ----------
    per_model : list over experiments of lists over clips of (n_models, n_windows, C) probabilities
        (``Tagger.window_probabilities``)

    Returns
    -------
    np.ndarray float32 (total windows over the clips, E·C), clips in order
    """
    columns = [np.concatenate([geometric_mean(probs) for probs in clips]) for clips in per_model]
    return np.concatenate(columns, axis=1).astype(np.float32)


def predict_stacker(models, features: np.ndarray, device="cpu") -> np.ndarray:
    """Geometric mean over stacker folds of ``sigmoid(FCNet(features))``: (N, C) float32."""
    inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    with torch.inference_mode():
        probs = [torch.sigmoid(model(inputs)).float().cpu().numpy() for model in models]
    return geometric_mean(np.stack(probs))


def spec_files(spec: dict) -> list:
    """Every weight file a spec needs, relative to the weights folder, in spec order."""
    return [p for group in ("experiments", "stackers") for paths in spec.get(group, {}).values() for p in paths]
