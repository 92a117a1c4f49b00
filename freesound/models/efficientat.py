"""EfficientAT's MobileNetV3 (Schmid et al. 2023): ``[model] name = "efficientat_mn"``.

The AudioSet taggers of "Efficient Large-Scale Audio Tagging via Transformer-to-CNN Knowledge
Distillation" (ICASSP 2023; github.com/fschmid56/EfficientAT, MIT licence): torchvision's
MobileNetV3-Large layout with one input plane, batch norms with ``eps=1e-3, momentum=0.01`` and a
channel squeeze-excitation after the depthwise convolution of the blocks that have one. The width
multiplier scales every channel count, rounded to a multiple of 8 (never below 8, never more than
10% down): ``mn10`` is width 1.0 (4.88M parameters with AudioSet's 527 classes), ``mn04`` 0.4,
``mn40`` 4.0.

Module names reproduce the released state dicts (``features.0.0.weight``,
``features.4.block.2.conc_se_layers.0.fc1.weight``, ``classifier.5.bias``), so that
``convert_efficientat_checkpoint`` of a released file such as ``mn10_as_mAP_471.pt`` loads as it
is. The original's ``"mlp"`` head (global average pool, linear, hard swish, dropout, linear) is
the default; the pooled and SED heads of ``freesound.models.heads`` are the alternatives for
fine-tuning with frame-wise output.

The network reads the first ``input_planes`` planes of the project's network input (the log-mel
window, then its deltas) times ``INPUT_SCALE``, which undoes the network input's division: with
the ``efficientat`` audio preset, plane 0 then holds exactly what the original model was fed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from freesound.audio.network_input import INPUT_SCALE
from freesound.models.checkpoint import (
    SHOWN_KEYS, CheckpointError, read_released_weights, state_dict_misfit, with_batch_counters,
)
from freesound.models.heads import HEADS, make_head
from freesound.models.registry import register_model

__all__ = [
    "EFFICIENTAT_HEADS", "EFFICIENTAT_WIDTHS", "EfficientATMobileNet", "convert_efficientat_checkpoint",
    "IMPORT_FORMAT", "efficientat_head_keys", "load_pretrained", "make_divisible",
]

#: The heads this family builds: the original's, then ``freesound.models.heads``'.
EFFICIENTAT_HEADS = ("mlp", *HEADS)
#: The widths EfficientAT released AudioSet weights for (``mn01_as`` ... ``mn40_as``).
EFFICIENTAT_WIDTHS = (0.1, 0.2, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0)


class BlockSpec(NamedTuple):
    """One inverted-residual block of MobileNetV3-Large (Table 1 of Howard et al. 2019), at width 1."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    squeeze_excite: bool
    hard_swish: bool
    stride: int


#: The 15 blocks, as EfficientAT builds them with its default strides (2, 2, 2, 2).
BLOCKS = (
    BlockSpec(16, 3, 16, 16, False, False, 1),
    BlockSpec(16, 3, 64, 24, False, False, 2),
    BlockSpec(24, 3, 72, 24, False, False, 1),
    BlockSpec(24, 5, 72, 40, True, False, 2),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 3, 240, 80, False, True, 2),
    BlockSpec(80, 3, 200, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 480, 112, True, True, 1),
    BlockSpec(112, 3, 672, 112, True, True, 1),
    BlockSpec(112, 5, 672, 160, True, True, 2),
    BlockSpec(160, 5, 960, 160, True, True, 1),
    BlockSpec(160, 5, 960, 160, True, True, 1),
)
#: The last 1x1 convolution widens the last block's channels six times; the mlp head's hidden
#: layer has 1280 units at width 1.
LAST_CONV_EXPANSION = 6
HEAD_HIDDEN = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor``, and one
    step up where rounding down loses more than 10% (MobileNet's channel rounding)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _channels(width_mult: float) -> dict:
    """The channel counts a width gives: ``stem``, ``blocks`` (a ``BlockSpec`` per block, scaled),
    ``last`` (the last convolution's output) and ``hidden`` (the mlp head's)."""
    blocks = tuple(spec._replace(in_channels=make_divisible(spec.in_channels * width_mult),
                                 expanded=make_divisible(spec.expanded * width_mult),
                                 out_channels=make_divisible(spec.out_channels * width_mult)) for spec in BLOCKS)
    return {"stem": blocks[0].in_channels, "blocks": blocks,
            "last": LAST_CONV_EXPANSION * blocks[-1].out_channels, "hidden": make_divisible(HEAD_HIDDEN * width_mult)}


def _conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
             activation: type[nn.Module] | None = None) -> nn.Sequential:
    """Bias-free convolution, batch norm (EfficientAT's eps and momentum), activation: keys
    ``0.weight``, ``1.running_mean`` as torchvision's ``ConvNormActivation`` names them."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel squeeze-excitation: ``x * sigmoid(fc2(relu(fc1(mean over F, T))))``."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT's wrapper of its squeeze-excitations (channel only in every released model,
    so the wrapper's aggregation over them is the one layer's output); kept for the key names."""

    def __init__(self, channels: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, make_divisible(channels // 4))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """1x1 expansion (left out when it would not widen), depthwise ``k x k`` convolution,
    squeeze-excitation (some blocks), 1x1 projection; a residual sum where shapes allow."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        activation = nn.Hardswish if spec.hard_swish else nn.ReLU
        layers = []
        if spec.expanded != spec.in_channels:
            layers.append(_conv_bn(spec.in_channels, spec.expanded, activation=activation))
        layers.append(_conv_bn(spec.expanded, spec.expanded, spec.kernel, spec.stride, groups=spec.expanded,
                               activation=activation))
        if spec.squeeze_excite:
            layers.append(ConcurrentSE(spec.expanded))
        layers.append(_conv_bn(spec.expanded, spec.out_channels))
        self.block = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and spec.in_channels == spec.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MLPHead(nn.Sequential):
    """The original classifier: global average pool, linear, hard swish, dropout, linear, as one
    ``nn.Sequential`` (keys ``classifier.2.*`` and ``classifier.5.*``)."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, dropout: float):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, hidden), nn.Hardswish(),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def framewise(self, features: torch.Tensor) -> torch.Tensor:
        """Frame logits ``(B, T, num_classes)``: the head's layers on each frame's mel-band mean."""
        x = features.mean(2).transpose(1, 2)
        return self[5](self[4](self[3](self[2](x))))


@register_model("efficientat_mn")
class EfficientATMobileNet(nn.Module):
    """EfficientAT's MobileNetV3 at any width (see the module docstring).

    Parameters
    ----------
    num_classes : int
        Number of output labels (527 for the AudioSet models).
    width_mult : float
        Channel width multiplier: 1.0 is ``mn10``, 0.4 ``mn04``, 4.0 ``mn40``.
    head : str
        ``"mlp"`` (the original's, keys ``classifier.*``), ``"pooled"`` or ``"sed"``
        (``freesound.models.heads``, keys ``head.*``).
    dropout : float
        The head's dropout (the original's 0.2).
    in_channels : int
        Planes of the network input: 3 (log-mel, delta, delta-delta), 4 with ``[input]
        freq_channel``.
    input_planes : int
        How many of those planes, from the first, the first convolution reads: 1 (the log-mel
        alone, as the original; what AudioSet weights expect) up to ``in_channels``.
    pretrained : str
        A released EfficientAT state dict to start from (``[pretrained] weights``; e.g.
        ``mn10_as_mAP_471.pt``): every weight but the new head's (``efficientat_head_keys``) is
        loaded, after ``convert_efficientat_checkpoint`` checked it. "" starts from random weights.

    Notes
    -----
    Input ``(B, in_channels, F, T)``, ``F, T >= 1``; the backbone divides both by 32 (rounding
    up). ``forward`` returns the 1-tuple ``(clip logits,)``, ``(B, num_classes)``, as every
    first-level model's output starts with its main head; ``framewise(x)`` gives the frame logits
    ``(B, ceil(T / 32), num_classes)``.

    Raises
    ------
    ValueError
        An unknown head, a width that is not positive, or ``input_planes`` outside
        ``1..in_channels``.
    CheckpointError
        ``pretrained`` is missing, unreadable, or another width or layout than this model.
    """

    #: ``forward`` returns one head: the experiment's ``aux_weights`` has one weight.
    output_heads = 1

    def __init__(self, num_classes: int, width_mult: float = 1.0, head: str = "mlp", dropout: float = 0.2,
                 in_channels: int = 3, input_planes: int = 1, pretrained: str = ""):
        super().__init__()
        if head not in EFFICIENTAT_HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(EFFICIENTAT_HEADS)}")
        if not width_mult > 0:
            raise ValueError(f"width_mult = {width_mult!r} is out of range: it must be above 0")
        if not 1 <= input_planes <= in_channels:
            raise ValueError(f"input_planes = {input_planes!r} is out of range: the network input has "
                             f"{in_channels} planes (1 reads the log-mel alone)")
        self.input_planes = input_planes
        channels = _channels(width_mult)
        layers = [_conv_bn(input_planes, channels["stem"], 3, 2, activation=nn.Hardswish)]
        layers += [InvertedResidual(spec) for spec in channels["blocks"]]
        layers.append(_conv_bn(channels["blocks"][-1].out_channels, channels["last"], activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        if head == "mlp":
            self.classifier = MLPHead(channels["last"], channels["hidden"], num_classes, dropout)
        else:
            self.head = make_head(head, channels["last"], num_classes, dropout)
        _init_weights(self)
        self.width_mult, self.head_name = width_mult, head
        if pretrained:
            load_pretrained(self, pretrained)

    def _head(self) -> nn.Module:
        return self.classifier if hasattr(self, "classifier") else self.head

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, C, ceil(F / 32), ceil(T / 32))`` of the network input ``x``."""
        return self.features(x[:, :self.input_planes] * INPUT_SCALE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self._head()(self.feature_map(x)),)

    def framewise(self, x: torch.Tensor) -> torch.Tensor:
        """Frame logits ``(B, ceil(T / 32), num_classes)`` of an input ``(B, in_channels, F, T)``."""
        return self._head().framewise(self.feature_map(x))


def _init_weights(model: nn.Module) -> None:
    """EfficientAT's initialisation: Kaiming-normal (fan out) convolutions, unit batch norms,
    linear weights N(0, 0.01), zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv1d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def efficientat_head_keys(head: str = "mlp") -> tuple[str, ...]:
    """Prefixes of the state-dict keys a new head for other classes replaces (fine-tuning): the
    mlp head's last linear layer (its hidden layer carries over, as in EfficientAT's own
    fine-tuning), or the whole pooled or SED head.

    Raises
    ------
    ValueError
        An unknown head.
    """
    if head not in EFFICIENTAT_HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(EFFICIENTAT_HEADS)}")
    return ("classifier.5.",) if head == "mlp" else ("head.",)


def load_pretrained(model: EfficientATMobileNet, path) -> None:
    """Load a released EfficientAT state dict into ``model`` (in place), all but the keys its
    new head replaces (``efficientat_head_keys``).

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, does not convert (``convert_efficientat_checkpoint``),
        or is another width than ``model`` or feeds it another number of input planes.
    """
    _, params, state = read_released_weights(path, convert_efficientat_checkpoint, what="EfficientAT state dict",
                                             model="efficientat_mn")
    new_head = efficientat_head_keys(model.head_name) + (() if model.head_name == "mlp" else ("classifier.",))
    body = {key: value for key, value in state.items() if not key.startswith(new_head)}
    expected = {key: value for key, value in model.state_dict().items() if not key.startswith(new_head)}
    problem = state_dict_misfit(body, expected)
    if problem:
        raise CheckpointError(f"pretrained weights file {path} is EfficientAT's MobileNetV3 at width "
                              f"{params['width_mult']:g} reading one input plane, which does not fit this one at width "
                              f"{model.width_mult:g} reading {model.input_planes}: {problem}")
    model.load_state_dict(body, strict=False)


def convert_efficientat_checkpoint(raw: dict) -> tuple[str, dict, dict]:
    """An EfficientAT MobileNetV3 state dict (e.g. the released ``mn10_as_mAP_471.pt``) as this
    package's model.

    The width is read from the tensors' channel counts and the classes from the classifier;
    then every key and shape is checked against ``EfficientATMobileNet`` of that width.

    Parameters
    ----------
    raw : dict
        The file's contents (``torch.load``): a state dict of the ``"mlp"`` head model, or a dict
        holding one under ``"state_dict"`` or ``"model"``.

    Returns
    -------
    (model_name, model_params, state_dict)
        ``"efficientat_mn"``, ``{"num_classes": ..., "width_mult": ...}`` and the state dict
        that ``create_model(model_name, **model_params)`` loads strictly (batch-norm counters the
        file leaves out are filled in as zero).

    Raises
    ------
    CheckpointError
        One sentence: not a state dict, another head type, a channel layout of no width, or
        keys that do not fit (counts and the first names of the missing, unexpected and
        misshapen ones).
    """
    state = _tensors(raw)
    if "classifier.5.weight" not in state:
        heads = "fully convolutional (classifier.0/1)" if "classifier.1.weight" in state else "none"
        raise CheckpointError(f"not an EfficientAT MobileNetV3 with the mlp head: the state dict has no "
                              f"classifier.5.weight (head found: {heads}; {len(state)} tensors, first keys "
                              f"{', '.join(list(state)[:SHOWN_KEYS])})")
    width = _width_of(state)
    params = {"num_classes": int(state["classifier.5.weight"].shape[0]), "width_mult": width}
    expected = EfficientATMobileNet(**params).state_dict()
    state = with_batch_counters(state, expected)
    problem = state_dict_misfit(state, expected)
    if problem:
        raise CheckpointError(f"the state dict does not fit EfficientAT's MobileNetV3 at width {width:g} with "
                              f"{params['num_classes']} classes: {problem}")
    return "efficientat_mn", params, state


def _tensors(raw) -> dict:
    """The tensors of a state dict, or of the one a checkpoint holds under ``state_dict``/``model``."""
    if isinstance(raw, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    tensors = {key: value for key, value in raw.items() if isinstance(value, torch.Tensor)} if isinstance(raw, dict) else {}
    if not tensors:
        raise CheckpointError(f"not an EfficientAT state dict: expected a dict of tensors, got {type(raw).__name__} "
                              f"with no tensors")
    return tensors


def _width_of(state: dict) -> float:
    """The width multiplier whose channel counts the stem, every block's projection and the
    last convolution of ``state`` have: a released width first, else the smallest in 0.01 steps."""
    projections = []
    for index, spec in enumerate(BLOCKS, start=1):
        prefix = f"features.{index}.block."
        last = max((int(key[len(prefix):].split(".")[0]) for key in state if key.startswith(prefix)), default=None)
        weight = state.get(f"{prefix}{last}.0.weight")
        projections.append(None if weight is None else int(weight.shape[0]))
    stem = state.get("features.0.0.weight")
    found = (None if stem is None else int(stem.shape[0]), tuple(projections))
    candidates = EFFICIENTAT_WIDTHS + tuple(step / 100 for step in range(1, 401))
    for width in candidates:
        channels = _channels(width)
        if found == (channels["stem"], tuple(spec.out_channels for spec in channels["blocks"])):
            return width
    raise CheckpointError(f"the state dict's channel counts (stem {found[0]}, block outputs "
                          f"{', '.join(map(str, found[1]))}) are those of no EfficientAT MobileNetV3 width "
                          f"from 0.01 to 4 (weights of another architecture?)")


#: The ``import-weights --format efficientat`` entry, as ``freesound.tools.import_weights``
#: registers a format (``register_format("efficientat", WeightsFormat(**IMPORT_FORMAT))``): the
#: converter, the audio preset of the released models' front end (``EFFICIENTAT_AUDIO``), and the
#: shortest input in frames (the network's stride; the front end's 0.5 s minimum is 50 frames, so
#: no clip is padded, as the original pads none).
IMPORT_FORMAT = {
    "convert": convert_efficientat_checkpoint,
    "audio_preset": "efficientat",
    "tile_frames": 32,
    "description": "EfficientAT's MobileNetV3 AudioSet taggers (mn04_as ... mn40_as, e.g. mn10_as_mAP_471.pt from "
                   "github.com/fschmid56/EfficientAT/releases, MIT licence)",
}
