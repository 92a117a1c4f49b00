"""The ``Tagger``: clip probabilities from one or more first-level models, tile by tile.

A model's probability for a clip is the mean over its tiles (``freesound.predict.tiles``) of the
sigmoid of its main head; several models (folds) are combined by geometric mean. Tiles of many
clips share each batch. A long recording can also be predicted window by window
(``predict_windows``, ``freesound.predict.windows``), and a model with a frame-wise head frame by
frame (``frame_probabilities``).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from freesound.config import AudioConfig, InputConfig
from freesound.errors import FreesoundError, FreesoundWarning
from freesound.models import load_checkpoint, load_model
from freesound.paths import experiment_checkpoints
from freesound.predict.files import predict_files
from freesound.predict.runtimes import compile_model, resolve_runtime
from freesound.predict.postprocess import combine_models
from freesound.predict.tiles import geometric_mean, make_tiles, tile_layout, whole_clip_input
from freesound.predict.windows import WindowSpec, split_windows


#: Arithmetic of prediction on CUDA: fp16 autocast (the default, as in training with AMP) or
#: fp32. Every other device predicts in fp32.
PRECISIONS = ("fp16", "fp32")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``; else a ``FreesoundError`` naming them."""
    if precision not in PRECISIONS:
        raise FreesoundError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _weights_fingerprint(model: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _inference_model(model: torch.nn.Module, device: torch.device, cache: dict) -> torch.nn.Module:
    """An inference copy of ``model`` on ``device``: eval mode, batch norms folded into the
    preceding convolutions (``torch.fx.experimental.optimization.fuse``), channels-last weights.

    The caller's ``model`` is never moved, modified or switched to eval mode. Folding saves the
    batch-norm passes over the large early feature maps, and channels-last is the layout the CPU's
    oneDNN and cuDNN's tensor-core convolutions run fastest; the outputs match the model's to
    float rounding (~1e-7). The copy is cached in ``cache`` under the model's identity with a
    fingerprint of its tensors' versions, so training or loading new weights into the model
    invalidates it (a model of inference tensors has no version counters: its copy is made once).
    Models that FX cannot trace are copied unfused (with one ``FreesoundWarning`` each).
    """
    try:
        fingerprint = _weights_fingerprint(model)
    except RuntimeError:  # inference tensors carry no version counter
        fingerprint = None
    entry = cache.get(id(model))
    if entry is not None and entry[0] is model and entry[1] == fingerprint:
        return entry[2]
    with torch.inference_mode(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the module's import and FX tracing may warn
        from torch.fx.experimental.optimization import fuse
        from torch.fx.proxy import TraceError

        evaluated = copy.deepcopy(model).eval()  # folding needs eval mode; the caller's keeps its own
        try:
            runner, reason = fuse(evaluated, inplace=True), None
        except (TraceError, RuntimeError, TypeError) as error:  # FX cannot trace this model
            runner, reason = evaluated, f"{type(error).__name__}: {error}"
    if reason is not None:
        warnings.warn(FreesoundWarning(
            f"{type(model).__name__} cannot be traced to fold its batch norms ({reason}); it runs unfused"
        ), stacklevel=2)
    runner = runner.to(device, memory_format=torch.channels_last).eval()
    cache[id(model)] = (model, fingerprint, runner)
    return runner


def _batches(batch: torch.Tensor, size: int, pad: bool):
    """``(part, n)`` for consecutive parts of ``size`` rows of ``batch``: ``n`` rows are real; with
    ``pad`` a short last part is zero-padded to ``size`` rows, so that every forward pass has one
    shape and cuDNN's autotuner measures its algorithms once."""
    for start in range(0, len(batch), size):
        part = batch[start:start + size]
        n = len(part)
        if pad and n < size:
            part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
            part = part.contiguous(memory_format=torch.channels_last) if part.dim() == 4 else part
        yield part, n


@contextmanager
def _cudnn_autotuning(enabled: bool):
    """``torch.backends.cudnn.benchmark`` on within the context when ``enabled`` and torch is not
    held to deterministic algorithms; the previous setting is restored on exit."""
    previous = torch.backends.cudnn.benchmark
    if enabled and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


#: The method's step between tile starts, in frames; a model of shorter tiles steps by its tile.
DEFAULT_TILE_STEP = 64


def check_tile_step(step: int, tile_frames: int) -> int:
    """``step`` if it is a valid tile step for tiles of ``tile_frames`` frames; else a
    ``FreesoundError`` saying why (a longer step would leave frames between tiles unseen)."""
    if not 1 <= step <= tile_frames:
        raise FreesoundError(f"tile step {step} must be between 1 and the models' tile length of {tile_frames} "
                             "frames, or frames between the tiles go unseen")
    return step


def checkpoint_input_config(checkpoint: dict, path) -> InputConfig:
    """The network input a checkpoint's model takes (its ``network_input``; absent in checkpoints
    from before it was recorded and in imported ones: the method's 3 planes).

    Raises
    ------
    FreesoundError
        ``network_input`` has an unknown key, or the model's ``in_channels`` (default 3) is not the
        input's plane count.
    """
    try:
        input_config = InputConfig.from_dict(checkpoint.get("network_input"))
    except (TypeError, ValueError) as error:
        raise FreesoundError(f"{path}: bad network_input ({error})") from None
    in_channels = checkpoint["model_params"].get("in_channels", 3)
    if in_channels != input_config.channels:
        raise FreesoundError(f"{path}: the model takes {in_channels} input planes but its network input has "
                             f"{input_config.channels} ({input_config.to_dict()})")
    return input_config


def agreeing_checkpoints(paths) -> tuple:
    """Check that the checkpoints at ``paths`` (one experiment's folds) can be combined: the same
    classes and the same network input, each model's ``in_channels`` that input's plane count.

    Returns
    -------
    (the first checkpoint's dict, its InputConfig)

    Raises
    ------
    FreesoundError
        No path, or a checkpoint that disagrees with the first (named, with what differs).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise FreesoundError("no checkpoints given")
    first = load_checkpoint(paths[0])
    input_config = checkpoint_input_config(first, paths[0])
    for path in paths[1:]:
        checkpoint = load_checkpoint(path)
        if list(checkpoint["classes"]) != list(first["classes"]):
            raise FreesoundError(f"{path} predicts other classes than {paths[0]}")
        if checkpoint_input_config(checkpoint, path) != input_config:
            raise FreesoundError(f"{path} was trained on another network input than {paths[0]} "
                                 f"({checkpoint.get('network_input', {})} against {first.get('network_input', {})})")
    return first, input_config


class Tagger:
    """Predicts clip-level class probabilities with one or more models.

    Parameters
    ----------
    models : list of nn.Module, first-level models returning a tuple whose first item is the main
        head's logits ``(B, C)``
    classes : sequence of str, C class names
    tile_step : int, frames between tile starts, at most the models' tile length
        (``input_config.tile_frames``); default ``DEFAULT_TILE_STEP``, or the tile length where
        that is shorter
    device : str or torch.device, where the models run: each runs as an inference copy there
        (``_inference_model``), and the caller's modules stay where they are
    batch_size : int, tiles per forward pass (tiles of many clips share a batch)
    audio_config : AudioConfig used by ``predict_files``
    workers : int, DataLoader workers decoding audio in ``predict_files``
    precision : "fp16" (fp16 autocast) or "fp32", the arithmetic on CUDA; other devices run fp32
    runtime : "torch" (default), "auto", "onnxruntime" or "openvino": what runs the models on a CPU
        (``freesound.predict.runtimes``; "auto" is an installed ONNX runtime, else torch; CUDA runs
        torch). An ONNX runtime runs each model exported once, with torch's thread count.
    input_config : InputConfig, the network input the models were trained on (default: the
        method's log-mel, delta and delta-delta in 256-frame tiles); ``from_checkpoints`` reads it
        from the checkpoints

    Raises
    ------
    FreesoundError
        An unknown runtime, one asked for by name that is not installed, or a ``tile_step`` longer
        than the tile.
    """

    def __init__(self, models, classes, tile_step: int | None = None, device="cpu", batch_size: int = 64,
                 audio_config: AudioConfig | None = None, workers: int = 0, precision: str = "fp16",
                 runtime: str = "torch", input_config: InputConfig | None = None):
        self.device = torch.device(device)
        self.runtime = resolve_runtime(runtime, self.device)
        self.models = list(models)
        if not self.models:
            raise ValueError("a Tagger needs at least one model")
        self.classes = list(classes)
        self.input_config = input_config or InputConfig()
        tile = self.input_config.tile_frames
        self.tile_step = min(DEFAULT_TILE_STEP, tile) if tile_step is None else check_tile_step(tile_step, tile)
        self.batch_size = batch_size
        self.audio_config = audio_config or AudioConfig()
        self.workers = workers
        self.precision = check_precision(precision)
        self._inference_models = {}  # inference copies on self.device, see _inference_model

    @property
    def front_end(self) -> AudioConfig:
        """What each clip is decoded with (``freesound.predict.files.predict_files``)."""
        return self.audio_config

    @classmethod
    def from_checkpoints(cls, paths, **kwargs) -> "Tagger":
        """Load checkpoints written by training or the argus importer; they must agree on classes
        and on the network input (``network_input``; absent: the method's 3 planes), and each
        model's ``in_channels`` must be that input's plane count."""
        paths = [Path(p) for p in paths]
        first, input_config = agreeing_checkpoints(paths)
        kwargs.setdefault("audio_config", AudioConfig.from_dict(first.get("audio_config") or {}))
        kwargs.setdefault("input_config", input_config)
        models = [load_model(path) for path in paths]  # on the CPU: the Tagger copies them to its device
        return cls(models, first["classes"], **kwargs)

    @classmethod
    def from_experiment(cls, directory, folds=None, required=None, **kwargs) -> "Tagger":
        """Every ``fold_<k>/model.pt`` of a trained (or imported) experiment directory (see
        ``experiment_checkpoints`` for ``folds`` and ``required``)."""
        return cls.from_checkpoints(experiment_checkpoints(directory, folds, required), **kwargs)

    def subset(self, n_models: int | None = None, tile_step: int | None = None) -> "Tagger":
        """This Tagger on its first ``n_models`` models (default all) at another ``tile_step``
        (default its own; a step longer than the tile is the tile, so no frame is left out): what
        the kernel switches to when its time budget runs short.

        The models and their inference copies are shared, not copied, so a subset costs nothing
        to make and its predictions for the same models and step equal this Tagger's.
        """
        n_models = len(self.models) if n_models is None else n_models
        if not 1 <= n_models <= len(self.models):
            raise ValueError(f"a subset needs 1 to {len(self.models)} models, got {n_models}")
        other = copy.copy(self)  # shallow: the models list is replaced, the inference cache shared
        other.models = self.models[:n_models]
        other.tile_step = self.tile_step if tile_step is None else min(tile_step, self.input_config.tile_frames)
        return other

    # -- spectrograms -------------------------------------------------------------------------

    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        """Sigmoid of every model's main head on a stack of tiles: (M, T, C) float32.

        Each model runs as its inference copy on the device (batch norms folded, channels-last;
        ``_inference_model``), rebuilt whenever the model's weights change. On CUDA, under fp16
        autocast unless ``precision`` is "fp32", with cuDNN autotuning, and with a short last
        batch padded to ``batch_size`` tiles so that every batch has the same shape.
        """
        if self.runtime != "torch":
            return np.stack([self._compiled(model, tiles.shape[1:])(tiles) for model in self.models])
        outputs = []
        on_cuda = self.device.type == "cuda"
        batch = torch.from_numpy(tiles).to(self.device)
        if batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        use_amp = on_cuda and self.precision == "fp16"
        with (torch.inference_mode(), _cudnn_autotuning(on_cuda),
              torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp)):
            for model in self.models:
                runner = _inference_model(model, self.device, self._inference_models)
                probs = [torch.sigmoid(runner(part)[0][:n].float())
                         for part, n in _batches(batch, self.batch_size, pad=on_cuda)]
                outputs.append(torch.cat(probs).cpu().numpy())
        return np.stack(outputs)

    def _compiled(self, model: torch.nn.Module, tile_shape: tuple):
        """``model`` exported to this Tagger's ONNX runtime for tiles of ``tile_shape``, cached like
        the inference copies (``_inference_model``): made again when the weights change."""
        try:
            fingerprint = _weights_fingerprint(model)
        except RuntimeError:  # inference tensors carry no version counter
            fingerprint = None
        # A whole-clip model is exported once, for inputs of any number of frames.
        whole_clip = self.input_config.whole_clip
        key = ("compiled", id(model), tuple(tile_shape[:-1]) if whole_clip else tuple(tile_shape))
        entry = self._inference_models.get(key)
        if entry is None or entry[0] is not model or entry[1] != fingerprint:
            with torch.inference_mode(False):
                compiled = compile_model(model, self.runtime, torch.get_num_threads(), tuple(tile_shape),
                                         dynamic_frames=whole_clip)
            entry = self._inference_models[key] = (model, fingerprint, compiled)
        runner = entry[2]
        return lambda tiles: np.concatenate([runner(tiles[start:start + self.batch_size])
                                             for start in range(0, len(tiles), self.batch_size)])

    def _inputs(self, logmel: np.ndarray) -> np.ndarray:
        """A clip's network inputs: its tiles (``make_tiles``), or with ``[input] whole_clip`` the
        whole clip as one (``whole_clip_input``)."""
        config = self.input_config
        if config.whole_clip:
            return whole_clip_input(logmel, config.tile_frames, freq_channel=config.freq_channel)
        return make_tiles(logmel, self.tile_step, config.tile_frames, freq_channel=config.freq_channel)

    def tile_probabilities(self, logmels, *, track=None, desc: str = "predicting") -> list:
        """Per-tile probabilities of every model for every clip.

        ``track(iterable, total=..., desc=...)``, when given, wraps the clips (a caller's progress
        bar, e.g. ``functools.partial(freesound.progress.progress_bar, unit="clip")``; this layer
        stays free of tqdm, as the kernel runtime must).

        Returns
        -------
        list of np.ndarray, one per clip, float32 (n_models, n_tiles, C); n_tiles is 1 for a
        whole-clip model (``[input] whole_clip``)
        """
        # Tiles of consecutive clips queue up and run in full batches of ``batch_size``; what is
        # left over waits for the next clip's tiles, so only the very last batch can be short.
        counts, done = [], []
        queue, queued = [], 0
        if track is not None:  # a sized input gives the bar its total; otherwise ``track`` may carry one
            logmels = track(logmels, desc=desc, **({"total": len(logmels)} if hasattr(logmels, "__len__") else {}))
        if self.input_config.whole_clip:  # one input per clip, of its own length: no shared batches
            return [self._forward(self._inputs(logmel)) for logmel in logmels]
        for logmel in logmels:
            tiles = self._inputs(logmel)
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

    def predict_spectrograms(self, logmels, *, track=None, desc: str = "predicting") -> np.ndarray:
        """Clip probabilities: mean over tiles per model, geometric mean over models (``track`` and
        ``desc`` as for ``tile_probabilities``).

        Parameters
        ----------
        logmels : iterable of np.ndarray float32 (n_mels, frames)

        Returns
        -------
        np.ndarray, float32 (N, C)
        """
        clip_probs = [geometric_mean(probs.mean(axis=1))
                      for probs in self.tile_probabilities(logmels, track=track, desc=desc)]
        if not clip_probs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.stack(clip_probs)

    # -- windows in time -------------------------------------------------------------------

    def window_probabilities(self, logmels, windows: WindowSpec) -> tuple[list, list]:
        """Every model's probabilities for each window of each clip (``freesound.predict.windows``).

        A window's probability for one model is the model's usual prediction on the window's
        frames: the mean over the window's tiles (one tile when the tile covers the window) of the
        sigmoid of the main head, the window cut out of the clip's log-mel and tiled as a clip of
        its own. Windows of many clips share the model's batches.

        Parameters
        ----------
        logmels : iterable of np.ndarray float32 (n_mels, frames), whole recordings (untrimmed)
        windows : WindowSpec

        Returns
        -------
        (list of np.ndarray float32 (n_models, n_windows, C), one per clip;
         list of ``window_bounds`` lists, one per clip)
        """
        pieces, counts, bounds = [], [], []
        for logmel in logmels:
            clip_windows, clip_bounds = split_windows(logmel, windows, self.audio_config)
            pieces += clip_windows
            counts.append(len(clip_windows))
            bounds.append(clip_bounds)
        means = [probs.mean(axis=1) for probs in self.tile_probabilities(pieces)]  # each (M, C)
        edges = np.cumsum([0] + counts)
        return [np.stack(means[start:end], axis=1) for start, end in zip(edges[:-1], edges[1:])], bounds

    def predict_windows(self, logmels, windows: WindowSpec, combine: str = "gmean") -> tuple[list, list]:
        """Each clip's window probabilities, the models combined by ``combine`` (one of
        ``freesound.predict.postprocess.COMBINE``; the method's geometric mean by default).

        Returns
        -------
        (list of np.ndarray float32 (n_windows, C), one per clip; list of ``window_bounds`` lists)
        """
        probabilities, bounds = self.window_probabilities(logmels, windows)
        return [combine_models(probs, combine) for probs in probabilities], bounds

    def frame_probabilities(self, logmel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame-wise probabilities of models with ``framewise(x)`` (the SED and pooled heads of
        ``freesound.models.heads``): the sigmoid of their frame logits along the whole clip.

        The clip is cut into tiles that do not overlap (``make_tiles`` at a step of one tile, the
        padding split as for any clip); each tile's ``T'`` output frames evenly cover its frames.
        Output frames whose centre falls in the padding are left out.

        Parameters
        ----------
        logmel : np.ndarray float32 (n_mels, frames)

        Returns
        -------
        (times, probabilities): np.ndarray float64 (T,) each output frame's centre in seconds from
        the clip's start, and np.ndarray float32 (n_models, T, C)

        Raises
        ------
        FreesoundError
            A model without frame-wise output (named with the reason).
        """
        tile = self.input_config.tile_frames
        n_tiles, left, _ = tile_layout(logmel.shape[1], tile, tile)
        batch = torch.from_numpy(make_tiles(logmel, tile, tile, freq_channel=self.input_config.freq_channel))
        outputs = []
        for model in self.models:
            if not hasattr(model, "framewise"):
                raise FreesoundError(f"{type(model).__name__} has no frame-wise output; a model with a "
                                     'head = "sed" or "pooled" has')
            training = model.training
            try:
                model.eval()
                with torch.inference_mode():  # on the model's own device: the caller's module, not a copy
                    device = next(model.parameters()).device
                    frames = torch.sigmoid(model.framewise(batch.to(device))).float().cpu().numpy()  # (n_tiles, T', C)
            except ValueError as error:
                raise FreesoundError(str(error)) from None
            finally:
                model.train(training)
            outputs.append(frames.reshape(-1, frames.shape[-1]))
        per_tile = outputs[0].shape[0] // n_tiles
        span = tile / per_tile  # log-mel frames per output frame
        centres = (np.arange(n_tiles * per_tile) + 0.5) * span - left
        keep = (centres >= 0) & (centres < logmel.shape[1])
        times = centres[keep] * self.audio_config.hop_length / self.audio_config.sample_rate
        return times, np.stack([output[keep] for output in outputs])

    # -- files --------------------------------------------------------------------------------

    def predict_files(self, paths, *, on_error: str = "raise", failures: list | None = None,
                      truncated: list | None = None, track=None, names=None) -> pd.DataFrame:
        """Predict audio files.

        Parameters
        ----------
        paths : sequence of paths
        on_error : "raise" (stop at the first undecodable file), "skip" (leave its row out) or
            "silence" (predict it from a silent clip, so every file keeps its row)
        failures : list, optional; each undecodable file is appended as ``(fname, reason)``
        truncated : list, optional; each file that decodes fewer frames than its header states is
            appended as ``(fname, warning message)`` (it is predicted from what decodes)
        track : optional, counts the files as they are decoded (``iter_logmel_chunks``)
        names : sequence of str, optional; the rows' names (default: each file's name)

        Returns
        -------
        DataFrame indexed by ``fname`` with one column per class, in the input order.
        """
        return predict_files(self, paths, on_error=on_error, failures=failures, truncated=truncated, track=track,
                             names=names)

