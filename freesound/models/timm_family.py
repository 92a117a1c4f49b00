"""Any timm CNN as a first-level model: ``[model] name = "timm"``, ``params = { backbone = ... }``.

The backbone is ``timm.create_model(backbone, num_classes=0, in_chans=in_channels)``, fed the
network input ``(B, in_channels, n_mels, frames)`` as an image; its last feature map goes to a
head of ``freesound.models.heads`` (``"pooled"`` or ``"sed"``). timm is an optional extra
(``pip install 'freesound[timm]'``), imported only when such a model is built.

Pretrained weights come from a file (``pretrained = "path"``): a timm checkpoint (a dict holding
``state_dict_ema``, ``state_dict`` or ``model``, taken in that order as timm does), a
``.safetensors`` file or a ``.pth`` state dict, read with ``torch.load(weights_only=True)``. Every
key and shape is checked against the backbone, the first convolution is adapted to the number of
planes (timm's ``adapt_input_conv``) and the file's classifier is dropped: the head is new, for
the dataset's classes. ``pretrained = true`` takes timm's default weights from the Hugging Face
hub, where the machine reaches it. A trained checkpoint holds all its weights, so ``load_model``
never reads the pretrained file again.
"""

from __future__ import annotations

import difflib
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from freesound.errors import FreesoundError
from freesound.models.checkpoint import CheckpointError, state_dict_misfit
from freesound.models.heads import HEADS, make_head
from freesound.models.registry import register_model

__all__ = ["TimmModel", "import_timm", "load_backbone_weights"]

MISSING_TIMM = "the timm model needs timm: pip install 'freesound[timm]'"


def import_timm():
    """The ``timm`` module.

    Raises
    ------
    FreesoundError
        timm is not installed (the sentence says how to install it), or does not import here
        (e.g. a torchvision built for another torch).
    """
    try:
        with warnings.catch_warnings():
            # timm's import reaches torch.jit.interface, which newer torch marks deprecated: a
            # two-line warning before every command's output that says nothing about the run.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.interface.* is deprecated", category=FutureWarning)
            import timm
    except ImportError as error:
        if error.name == "timm":
            raise FreesoundError(MISSING_TIMM) from None
        raise FreesoundError(f"timm is installed but does not import ({error}); {MISSING_TIMM}") from error
    except RuntimeError as error:  # torchvision's operators missing for this torch build
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise FreesoundError(f"timm is installed but does not import ({first_line}): it needs a torchvision "
                             f"built for torch {torch.__version__}; {MISSING_TIMM}") from error
    return timm


@register_model("timm")
class TimmModel(nn.Module):
    """A timm CNN backbone with a pooled or SED head.

    Parameters
    ----------
    num_classes : int
        Number of output labels.
    backbone : str
        A timm model name (``timm.list_models()``): a CNN whose ``forward_features`` gives a
        ``(B, C, F, T)`` map, e.g. ``efficientnet_b0``, ``mobilenetv3_large_100``,
        ``regnety_008``, ``convnext_nano``, ``eca_nfnet_l0``.
    head : str
        ``"pooled"`` or ``"sed"`` (``freesound.models.heads``).
    dropout : float
        The head's dropout.
    drop_path : float
        Stochastic depth (timm's ``drop_path_rate``) for backbones that have it; 0 leaves it out.
    pretrained : str or bool
        A weights file to start from (see the module docstring), ``True`` for timm's default
        weights from the Hugging Face hub, or ``False`` / ``""`` for random weights.
    in_channels : int
        Input planes: 3 (log-mel, delta, delta-delta), 4 with ``[input] freq_channel``; timm's
        ``in_chans``.

    Notes
    -----
    ``forward`` returns the 1-tuple ``(clip logits,)``, each ``(B, num_classes)``, so that every
    first-level model's output starts with its main head (the experiment's ``aux_weights`` is
    ``[1.0]``). ``framewise(x)`` returns the frame logits ``(B, T', num_classes)``, ``T'`` the
    input's frames divided by the backbone's stride (32 for most timm CNNs).

    Raises
    ------
    FreesoundError
        timm is missing; a pretrained file is missing or does not fit (``CheckpointError``); the
        hub cannot be reached for ``pretrained = true``.
    ValueError
        An unknown backbone or head, or ``drop_path`` for a backbone without it.
    """

    #: ``forward`` returns one head: the experiment's ``aux_weights`` has one weight.
    output_heads = 1

    def __init__(self, num_classes: int, backbone: str = "efficientnet_b0", head: str = "pooled",
                 dropout: float = 0.2, drop_path: float = 0.0, pretrained: str | bool = False,
                 in_channels: int = 3):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        timm = import_timm()
        self.backbone_name = backbone
        self.backbone = create_backbone(timm, backbone, in_channels, drop_path, hub=pretrained is True)
        if isinstance(pretrained, (str, Path)) and str(pretrained):
            load_backbone_weights(self.backbone, pretrained, backbone)
        check_feature_map(self.backbone, backbone, in_channels)
        self.head = make_head(head, self.backbone.num_features, num_classes, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map ``(B, C, F', T')`` of an input ``(B, in_channels, F, T)``."""
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.head(self.features(x)),)

    def framewise(self, x: torch.Tensor) -> torch.Tensor:
        """Frame logits ``(B, T', num_classes)`` of an input ``(B, in_channels, F, T)``."""
        return self.head.framewise(self.features(x))


def create_backbone(timm, name: str, in_channels: int, drop_path: float, hub: bool = False) -> nn.Module:
    """``timm.create_model(name, num_classes=0, in_chans=in_channels)``: the backbone without its
    classifier, with ``drop_path_rate=drop_path`` when positive and the hub's weights when ``hub``.

    Raises
    ------
    ValueError
        ``name`` is not a timm model (the message suggests close names), or ``drop_path`` is set
        for a backbone without stochastic depth.
    FreesoundError
        ``hub`` and the hub's weights cannot be fetched (the message says how to pass a file).
    """
    if not timm.is_model(name):  # the name may carry a pretrained tag: efficientnet_b0.ra_in1k
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ValueError(f"unknown timm backbone {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                              "; timm.list_models() lists the names"))
    options = {"num_classes": 0, "in_chans": in_channels}
    if drop_path:
        options["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, pretrained=hub, **options)
    except TypeError as error:
        if drop_path and "drop_path_rate" in str(error):
            raise ValueError(f"timm backbone {name!r} has no stochastic depth; leave drop_path at 0") from None
        raise
    except Exception as error:  # noqa: BLE001  whatever the hub client raises: offline, no network, no weights
        if not hub:
            raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FreesoundError(f"pretrained = true fetches the weights of {name!r} from the Hugging Face hub, which "
                             f"failed here ({first_line}); on a machine without the hub (a Kaggle kernel), download "
                             f"them elsewhere and pass the file: pretrained = \"path/to/{name}.safetensors\"") from error


def check_feature_map(backbone: nn.Module, name: str, in_channels: int) -> None:
    """Refuse a backbone whose ``forward_features`` is not a ``(B, num_features, F, T)`` map on a
    64x64 input (a transformer's tokens, a channels-last map, a fixed input size), from one
    forward in eval mode (the batch-norm statistics are left as they are).

    Raises
    ------
    ValueError
        Naming the backbone and the shape it gave.
    """
    was_training = backbone.training
    try:
        with torch.no_grad():
            shape = tuple(backbone.eval().forward_features(torch.zeros(1, in_channels, 64, 64)).shape)
    except (RuntimeError, AssertionError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        shape = f"an error on a 64x64 input ({first_line})"
    finally:
        backbone.train(was_training)
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] == backbone.num_features):
        raise ValueError(f"timm backbone {name!r} gives {shape} for features, not a (B, {backbone.num_features}, "
                         f"F, T) map; the timm model takes CNN backbones that take any input size")


def load_backbone_weights(backbone: nn.Module, path, name: str) -> None:
    """Load a weights file into ``backbone`` (timm model ``name``, built with ``num_classes=0``).

    The file's classifier (timm's ``pretrained_cfg["classifier"]``) is dropped and its first
    convolution (``pretrained_cfg["first_conv"]``) adapted to the backbone's input planes with
    ``timm.models.adapt_input_conv``; then every key and shape must match.

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, or does not fit the backbone (the counts and the first
        names of the missing, unexpected and misshapen keys).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file {path} for timm backbone {name!r} not found")
    state = _read_weights(path)
    config = backbone.pretrained_cfg
    classifiers = _names(config.get("classifier"))
    state = {key: value for key, value in state.items()
             if not any(key == c or key.startswith(f"{c}.") for c in classifiers)}
    expected = backbone.state_dict()
    for conv in _names(config.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in expected and state[key].dim() == 4 and state[key].shape[1] != expected[key].shape[1]:
            state[key] = _adapted_conv(state[key], expected[key].shape[1], path, name)
    problem = state_dict_misfit(state, expected)
    if problem:
        raise CheckpointError(f"pretrained weights file {path} does not fit timm backbone {name!r} "
                              f"(weights of another architecture?): {problem}")
    backbone.load_state_dict(state, strict=True)


def _read_weights(path: Path) -> dict:
    """The state dict of a weights file (timm's ``load_state_dict``: safetensors, or
    ``torch.load(weights_only=True)`` and the checkpoint's EMA, state-dict or model entry)."""
    from safetensors import SafetensorError
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError, SafetensorError) as error:
        first_line = (str(error).strip().splitlines() or [""])[0].split(". ")[0] or type(error).__name__
        raise CheckpointError(f"pretrained weights file {path} is not a readable state dict, timm checkpoint or "
                              f".safetensors file ({first_line})") from error
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"pretrained weights file {path} holds no weights (no tensors in it)")
    return tensors


def _names(value) -> tuple:
    """A ``pretrained_cfg`` entry (a module name, a tuple of them, or None) as a tuple."""
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _adapted_conv(weight: torch.Tensor, in_channels: int, path: Path, name: str) -> torch.Tensor:
    """``adapt_input_conv(in_channels, weight)``; a layout timm cannot convert is a ``CheckpointError``."""
    from timm.models import adapt_input_conv

    try:
        return adapt_input_conv(in_channels, weight)
    except NotImplementedError:
        raise CheckpointError(f"pretrained weights file {path}: the first convolution of {name!r} takes "
                              f"{weight.shape[1]} planes, which timm cannot adapt to {in_channels}") from None
