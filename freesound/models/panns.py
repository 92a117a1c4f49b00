"""PANNs: the CNN14, CNN10 and CNN6 AudioSet taggers of Kong et al. (2020), "PANNs: Large-Scale
Pretrained Audio Neural Networks for Audio Pattern Recognition" (IEEE/ACM TASLP 28).

Written from the published layer layout; module names are the released checkpoints' state-dict
keys (``bn0.*``, ``conv_block1.conv1.weight``, ``fc1.*``, ``fc_audioset.*``), so their weights load
as they are. The released files (Zenodo record 3987831, CC BY 4.0) are ``{"model": state_dict}``
and also hold the torchlibrosa front end as weights (``spectrogram_extractor.stft.conv_real.weight``,
``...conv_imag.weight``, ``logmel_extractor.melW``): here the front end is the ``[audio] preset =
"panns"`` log-mel (``freesound.config.AUDIO_PRESETS``), computed before the network, and
``convert_checkpoint`` checks those buffers against it.

The network takes the method's network input ``(B, in_channels, n_mels, frames)`` and reads its
log-mel plane (plane 0, times 100 to undo the input's scale: dB again); the deltas are not used.
As the original: the log-mel as ``(B, 1, frames, n_mels)``, batch norm over the mel bands
(``bn0``), conv blocks (two 3x3 conv -> BN -> ReLU, or one 5x5 in CNN6) each followed by a 2x2
average pool (CNN14's sixth: none) and dropout 0.2, the mean over frequency, max plus mean over
time, dropout 0.5, ``fc1`` -> ReLU, dropout 0.5, ``fc_audioset``. ``forward`` returns the 1-tuple
``(logits,)``; the original's clip output is their sigmoid.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from freesound.audio.logmel import mel_filterbank
from freesound.audio.network_input import INPUT_SCALE
from freesound.config import audio_preset
from freesound.errors import FreesoundWarning
from freesound.models.checkpoint import CheckpointError, read_released_weights, state_dict_misfit, with_batch_counters
from freesound.models.registry import register_model

__all__ = ["ARCHITECTURES", "AUDIO_PRESET", "FRONT_END_KEYS", "PannsCnn", "convert_checkpoint", "frontend_mismatch"]

#: The front end of the released checkpoints (``freesound.config.AUDIO_PRESETS``).
AUDIO_PRESET = "panns"
#: The torchlibrosa front end's weights in a released checkpoint: checked, then dropped.
FRONT_END_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                  "logmel_extractor.melW")
#: Registered name -> (conv blocks, 5x5 single-conv blocks, last block pooled): the layouts.
ARCHITECTURES = {"panns_cnn14": (6, False, False), "panns_cnn10": (4, False, True), "panns_cnn6": (4, True, True)}
#: The largest difference allowed between a checkpoint's front-end weights and the preset's
#: (float32 rounding of the same formulas; another STFT or filterbank differs by 1e-3 or more).
_FRONT_END_ATOL = 1e-5


def _init_layer(layer: nn.Module) -> None:
    """The original's initialisation: Xavier-uniform weights, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class ConvBlock(nn.Module):
    """Two 3x3 conv (no bias) -> BN -> ReLU layers, then an average pool of ``pool``.

    With ``single_5x5`` one 5x5 conv -> BN -> ReLU instead (CNN6's ``ConvBlock5x5``).
    ``(B, in_channels, T, F) -> (B, out_channels, T // pool, F // pool)``.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int = 2, single_5x5: bool = False):
        super().__init__()
        size = 5 if single_5x5 else 3
        self.conv1 = nn.Conv2d(in_channels, out_channels, size, padding=size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.single = single_5x5
        if not single_5x5:
            self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = pool
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _init_layer(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if not self.single:
            x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x


class PannsCnn(nn.Module):
    """A PANNs CNN (``ARCHITECTURES``): see the module docstring.

    Parameters
    ----------
    num_classes : int
        Outputs of ``fc_audioset`` (527 for AudioSet).
    architecture : str
        A key of ``ARCHITECTURES``.
    n_mels : int
        Mel bands of the input (``bn0``'s features): the preset's 64.
    base_width : int
        Channels of the first block; block k has ``base_width * 2**k`` (the original's 64; smaller
        for tests). ``fc1`` is as wide as the last block.
    in_channels : int
        Planes of the network input (3, 4 with ``[input] freq_channel``); only the log-mel plane is
        read.
    pretrained : str
        A released PANNs checkpoint to start from (``convert_checkpoint``; ``[pretrained] weights``
        sets it): every weight but ``fc_audioset``, which stays new for ``num_classes``. A start-only
        parameter (``freesound.models.checkpoint.START_ONLY_PARAMS``).

    Raises
    ------
    CheckpointError
        ``pretrained`` is missing, unreadable, of another architecture or width, or of another
        front end.
    """

    #: ``forward`` returns one head: the experiment's ``aux_weights`` is ``[1.0]``.
    output_heads = 1

    def __init__(self, num_classes: int, architecture: str = "panns_cnn14", n_mels: int = 64, base_width: int = 64,
                 in_channels: int = 3, pretrained: str = ""):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown PANNs architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        blocks, single_5x5, last_pooled = ARCHITECTURES[architecture]
        self.architecture = architecture
        self.bn0 = nn.BatchNorm2d(n_mels)
        widths = [base_width * 2 ** k for k in range(blocks)]
        for k, width in enumerate(widths):
            pool = 2 if k < blocks - 1 or last_pooled else 1
            self.add_module(f"conv_block{k + 1}", ConvBlock(widths[k - 1] if k else 1, width, pool, single_5x5))
        self.blocks = blocks
        self.fc1 = nn.Linear(widths[-1], widths[-1], bias=True)
        self.fc_audioset = nn.Linear(widths[-1], num_classes, bias=True)
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)
        if pretrained:
            load_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        logmel = x[:, 0] * INPUT_SCALE  # (B, n_mels, T) in dB
        x = logmel.transpose(1, 2).unsqueeze(1)  # the original's (B, 1, T, n_mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for k in range(1, self.blocks + 1):
            x = F.dropout(getattr(self, f"conv_block{k}")(x), p=0.2, training=self.training)
        x = x.mean(dim=3)
        x = x.max(dim=2)[0] + x.mean(dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        return (self.fc_audioset(x),)


def _factory(architecture: str):
    def create(num_classes: int, n_mels: int = 64, base_width: int = 64, in_channels: int = 3,
               pretrained: str = "") -> PannsCnn:
        return PannsCnn(num_classes, architecture, n_mels, base_width, in_channels, pretrained)

    create.__name__ = create.__qualname__ = architecture
    create.__doc__ = f"``PannsCnn`` with ``architecture={architecture!r}``."
    return register_model(architecture)(create)


panns_cnn14 = _factory("panns_cnn14")
panns_cnn10 = _factory("panns_cnn10")
panns_cnn6 = _factory("panns_cnn6")


def frontend_mismatch(state: dict) -> str:
    """How a released checkpoint's front-end weights (``FRONT_END_KEYS``) differ from the
    ``"panns"`` preset's STFT and mel filterbank ("" when they agree, or when the file has none).

    ``conv_real`` / ``conv_imag`` are ``(n_fft // 2 + 1, 1, n_fft)``: row k is ``cos`` / ``-sin`` of
    ``2 pi k n / n_fft`` times the periodic Hann window; ``melW`` is ``(n_fft // 2 + 1, n_mels)``,
    librosa's Slaney filterbank transposed.
    """
    config = audio_preset(AUDIO_PRESET)
    n = np.arange(config.n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / config.n_fft)
    angles = 2 * np.pi * np.outer(np.arange(config.n_fft // 2 + 1), n) / config.n_fft
    expected = {FRONT_END_KEYS[0]: (np.cos(angles) * window)[:, None, :],
                FRONT_END_KEYS[1]: (-np.sin(angles) * window)[:, None, :],
                FRONT_END_KEYS[2]: mel_filterbank(config).T}
    for key, want in expected.items():
        if key not in state:
            continue
        have = state[key].detach().double().cpu().numpy()
        if have.shape != want.shape:
            return f"{key} is {'x'.join(map(str, have.shape))} against {'x'.join(map(str, want.shape))} here"
        error = float(np.abs(have - want).max())
        if error > _FRONT_END_ATOL:
            return f"{key} differs from the preset's by up to {error:.2g}"
    return ""


def _architecture_of(state: dict) -> tuple:
    """``(registered name, base_width, n_mels, num_classes)`` read off a released state dict."""
    blocks = sum(1 for key in state if key.startswith("conv_block") and key.endswith(".conv1.weight"))
    conv1 = state.get("conv_block1.conv1.weight")
    single_5x5 = conv1 is not None and conv1.dim() == 4 and conv1.shape[-1] == 5
    name = {6: "panns_cnn14", 4: "panns_cnn6" if single_5x5 else "panns_cnn10"}.get(blocks)
    if name is None or conv1 is None or "bn0.weight" not in state or "fc_audioset.weight" not in state:
        raise CheckpointError(f"not a PANNs CNN14, CNN10 or CNN6 state dict ({blocks} conv blocks; first keys "
                              f"{', '.join(list(state)[:3]) or 'none'})")
    return name, int(conv1.shape[0]), int(state["bn0.weight"].shape[0]), int(state["fc_audioset.weight"].shape[0])


def convert_checkpoint(raw) -> tuple:
    """A released PANNs checkpoint (what ``torch.load`` returns) as ``(model_name, model_params,
    state_dict)`` in freesound's names, every key and shape checked.

    The architecture, width, mel bands and classes are read off the weights; the front-end
    weights are checked against the ``"panns"`` preset (``frontend_mismatch``; a file without them
    is taken to be of the preset, with a ``FreesoundWarning``) and dropped; a
    ``num_batches_tracked`` counter the file lacks (older torch) is added as 0, which no output
    depends on.

    Raises
    ------
    CheckpointError
        Not a ``{"model": state_dict}`` of a PANNs CNN; a key missing, unexpected or misshapen
        (one sentence with the counts and the first keys); or another front end.
    """
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"keys {', '.join(map(str, list(raw)[:5]))}" if isinstance(raw, dict) else f"a {type(raw).__name__}"
        raise CheckpointError(f"not a PANNs checkpoint: expected {{'model': state_dict}} of tensors, found {found}")
    name, base_width, n_mels, num_classes = _architecture_of(state)
    mismatch = frontend_mismatch(state)
    if mismatch:
        raise CheckpointError(f"the checkpoint's front end is not the {AUDIO_PRESET!r} preset's ({mismatch}): a PANNs "
                              "model of another sample rate or STFT, which this front end would feed wrong input")
    unchecked = [key for key in FRONT_END_KEYS if key not in state]
    if unchecked:
        # Warned, not refused: a re-saved state dict may drop them, and every released 32 kHz file has them.
        rate = audio_preset(AUDIO_PRESET).sample_rate
        warnings.warn(f"the checkpoint lacks {len(unchecked)} of the {len(FRONT_END_KEYS)} front-end weights "
                      f"({', '.join(unchecked)}), so its STFT and mel filterbank could not be verified; it is "
                      f"taken to be a {rate // 1000} kHz PANNs model (a 16 kHz one would be fed wrong input)",
                      FreesoundWarning, stacklevel=2)
    params = {"num_classes": num_classes, "n_mels": n_mels, "base_width": base_width}
    expected = PannsCnn(num_classes, name, n_mels, base_width).state_dict()
    ours = with_batch_counters({key: value for key, value in state.items() if key not in FRONT_END_KEYS}, expected)
    problem = state_dict_misfit(ours, expected)
    if problem:
        raise CheckpointError(f"the weights do not fit {name}(base_width={base_width}, n_mels={n_mels}, "
                              f"num_classes={num_classes}): {problem}")
    return name, params, {key: ours[key] for key in expected}


def load_pretrained(model: PannsCnn, path) -> None:
    """Load a released PANNs checkpoint into ``model`` (in place), all but ``fc_audioset``.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, does not convert (``convert_checkpoint``), or is
        another architecture, width or number of mel bands than ``model``.
    """
    name, params, state = read_released_weights(path, convert_checkpoint, what="PANNs checkpoint",
                                                model=model.architecture)
    body = {key: value for key, value in state.items() if not key.startswith("fc_audioset.")}
    expected = {key: value for key, value in model.state_dict().items() if not key.startswith("fc_audioset.")}
    problem = state_dict_misfit(body, expected)
    if name != model.architecture or problem:
        raise CheckpointError(f"pretrained weights file {path} is a {name}(base_width={params['base_width']}, "
                              f"n_mels={params['n_mels']}), which does not fit this {model.architecture}"
                              + (f": {problem}" if problem else ""))
    model.load_state_dict(body, strict=False)
