"""Experiments as plain data: one TOML file in ``experiments/`` per experiment.

Every setting of the method lives here as a frozen dataclass, the front end's ``AudioConfig``
included, and nothing here imports NumPy, librosa or torch: reading an experiment file is cheap.

A file only states what differs from the method's defaults; ``load_experiment`` fills in the rest,
checks every key (an unknown key is an error naming the valid ones) and returns a frozen
``Experiment``. A table-valued setting (``model.params``, ``loss.curated``, ``loss.noisy``) merges
onto the value it overrides, key by key (``merge_table``): ``params = {base_size = 32}`` keeps the
method's dropout and head width. The search sets its keys through the same function.
``dump_experiment`` writes the resolved config back as TOML, the copy kept beside each trained fold.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from freesound.errors import FreesoundError


class ConfigError(FreesoundError, ValueError):
    """A bad experiment or ensemble file."""


def _from_plain_dict(cls, values: dict | None, what: str):
    """``cls(**values)`` for a frozen settings dataclass; missing keys take their defaults, an
    unknown key is a ``ValueError`` naming the valid ones (``what`` names the settings)."""
    values = dict(values or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid keys are {sorted(valid)}")
    return cls(**values)


#: ``AudioConfig.mel_scale`` and ``AudioConfig.log`` values.
MEL_SCALES = ("slaney", "kaldi")
LOG_SCALES = ("db", "offset")


@dataclass(frozen=True)
class AudioConfig:
    """The front end's numbers. Frozen so that ``key()`` can safely name a feature cache.

    Times are in seconds, frequencies in Hz, levels in dB.
    """

    sample_rate: int = 44100
    n_fft: int = 2560
    hop_length: int = 690
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 22050.0
    trim_top_db: float = 60.0
    min_seconds: float = 0.5
    ref: float = 1.0
    amin: float = 1e-10
    top_db: float = 80.0
    pad_mode: str = "reflect"
    #: Longer files are cropped to their first ``max_seconds`` (with a warning), bounding the
    #: memory and time one file can take. FSDKaggle2019 clips are at most 30 s long.
    max_seconds: float = 600.0
    # Fields added after the method's front end go here, at the end, each with the default that
    # keeps today's behaviour, and into ``_ADDED_AUDIO_DEFAULTS`` (see there).
    #: Pre-emphasis ``y[n] - preemphasis * y[n - 1]`` before the STFT (one sample shorter); 0: none.
    preemphasis: float = 0.0
    #: Window length in samples, centred in the ``n_fft`` frame and zero-padded (0: ``n_fft``).
    win_length: int = 0
    #: A periodic Hann window (librosa's, the method's); False: the symmetric one.
    periodic_window: bool = True
    #: ``"slaney"`` (librosa's Slaney scale and area norm, the method's) or ``"kaldi"``
    #: (Kaldi's triangles on the 1127 ln(1 + f / 700) scale, unnormalised, no filter at Nyquist).
    mel_scale: str = "slaney"
    #: ``"db"`` (``power_to_db`` with ``ref``, ``amin``, ``top_db``) or ``"offset"``: ``ln(mel + log_offset)``.
    log: str = "db"
    log_offset: float = 1e-5
    #: The log-mel is then ``(x + norm_shift) / norm_scale``.
    norm_shift: float = 0.0
    norm_scale: float = 1.0

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "min_seconds", "max_seconds", "amin",
                     "log_offset", "norm_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"audio {name} must be positive, got {getattr(self, name)!r}")
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"audio max_seconds ({self.max_seconds:g}) is below min_seconds ({self.min_seconds:g})")
        if not (isinstance(self.win_length, int) and 0 <= self.win_length <= self.n_fft):
            raise ValueError(f"audio win_length = {self.win_length!r} is out of range: it must be from 1 to n_fft "
                             f"({self.n_fft}), or 0 for n_fft")
        if not 0 <= self.preemphasis < 1:
            raise ValueError(f"audio preemphasis = {self.preemphasis!r} is out of range: it must be from 0 to below 1")
        for name, valid in (("mel_scale", MEL_SCALES), ("log", LOG_SCALES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"audio {name} = {getattr(self, name)!r} is not one of {', '.join(map(repr, valid))}")

    def to_dict(self) -> dict:
        """The fields as a plain dict, less each added field (``_ADDED_AUDIO_DEFAULTS``) that holds
        its default: what checkpoints, kernel manifests and ``key()`` record, so that the method's
        stay byte-identical as fields are added."""
        return {name: value for name, value in dataclasses.asdict(self).items()
                if not (name in _ADDED_AUDIO_DEFAULTS and value == _ADDED_AUDIO_DEFAULTS[name])}

    @classmethod
    def from_dict(cls, values: dict | None) -> "AudioConfig":
        """Build from a plain dict (a checkpoint's or a TOML file's); unknown keys are an error.

        Missing keys take their defaults, so checkpoints saved before a field existed still load.
        """
        return _from_plain_dict(cls, values, "audio config")

    def key(self) -> str:
        """A short hash of every field, stable across Python runs and machines."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def min_samples(self) -> int:
        return int(round(self.min_seconds * self.sample_rate))


#: Every ``AudioConfig`` field added after the method's front end, with its default (the value
#: that keeps the earlier behaviour). ``to_dict`` and ``key`` leave such a field out while it holds
#: this value, so the feature-cache keys, checkpoints and kernel manifests of every experiment
#: that does not use it stay what they were. EfficientAT's front end (``EFFICIENTAT_AUDIO``) sets them.
_ADDED_AUDIO_DEFAULTS: dict = {
    "preemphasis": 0.0, "win_length": 0, "periodic_window": True, "mel_scale": "slaney",
    "log": "db", "log_offset": 1e-5, "norm_shift": 0.0, "norm_scale": 1.0,
}

#: The method's front end.
DEFAULT_AUDIO_CONFIG = AudioConfig()

#: EfficientAT's front end (Schmid et al. 2023, ``AugmentMelSTFT`` at evaluation): 32 kHz,
#: pre-emphasis 0.97, a symmetric 800-sample Hann window in 1024-point frames every 320 samples
#: (centred, reflect-padded), power 2, 128 Kaldi mel bands from 0 to 15 kHz (their ``fmax``
#: default: half the rate less half the 2 kHz augmentation range), ``(ln(mel + 1e-5) + 4.5) / 5``.
#: No silence trimming, as the original (``trim_top_db = inf``: no frame lies infinitely far
#: below the peak); unlike it, a file shorter than ``min_seconds`` (0.5 s) is zero-padded to it,
#: and one longer than ``max_seconds`` is cropped.
EFFICIENTAT_AUDIO = {
    "sample_rate": 32000, "n_fft": 1024, "win_length": 800, "hop_length": 320, "n_mels": 128, "fmin": 0.0,
    "fmax": 15000.0, "pad_mode": "reflect", "trim_top_db": float("inf"), "preemphasis": 0.97,
    "periodic_window": False, "mel_scale": "kaldi", "log": "offset", "log_offset": 1e-5, "norm_shift": 4.5,
    "norm_scale": 5.0,
}


#: Named front ends, ``[audio] preset = "<name>"`` in an experiment file: the fields each sets
#: (the rest keep ``AudioConfig``'s defaults). ``"panns"`` is the front end of the PANNs AudioSet
#: taggers (Kong et al. 2020): 32 kHz, a 1024-point Hann STFT at hop 320, 64 Slaney mel bands
#: from 50 Hz to 14 kHz, ``10 log10(max(power, 1e-10))`` with no floor below the peak
#: (``top_db = inf``) and no silence trimming (``trim_top_db = inf``); its batch norm over the
#: mel bands (``bn0``) is part of the model (``freesound.models.panns``).
AUDIO_PRESETS: dict = {
    "panns": {"sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "n_mels": 64, "fmin": 50.0,
              "fmax": 14000.0, "trim_top_db": float("inf"), "ref": 1.0, "amin": 1e-10, "top_db": float("inf"),
              "pad_mode": "reflect"},
    "efficientat": EFFICIENTAT_AUDIO,
}


def audio_preset(name: str) -> AudioConfig:
    """The front end of ``AUDIO_PRESETS[name]``.

    Raises
    ------
    ConfigError
        No such preset (the message lists them).
    """
    if name not in AUDIO_PRESETS:
        raise ConfigError(f"unknown audio preset {name!r}; presets are {', '.join(sorted(AUDIO_PRESETS))}")
    return AudioConfig(**AUDIO_PRESETS[name])


@dataclass(frozen=True)
class ModelConfig:
    name: str = "aux_skip_attention"
    params: dict = field(default_factory=lambda: {
        "base_size": 64, "dropout": 0.4, "ratio": 16, "kernel_size": 7, "last_filters": 8, "last_fc": 4,
    })
    #: Loss weights of the heads, main head first (the model returns main, aux3, aux2, aux1).
    aux_weights: tuple = (1.0, 0.4, 0.2, 0.1)


@dataclass(frozen=True)
class LossConfig:
    """``curated`` and ``noisy`` are loss specs, e.g. ``{name = "lsoft", beta = 0.7}``."""

    curated: dict = field(default_factory=lambda: {"name": "bce"})
    noisy: dict = field(default_factory=lambda: {"name": "lsoft", "beta": 0.7})


def check_step_settings(lr: float, batch_size: int, epoch_size: int) -> None:
    """The settings every training step depends on, in range.

    Raises
    ------
    ValueError
        One sentence naming the first key out of range, its value and the valid range: ``lr`` not
        above 0, ``batch_size`` below 2 (batch norm needs two samples), or ``epoch_size`` below
        ``batch_size`` (an epoch of no step would keep the untrained model as the best).
    """
    if not lr > 0:
        raise ValueError(f"lr = {lr!r} is out of range: it must be above 0")
    if batch_size < 2:
        raise ValueError(f"batch_size = {batch_size!r} is out of range: it must be 2 or more (batch norm needs "
                         f"two samples a batch)")
    if epoch_size < batch_size:
        raise ValueError(f"epoch_size = {epoch_size!r} is out of range: it must be at least batch_size "
                         f"({batch_size}), or an epoch trains no step")


#: The metrics a run can be scored and chosen by (``freesound.metrics.METRICS``; repeated here,
#: where NumPy is not imported, and held equal to it by the tests).
METRIC_NAMES = ("lwlrap", "roc_auc", "cmap")
#: Where validation crops each held-out clip (``TrainConfig.valid_crop``).
VALID_CROPS = ("center", "first", "whole")
#: ``[train]`` keys left out of a resolved config while at their defaults, so the configs (and
#: kernel manifests) of experiments that do not use them hold what they held before these keys.
TRAIN_KEYS_OMITTED_AT_DEFAULT = ("metric", "chunk_seconds", "secondary_weight", "valid_crop")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 9e-4
    batch_size: int = 128
    #: Samples drawn per epoch (128 batches of 256 in the original).
    epoch_size: int = 128 * 256
    max_epochs: int = 700
    plateau_patience: int = 6
    plateau_factor: float = 0.6
    early_stop_patience: int = 18
    #: Mixed precision (fp16 autocast + GradScaler); only ever used on CUDA.
    amp: bool = True
    workers: int = 4
    seed: int = 42
    #: Deterministic algorithms only (torch, cuDNN, cuBLAS), for bit-exact reruns and resumes on
    #: CUDA at some cost in speed; the CPU is deterministic without it.
    deterministic: bool = False
    #: Compile the training step's model with ``torch.compile``. Off: on a CPU compiling costs
    #: more than a run of ``small`` saves (benchmarks/RESULTS.md, "Scaling");
    #: ``benchmarks/bench_scaling.py --part compile`` measures it on a GPU.
    compile: bool = False
    #: Under torchrun, batch-norm statistics over the whole batch (``torch.nn.SyncBatchNorm``;
    #: CUDA only) rather than over each process's slice of it.
    sync_batchnorm: bool = False
    #: SpecAugment, the deltas and the mixing on the training device, batch by batch, instead of
    #: in the DataLoader workers (same random draws, same images to float rounding): a worker
    #: then delivers several times the samples (benchmarks/RESULTS.md, "Scaling"), for GPUs the
    #: CPUs cannot otherwise keep busy.
    augment_on_device: bool = False
    #: The validation score that keeps the best checkpoint, drives reduce-on-plateau and early
    #: stopping: one of ``METRIC_NAMES`` (lwlrap, the method's; roc_auc or cmap for BirdCLEF).
    #: ``log.csv`` keeps ``val_lwlrap`` and adds ``val_<metric>`` for another.
    metric: str = "lwlrap"
    #: Train on random chunks of this many seconds of each clip (BirdCLEF's long, weakly labelled
    #: recordings: winners train on 5-20 s chunks), read from a memory map of the cached log-mel so
    #: that a sample of a minute-long file reads only its chunk. 0: the tile (``[input]
    #: tile_frames``), as the method does. Models that pool over time take either length.
    chunk_seconds: float = 0.0
    #: The target of a clip's secondary labels (``secondary_labels`` column of the label file,
    #: e.g. BirdCLEF's background species); its labels (the primary one) are 1. 0: ignored.
    secondary_weight: float = 0.0
    #: What validation scores of each held-out clip: ``"center"``, the middle tile (or chunk);
    #: ``"first"``, the first (where a recordist centres the primary species: BirdCLEF practice);
    #: ``"whole"``, the whole file in one pass (one clip a batch).
    valid_crop: str = "center"

    def __post_init__(self):
        check_step_settings(self.lr, self.batch_size, self.epoch_size)
        if self.chunk_seconds < 0:
            raise ValueError(f"chunk_seconds = {self.chunk_seconds!r} is out of range: 0 (the tile) or more seconds")
        if not 0.0 <= self.secondary_weight <= 1.0:
            raise ValueError(f"secondary_weight = {self.secondary_weight!r} is out of range: it must be in [0, 1]")
        if self.valid_crop not in VALID_CROPS:
            raise ValueError(f"valid_crop must be one of {', '.join(VALID_CROPS)}, got {self.valid_crop!r}")
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"metric = {self.metric!r} is not a metric; choose from {', '.join(METRIC_NAMES)}")


@dataclass(frozen=True)
class SamplingConfig:
    """Probabilities of drawing a training sample from each source (renormalised over the
    sources that have clips)."""

    curated: float = 0.57
    corrected_noisy: float = 0.42
    noisy: float = 0.01

    def __post_init__(self):
        shares = dataclasses.asdict(self)
        for name, share in shares.items():
            if share < 0:
                raise ValueError(f"{name} = {share!r} is out of range: a sampling share must be 0 or more")
        if not sum(shares.values()) > 0:
            raise ValueError(f"every sampling share is 0 ({', '.join(shares)}): at least one must be above 0")


@dataclass(frozen=True)
class TransformConfig:
    #: The training crop: always the experiment's tile length, ``[input] tile_frames`` (an
    #: ``Experiment`` sets it; not an argument). ``[transforms] crop`` in a file is read as that
    #: setting's older name.
    crop: int = field(default=256, init=False, compare=False)
    resized_crop_prob: float = 0.33
    spec_augment_prob: float = 0.5
    #: Frequency warping (the upb team's, FAT2019 5th place): a piecewise-linear stretch of the mel
    #: axis by a factor U(1 - freq_warp_max, 1 + freq_warp_max), applied with this probability
    #: (``freesound.training.augment.FrequencyWarp``). Off in the method.
    freq_warp_prob: float = 0.0
    freq_warp_max: float = 0.2


@dataclass(frozen=True)
class MixerConfig:
    prob: float = 0.8
    sigmoid_concat: float = 0.6
    add: float = 0.4
    #: SpecMix's share of the mixes (Kim et al., Interspeech 2021; FAT2019 8th place); with it,
    #: ``sigmoid_concat + add + specmix`` must be 1. Off in the method.
    specmix: float = 0.0

    def __post_init__(self):
        shares = {"sigmoid_concat": self.sigmoid_concat, "add": self.add, "specmix": self.specmix}
        if min(shares.values()) < 0 or abs(sum(shares.values()) - 1.0) > 1e-6:
            raise ValueError("the mixers' shares sigmoid_concat + add + specmix must be non-negative and sum to 1, "
                             f"got {' + '.join(f'{v:g}' for v in shares.values())} = {sum(shares.values()):g} "
                             "(the method's are 0.6 and 0.4: lower them when raising specmix)")


#: The shortest tile: the deltas' Savitzky-Golay filter spans 9 frames
#: (``freesound.audio.network_input.DELTA_WIDTH``; this module imports no NumPy).
MIN_TILE_FRAMES = 9


@dataclass(frozen=True)
class InputConfig:
    """What the network sees beside the log-mel window and its two deltas (``[input]``).

    Recorded in every checkpoint (``network_input``) so that prediction builds the same input.
    """

    #: A fourth input plane holding each row's mel band position, linearly from -1 (the lowest
    #: band) to 1 (the highest), the same in every frame (CoordConv, Liu et al. 2018; FAT2019
    #: 3rd place). Off in the method.
    freq_channel: bool = False
    #: Frames of a tile: the training crop and the prediction tile (the method's 256, ~4 s). A
    #: short-clip dataset trains faster on shorter tiles (benchmarks/RESULTS.md, "Tile length").
    tile_frames: int = 256
    #: Predict a whole clip in one pass, as the AudioSet taggers do (``freesound.predict.tiles.
    #: whole_clip_input``), instead of 256-frame tiles at a step: the network sees the clip's whole
    #: log-mel (a clip shorter than ``tile_frames`` padded to it as a tile is), one "tile" per clip.
    #: Training still crops ``tile_frames``.
    whole_clip: bool = False

    def __post_init__(self):
        if not (isinstance(self.tile_frames, int) and self.tile_frames >= MIN_TILE_FRAMES):
            raise ValueError(f"tile_frames = {self.tile_frames!r} is out of range: a tile needs at least "
                             f"{MIN_TILE_FRAMES} frames (the deltas' filter width)")

    @property
    def channels(self) -> int:
        """Input planes: log-mel, delta, delta-delta, and the frequency position if on."""
        return 4 if self.freq_channel else 3

    def to_dict(self) -> dict:
        """The settings as a checkpoint records them (``network_input``); the method's tile length
        and ``whole_clip = false`` are left out, so the checkpoints of method-shaped experiments
        hold what they held before those fields existed (``from_dict`` reads their absence as the
        defaults)."""
        values = dataclasses.asdict(self)
        for name in ("tile_frames", "whole_clip"):  # fields added after the method's input
            if values[name] == getattr(InputConfig, name):
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict | None) -> "InputConfig":
        """From a checkpoint's ``network_input`` (missing: the method's 3-plane input); unknown
        keys are a ``ValueError`` naming the valid ones."""
        return _from_plain_dict(cls, values, "network input")


@dataclass(frozen=True)
class DataConfig:
    """Corrections files (paths relative to the experiment file), empty for none."""

    corrections: str = ""
    noisy_corrections: str = ""


AVERAGING_METHODS = ("none", "swa", "ema")


@dataclass(frozen=True)
class AveragingConfig:
    """Weight averaging (``[averaging]``): the averaged model is the one validated, checkpointed
    and kept in the resumable state.

    ``"swa"``: stochastic weight averaging (Izmailov et al., 2018), the equal-weight mean of the
    weights at the end of every epoch from ``swa_start`` on, its batch-norm statistics recomputed
    over ``bn_batches`` training batches before it is validated; only models averaged from
    ``swa_start`` on compete for the checkpoint. ``"ema"``: an exponential moving average of the
    weights and batch-norm statistics, ``avg <- ema_decay * avg + (1 - ema_decay) * w`` after
    every optimiser step, validated and checkpointed from the first epoch.
    """

    method: str = "none"
    #: The first epoch (1-based) whose end-of-epoch weights enter the SWA average.
    swa_start: int = 1
    #: Training batches the SWA model's batch-norm statistics are recomputed over (0: one epoch's).
    bn_batches: int = 0
    ema_decay: float = 0.999

    def __post_init__(self):
        if self.method not in AVERAGING_METHODS:
            raise ValueError(f"method must be one of {', '.join(AVERAGING_METHODS)}, got {self.method!r}")
        if self.swa_start < 1:
            raise ValueError(f"swa_start must be an epoch number (1 or more), got {self.swa_start}")
        if self.bn_batches < 0:
            raise ValueError(f"bn_batches must be 0 (one epoch) or more, got {self.bn_batches}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1, got {self.ema_decay}")


#: The training sources soft targets may apply to (``SamplingConfig``'s fields).
TARGET_SOURCES = ("curated", "corrected_noisy", "noisy")


@dataclass(frozen=True)
class TargetsConfig:
    """Soft targets from an earlier model's predictions (off while ``teacher`` is empty).

    A clip of one of ``sources`` trains on ``(1 - weight) * labels + weight * p``, where ``p`` is
    the ``teacher``'s (an experiment's or an ensemble's) probability: its out-of-fold prediction
    for a curated clip, its fold models' geometric mean for a noisy one
    (``freesound.training.teacher``). Soft pseudo-labels for noisy clips are the 4th place's
    method in Freesound Audio Tagging 2019; ``freesound distill`` uses them for every source.
    """

    teacher: str = ""
    sources: tuple = ("noisy",)
    weight: float = 0.5

    def __post_init__(self):
        unknown = sorted(set(self.sources) - set(TARGET_SOURCES))
        if unknown:
            raise ValueError(f"sources {unknown} are not training sources; choose from {list(TARGET_SOURCES)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher) and bool(self.sources) and self.weight > 0


@dataclass(frozen=True)
class PretrainedConfig:
    """Start every fold from another experiment's checkpoint of the same fold (off while empty).

    Noisy pretraining then curated fine-tuning (7th place of Freesound Audio Tagging 2019): the
    pretraining experiment samples only noisy clips, and this one starts from its weights. The
    models must match (name, parameters and classes).

    ``weights`` instead starts every fold from a released checkpoint file (a path, relative to the
    experiment file's folder), e.g. PANNs' ``Cnn14_mAP=0.431.pth`` for ``[model] name =
    "panns_cnn14"``: the model takes it as its ``pretrained`` parameter, converts and checks it,
    and keeps a new head for the dataset's classes. A start-only setting: the trained checkpoints
    hold every weight, and ``load_model`` and the kernels never read the file.
    """

    experiment: str = ""
    weights: str = ""

    def __post_init__(self):
        if self.experiment and self.weights:
            raise ValueError("experiment and weights both name where the folds start; set one of them")


#: Where a student's pseudo-labels come from (``SelfTrainingConfig.teacher_folds``).
TEACHER_FOLDS = ("all", "same")


@dataclass(frozen=True)
class SelfTrainingConfig:
    """Pseudo-labelled unlabelled clips as a training source (``[self_training]``; off while
    ``teacher`` is empty): a round of ``freesound self-train`` (``freesound.training.self_training``).

    The ``teacher`` (a trained experiment, the previous round) predicts every clip of the
    unlabelled pool: its fold models' geometric mean (``teacher_folds = "all"``), or, for fold
    ``k``, its fold-``k`` model alone (``"same"``: no fold's student then learns anything from its
    validation clips' labels, even through a pseudo-label). The probabilities ``p`` become soft
    targets ``p ** power`` (``freesound.training.pseudo_labels.sharpen``); clips whose highest
    probability is below ``floor`` are left out. The pool is a sampling source of its own with
    ``share`` (beside ``[sampling]``'s, renormalised with them), and with ``mix_prob`` a training
    sample is mixed with a pseudo-labelled clip, ``(1 - mix_weight) * x + mix_weight * x_pseudo``,
    its target the elementwise maximum of the two (noisy student; BirdCLEF 2025's winner mixed
    every sample half and half with a pseudo-labelled soundscape).

    ``noise``, ``warm_start`` and ``warm_epochs`` shape the rounds ``self-train`` derives from this
    experiment: ``noise`` is laid over the experiment's tables for every round from 1 on
    (``merge_table``; e.g. ``{ model = { params = { dropout = 0.3 } } }``: stronger dropout or
    augmentation for the student); ``warm_start`` starts each round's folds from the previous
    round's weights (``[pretrained]``), trained for ``warm_epochs`` epochs (0: ``max_epochs``),
    from round ``warm_from_round`` on (earlier rounds train from scratch).
    """

    teacher: str = ""
    teacher_folds: str = "all"
    #: The pool's folder; empty: the dataset's ``train_unlabeled/`` (``train_unlabeled.csv``).
    unlabeled: str = ""
    power: float = 1.0
    floor: float = 0.0
    share: float = 0.3
    mix_prob: float = 0.0
    mix_weight: float = 0.5
    noise: dict = field(default_factory=dict)
    warm_start: bool = False
    warm_epochs: int = 0
    warm_from_round: int = 1

    def __post_init__(self):
        if self.teacher_folds not in TEACHER_FOLDS:
            raise ValueError(f"teacher_folds must be one of {', '.join(TEACHER_FOLDS)}, got {self.teacher_folds!r}")
        if not self.power > 0:
            raise ValueError(f"power = {self.power!r} is out of range: it must be above 0 (1 keeps the probabilities)")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"floor = {self.floor!r} is out of range: it must be in [0, 1)")
        if self.share < 0:
            raise ValueError(f"share = {self.share!r} is out of range: a sampling share must be 0 or more")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(f"mix_prob = {self.mix_prob!r} is out of range: it must be in [0, 1]")
        if not 0.0 < self.mix_weight < 1.0:
            raise ValueError(f"mix_weight = {self.mix_weight!r} is out of range: it must be in (0, 1)")
        if self.warm_epochs < 0:
            raise ValueError(f"warm_epochs = {self.warm_epochs!r} is out of range: 0 (max_epochs) or more")
        if self.warm_from_round < 1:
            raise ValueError(f"warm_from_round = {self.warm_from_round!r} is out of range: round 1 or later "
                             "(round 0 has no earlier round to start from)")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher) and (self.share > 0 or self.mix_prob > 0)


#: The experiment trackers a run can log to (``freesound.training.tracking``).
TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers every fold logs to (``[tracking]``; none by default).

    Each fold is one run, named ``fold_<k>`` and grouped under the experiment's name: its settings,
    each epoch's losses, val lwlrap, learning rate and samples per second, and its best score
    (``freesound.training.tracking``). ``uri`` is MLflow's tracking URI (a server's
    ``http://host:port`` or a store); empty: a local store under the work folder.
    """

    trackers: tuple = ()
    uri: str = ""

    def __post_init__(self):
        unknown = [name for name in self.trackers if name not in TRACKERS]
        if unknown:
            raise ValueError(f"trackers {unknown} are not trackers; choose from {list(TRACKERS)}")
        if len(set(self.trackers)) != len(self.trackers):
            raise ValueError(f"trackers {list(self.trackers)} names a tracker twice")
        if self.uri and "mlflow" not in self.trackers:
            raise ValueError("uri is MLflow's tracking URI: add \"mlflow\" to trackers, or leave uri out")


@dataclass(frozen=True)
class Experiment:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    mixers: MixerConfig = field(default_factory=MixerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    input: InputConfig = field(default_factory=InputConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    #: The folder of the TOML file, for resolving relative paths ("" when built in code).
    source_dir: str = ""

    def __post_init__(self):
        # The training crop is the tile length, one setting: ``transforms.crop`` follows it, on a
        # copy (a replaced Experiment shares its tables with the one it came from).
        if self.transforms.crop != self.input.tile_frames:
            transforms = dataclasses.replace(self.transforms)
            object.__setattr__(transforms, "crop", self.input.tile_frames)
            object.__setattr__(self, "transforms", transforms)
        if self.chunk_frames < MIN_TILE_FRAMES:
            raise ValueError(f"[train] chunk_seconds = {self.train.chunk_seconds!r} is {self.chunk_frames} log-mel "
                             f"frames; a chunk needs at least {MIN_TILE_FRAMES} (the deltas' filter width)")

    @property
    def chunk_frames(self) -> int:
        """Frames of a training sample: the log-mel frames of ``[train] chunk_seconds`` of audio
        (``1 + samples // hop_length``, as a centred STFT of a file that long gives), or the tile
        (``[input] tile_frames``) when it is 0."""
        if not self.train.chunk_seconds:
            return self.input.tile_frames
        return 1 + int(round(self.train.chunk_seconds * self.audio.sample_rate)) // self.audio.hop_length

    def resolve_path(self, value: str) -> Path | None:
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else Path(self.source_dir or ".") / path

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values.pop("source_dir")
        values["transforms"].pop("crop")  # ``input.tile_frames`` states it
        for key in TRAIN_KEYS_OMITTED_AT_DEFAULT:
            if values["train"][key] == getattr(TrainConfig, key):
                del values["train"][key]
        if self.self_training.warm_from_round == SelfTrainingConfig.warm_from_round:  # configs as before it
            del values["self_training"]["warm_from_round"]
        values["audio"] = self.audio.to_dict()  # the added fields only where they are set
        return values


def with_trackers(experiment: Experiment, trackers=(), uri: str = "") -> Experiment:
    """``experiment`` also tracked by ``trackers`` (``train --track``, added to its ``[tracking]``
    ones), with MLflow's ``uri`` when given (``--tracking-uri``, over the file's).

    Raises
    ------
    ConfigError
        An unknown tracker, or a ``uri`` without MLflow among the trackers.
    """
    config = experiment.tracking
    names = tuple(dict.fromkeys((*config.trackers, *trackers)))
    try:
        tracking = TrackingConfig(names, uri or config.uri)
    except ValueError as error:
        raise ConfigError(f"experiment {experiment.name!r} [tracking]: {error}") from None
    return dataclasses.replace(experiment, tracking=tracking)


def merge_table(base: dict, value: dict) -> dict:
    """A table-valued setting ``value`` laid over the table ``base`` it overrides.

    Keys of ``value`` replace those of ``base`` (nested tables merge the same way); keys it does
    not state keep ``base``'s. A ``value`` naming another ``name`` than ``base`` (another loss)
    replaces it whole: the other loss's parameters are not ``base``'s. The one rule for experiment
    files (over the method's defaults) and search trials (over the searched experiment).

    Examples
    --------
    >>> merge_table({"name": "lsoft", "beta": 0.7}, {"beta": 0.5})
    {'name': 'lsoft', 'beta': 0.5}
    >>> merge_table({"name": "lsoft", "beta": 0.7}, {"name": "lq", "q": 0.5})
    {'name': 'lq', 'q': 0.5}
    """
    if value.get("name", base.get("name")) != base.get("name"):
        return dict(value)
    merged = dict(base)
    for key, item in value.items():
        nested = isinstance(item, dict) and isinstance(base.get(key), dict)
        merged[key] = merge_table(base[key], item) if nested else item
    return merged


def _build(cls, values: dict, where: str):
    """Instantiate a config dataclass from a dict, recursing into nested sections.

    Table-valued settings merge onto the defaults (``merge_table``), except in a section that
    names another model than the default's (``[model] name``): its ``params`` are that model's own.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_dir"}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(fields))}")
    defaults = cls()
    renamed = "name" in values and values["name"] != getattr(defaults, "name", values["name"])
    kwargs = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, _section(where, name))
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            kwargs[name] = float(value)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{_key(where, name)}: expected a table, got {value!r}")
            kwargs[name] = dict(value) if renamed else merge_table(default, value)
        elif type(value) is type(default):
            kwargs[name] = value
        else:
            raise ConfigError(f"{_key(where, name)}: expected {type(default).__name__}, got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as error:  # a section's own range checks (e.g. AudioConfig's)
        raise ConfigError(f"{where}: {error}" if where else str(error)) from error


def _section(where: str, name: str) -> str:
    """Where a key or table sits, for messages: ``exp.toml [train]``, ``exp.toml [model.params]``
    (a file's tables in TOML's own notation), or dotted below a label that is not a file."""
    if not where:
        return name
    if where.endswith("]"):
        return f"{where[:-1]}.{name}]"
    if where.endswith(".toml"):
        return f"{where} [{name}]"
    return f"{where}.{name}"


def _key(where: str, name: str) -> str:
    """A key of the table ``where`` (``_section``), for messages: ``exp.toml [train] lr``."""
    if where.endswith(("]", ".toml")):
        return f"{where} {name}"
    return f"{where}.{name}" if where else name


def _crop_as_tile_frames(values: dict, where: str) -> dict:
    """``values`` with a ``[transforms] crop`` (the older name of ``[input] tile_frames``, in
    files and fold configs written before it) moved to ``[input] tile_frames``.

    Raises
    ------
    ConfigError
        Both are stated and differ.
    """
    transforms = values.get("transforms")
    if not (isinstance(transforms, dict) and "crop" in transforms):
        return values
    transforms = dict(transforms)
    crop = transforms.pop("crop")
    inputs = dict(values.get("input") or {})
    if inputs.setdefault("tile_frames", crop) != crop:
        raise ConfigError(f"{_key(_section(where, 'transforms'), 'crop')} = {crop!r} and "
                          f"{_key(_section(where, 'input'), 'tile_frames')} = {inputs['tile_frames']!r} disagree: "
                          "crop is the older name of tile_frames, state tile_frames only")
    return {**values, "transforms": transforms, "input": inputs}


def _expand_audio_preset(values: dict, where: str) -> dict:
    """``values`` with an ``[audio] preset = "<name>"`` replaced by the preset's fields
    (``AUDIO_PRESETS``); fields the table states beside it override the preset's (a longer
    ``max_seconds``, say; a changed STFT or mel setting no longer matches the weights the preset
    was made for, which ``import-weights`` and ``[pretrained] weights`` check).

    Raises
    ------
    ConfigError
        The preset is not a string or not a preset (the message lists them).
    """
    audio = values.get("audio")
    if not (isinstance(audio, dict) and "preset" in audio):
        return values
    audio = dict(audio)
    preset = audio.pop("preset")
    if not isinstance(preset, str) or preset not in AUDIO_PRESETS:
        raise ConfigError(f"{_key(_section(where, 'audio'), 'preset')} = {preset!r} is not an audio preset; "
                          f"presets are {', '.join(sorted(AUDIO_PRESETS))}")
    return {**values, "audio": {**AUDIO_PRESETS[preset], **audio}}


def experiment_from_dict(values: dict, *, name: str = "default", source_dir: str = "", where: str = "") -> Experiment:
    values = _expand_audio_preset(_crop_as_tile_frames(dict(values), where), where)
    values.setdefault("name", name)
    experiment = _build(Experiment, values, where)
    return dataclasses.replace(experiment, source_dir=source_dir)


def presets_dir() -> Path:
    """The method's own experiment and ensemble files, shipped inside the package.

    An installed wheel holds them in ``freesound/presets/``: ``setup.py`` maps the repository's
    ``experiments/`` folder onto that package folder, so every TOML file there ships. A source
    checkout or an editable install has no ``presets/`` and uses ``experiments/`` beside the
    package itself.
    """
    package = Path(__file__).resolve().parent
    installed = package / "presets"
    checkout = package.parent / "experiments"
    if not installed.is_dir() and (package.parent / "setup.py").is_file() and checkout.is_dir():
        return checkout
    return installed


def _toml_stems(folder: Path) -> list:
    return sorted(path.stem for path in Path(folder).glob("*.toml"))


def find_experiment_file(spec, experiments_dir="experiments") -> Path:
    """Resolve an experiment or ensemble name (or path) to its TOML file.

    A path to a ``.toml`` file (or any existing file) is taken as is; a name is looked up as
    ``<experiments_dir>/<name>.toml`` first, then among the presets (``presets_dir()``), so a
    user's own file of a preset's name takes its place.

    Raises
    ------
    ConfigError
        No such file; the message lists the names known in both places.
    """
    path = Path(spec)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"experiment file {path} not found")
        return path
    for folder in (Path(experiments_dir), presets_dir()):
        candidate = folder / f"{spec}.toml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"unknown experiment {spec!r}; known in {experiments_dir}/: {', '.join(_toml_stems(experiments_dir)) or 'none'}; "
        f"presets: {', '.join(_toml_stems(presets_dir())) or 'none'} (freesound experiments lists them)"
    )


@dataclass(frozen=True)
class ExperimentFile:
    """One name ``find_experiment_file`` can resolve, and where it comes from."""

    name: str
    #: ``"experiment"``, ``"ensemble"``, or ``"unreadable"`` (not UTF-8 or not TOML: ``problem`` says)
    kind: str
    path: Path
    #: ``"experiments folder"`` (the user's ``--experiments``) or ``"preset"`` (shipped with the package)
    source: str
    #: A preset hidden by the user's file of the same name (that file is used instead).
    overridden: bool = False
    #: Why the file cannot be read, for kind ``"unreadable"``.
    problem: str = ""


def available_experiments(experiments_dir="experiments") -> list:
    """Every experiment and ensemble name available, the user's folder first, then the presets.

    A preset that a file in ``experiments_dir`` overrides is listed too, marked ``overridden``.
    When ``experiments_dir`` is the presets folder itself (a source checkout's ``experiments/``),
    its files are listed once, as presets.

    Returns
    -------
    list of ExperimentFile, sorted by name, the file in use before an overridden preset; a file
    that cannot be read is listed as ``"unreadable"`` with the reason, so one bad file does not
    hide the others
    """
    presets = presets_dir()
    folders = [(presets, "preset")]
    if not (Path(experiments_dir).is_dir() and presets.is_dir() and Path(experiments_dir).samefile(presets)):
        folders.insert(0, (Path(experiments_dir), "experiments folder"))
    found, seen = [], set()
    for folder, source in folders:
        for path in sorted(Path(folder).glob("*.toml")):
            try:
                kind, problem = "ensemble" if is_ensemble_file(path) else "experiment", ""
            except ConfigError as error:
                kind, problem = "unreadable", str(error).removeprefix(f"{path}: ")
            found.append(ExperimentFile(path.stem, kind, path, source, overridden=path.stem in seen, problem=problem))
            seen.add(path.stem)
    return sorted(found, key=lambda entry: (entry.name, entry.overridden))


def read_toml(path) -> dict:
    """A TOML file's tables; the file is UTF-8, with or without a byte-order mark (Windows editors
    write one).

    Raises
    ------
    ConfigError
        The file cannot be read, is UTF-16 or otherwise not UTF-8 (saying to save it as UTF-8),
        or is not valid TOML.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    # TOML forbids NUL, so NUL bytes mean two-byte characters: UTF-16 (Notepad's "Unicode").
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        raise ConfigError(f"{path}: UTF-16 text; TOML files are UTF-8, save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); "
                          "save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def load_experiment(spec, experiments_dir="experiments") -> Experiment:
    """Read an experiment by name or path, filling defaults and checking every key."""
    path = find_experiment_file(spec, experiments_dir)
    return experiment_from_dict(read_toml(path), name=path.stem, source_dir=str(path.parent), where=str(path))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(values: dict) -> str:
    """Write a two-level dict (scalars at the top, then tables of scalars) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for section, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def dump_experiment(experiment: Experiment) -> str:
    return dump_toml(experiment.to_dict())


@dataclass(frozen=True)
class StackerConfig:
    """An ``FCNet`` stacker trained on out-of-fold tile probabilities."""

    name: str = "stacker"
    base_size: int = 64
    reduction_scale: int = 8
    p_dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 64
    #: Samples drawn per epoch (random tile subsets of random training clips).
    epoch_size: int = 2048
    max_epochs: int = 100
    plateau_patience: int = 5
    plateau_factor: float = 0.6
    early_stop_patience: int = 12
    seed: int = 42

    def __post_init__(self):
        check_step_settings(self.lr, self.batch_size, self.epoch_size)


@dataclass(frozen=True)
class EnsembleConfig:
    """First-level experiments (stacked in this order), stackers, and their geometric-mean blend."""

    name: str
    experiments: tuple
    stackers: tuple = ()

    def stacker_dir_name(self, stacker: StackerConfig) -> str:
        """Stackers are stored beside experiments as ``<ensemble>_<stacker>``."""
        return f"{self.name}_{stacker.name}"


def stacker_from_dict(values: dict, *, where: str = "stacker") -> StackerConfig:
    """A ``StackerConfig`` from a table; unknown keys are a ``ConfigError`` naming the valid ones."""
    return _build(StackerConfig, values, where)


def is_ensemble_file(path) -> bool:
    return is_ensemble_table(read_toml(path))


def is_ensemble_table(values: dict) -> bool:
    """Whether a TOML file's contents are an ensemble (it lists ``experiments``)."""
    return "experiments" in values


def load_ensemble(spec, experiments_dir="experiments") -> EnsembleConfig:
    """Read an ensemble file: ``experiments = [...]`` and ``[[stackers]]`` tables."""
    path = find_experiment_file(spec, experiments_dir)
    return ensemble_from_dict(read_toml(path), path)


def load_config(spec, experiments_dir="experiments") -> Experiment | EnsembleConfig:
    """Read a name or path once, as what it is: an ensemble file or an experiment.

    This is where a command's ``EXPERIMENT|ENSEMBLE`` argument is resolved; what it returns is
    passed down, never looked up again.
    """
    path = find_experiment_file(spec, experiments_dir)
    values = read_toml(path)
    if is_ensemble_table(values):
        return ensemble_from_dict(values, path)
    return experiment_from_dict(values, name=path.stem, source_dir=str(path.parent), where=str(path))


def trained_experiment_name(spec) -> str:
    """The trained experiment a ``--experiment`` value names (``tag``, ``listen``).

    A path to an experiment file (as ``find_experiment_file`` takes one: a ``.toml`` or an
    existing file) is read and its experiment's name returned; anything else is the name as
    given, since a trained or imported experiment under ``<work>/experiments/`` needs no file.

    Raises
    ------
    ConfigError
        The file is missing, is not a valid experiment, or is an ensemble.
    """
    path = Path(spec)
    if not (path.suffix == ".toml" or path.is_file()):
        return str(spec)
    config = load_config(path)
    if isinstance(config, EnsembleConfig):
        raise ConfigError(f"{path} is an ensemble; --experiment takes one experiment (its name or TOML file)")
    return config.name


def ensemble_from_dict(values: dict, path) -> EnsembleConfig:
    """An ``EnsembleConfig`` from an ensemble file's contents (``path`` names it in errors and,
    by its stem, names the ensemble unless the file sets ``name``)."""
    path = Path(path)
    unknown = sorted(set(values) - {"experiments", "stackers", "name"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys are experiments, name, stackers")
    experiments = values.get("experiments")
    if not isinstance(experiments, list) or not experiments or not all(isinstance(e, str) for e in experiments):
        raise ConfigError(f"{path}: 'experiments' must be a non-empty list of experiment names")
    stackers = tuple(stacker_from_dict(table, where=f"{path}: stackers[{i}]")
                     for i, table in enumerate(values.get("stackers", [])))
    names = [s.name for s in stackers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: stacker names must be unique, got {names}")
    return EnsembleConfig(name=values.get("name", path.stem), experiments=tuple(experiments), stackers=stackers)


def dump_ensemble(experiments, stackers=(), header: str = "") -> str:
    """An ensemble file (the ``load_ensemble`` format) as TOML text.

    Parameters
    ----------
    experiments : sequence of str, first-level experiments in stacking order
    stackers : sequence of ``StackerConfig``, written in full as ``[[stackers]]`` tables
    header : comment lines put first (without the ``#``)
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    text = "\n".join(lines) + ("\n" if lines else "") + dump_toml({"experiments": list(experiments)})
    for stacker in stackers:
        text += "\n[[stackers]]\n" + dump_toml(dataclasses.asdict(stacker))
    return text
