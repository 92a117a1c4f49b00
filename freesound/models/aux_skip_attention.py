"""AuxSkipAttention: the winning CNN, with skip connections, CBAM attention and auxiliary heads.

Module names reproduce the original team's state-dict keys (``conv1.conv1.0.weight``,
``attention.ca.fc1.weight``, ``aux1.fc.3.running_var``, ...), so their released weights load
as they are. Four conv blocks halve the resolution each; the outputs of the first three are
pooled to the last block's resolution by *skip* blocks, concatenated with it, re-weighted by
CBAM (channel then spatial attention), merged, and globally average-pooled into the main head.
Each skip also feeds an auxiliary head, a deep-supervision signal for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from freesound.models.heads import HEADS, make_head
from freesound.models.registry import register_model

__all__ = ["AuxSkipAttention", "ConvBlock", "SkipBlock", "classifier_head"]


class ConvBlock(nn.Module):
    """Two 3×3 conv → BN → ReLU layers, then a 2×2 average pool.

    ``(B, in_channels, H, W) -> (B, out_channels, H // 2, W // 2)``.
    Convolutions are Kaiming-normal initialised, batch norms start at weight 1 and bias 0.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv2(self.conv1(x)), 2)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # A Sequential, so that the keys read ``conv1.0.weight`` / ``conv1.1.running_mean``.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SkipBlock(nn.Module):
    """An ``scale``×``scale`` average pool (when ``scale >= 2``), then 3×3 conv → BN → ReLU.

    ``(B, in_channels, H, W) -> (B, out_channels, H // scale, W // scale)``.
    Unlike :class:`ConvBlock`, the original kept PyTorch's default initialisation here.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale >= 2:
            x = F.avg_pool2d(x, self.scale)
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, shape ``(B, C, 1, 1)``.

    The shared MLP is two bias-free 1×1 convs ``C -> C // ratio -> C`` with a ReLU between.
    """

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._mlp(x.mean((2, 3), keepdim=True)) + self._mlp(x.amax((2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a ``kernel_size``² conv over the channel mean and max, sigmoid.

    ``(B, C, H, W) -> (B, 1, H, W)``.
    """

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel, then spatial re-weighting."""

    def __init__(self, channels: int, ratio: int, kernel_size: int):
        super().__init__()
        self.ca = ChannelAttention(channels, ratio)
        self.sa = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(x) * x
        return self.sa(x) * x


def classifier_head(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout → Linear → PReLU → BatchNorm1d → Dropout(dropout / 2) → Linear: ``(B, in) -> (B, classes)``.

    Indices matter: the original keys are ``fc.1`` (linear), ``fc.2`` (PReLU), ``fc.3`` (batch
    norm) and ``fc.5`` (output layer).
    """
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, hidden),
        nn.PReLU(),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout / 2),
        nn.Linear(hidden, num_classes),
    )


class AuxHead(nn.Module):
    """Global average pool, then :func:`classifier_head`: ``(B, C, H, W) -> (B, num_classes)``."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.fc = classifier_head(in_channels, hidden, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


@register_model("aux_skip_attention", aliases=("AuxSkipAttention",))
class AuxSkipAttention(nn.Module):
    """The winning first-level model.

    Parameters
    ----------
    num_classes : int
        Number of output labels.
    base_size : int
        Width ``b``: the conv blocks have ``b, 2b, 4b, 8b`` channels, every skip ``8b``.
    dropout : float
        Dropout before each head's hidden layer; half of it before the output layer.
    ratio : int
        CBAM channel-attention reduction (hidden width ``32b // ratio``).
    kernel_size : int
        CBAM spatial-attention kernel size (odd; the original used 7).
    last_filters : int
        The merged map has ``b * last_filters`` channels.
    last_fc : int
        Every head's hidden layer has ``b * last_fc`` units.
    noisy_head : bool
        Add a noisy-label head ``noisy_fc``, the main head's shape on the same pooled features,
        for the noisy set's labels (``freesound.training.losses.NoisyHeadLoss``); off, the model
        is the original, parameter for parameter.
    in_channels : int
        Input planes: 3 in the method (log-mel, delta, delta-delta), 4 with the frequency-position
        plane (``[input] freq_channel``); only the first convolution's weight depends on it.
    head : str
        The main head ``fc`` on the merged map: ``"mlp"``, the method's (global average pool,
        then :func:`classifier_head`), or ``"pooled"`` / ``"sed"`` of ``freesound.models.heads``
        (with ``dropout``). The auxiliary and noisy heads keep the method's shape.

    Notes
    -----
    Input ``(B, in_channels, H, W)``, a log-mel window with its two deltas, ``(B, 3, 128, 256)`` in
    the method; global pooling makes any ``H, W >= 16`` work. ``forward`` returns the logits
    ``(main, aux3, aux2, aux1)``, each ``(B, num_classes)``; aux3 sits on the deepest skip. With
    ``noisy_head``, in training mode only, the noisy head's logits follow as a fifth item; in eval
    mode (prediction, export) it is not computed. ``framewise(x)`` gives the main head's frame
    logits ``(B, W // 16, num_classes)`` with ``head = "pooled"`` or ``"sed"``.
    """

    def __init__(
        self,
        num_classes: int,
        base_size: int = 64,
        dropout: float = 0.2,
        ratio: int = 16,
        kernel_size: int = 7,
        last_filters: int = 8,
        last_fc: int = 2,
        noisy_head: bool = False,
        in_channels: int = 3,
        head: str = "mlp",
    ):
        super().__init__()
        b = base_size
        if head != "mlp" and head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of mlp, {', '.join(HEADS)}")
        if b * 32 // ratio < 1:
            raise ValueError(f"ratio={ratio} leaves no channel-attention units for base_size={b}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        # Registration order fixes the state-dict order, which follows the original's.
        self.conv1 = ConvBlock(in_channels, b)
        self.skip1 = SkipBlock(b, 8 * b, scale=8)
        self.conv2 = ConvBlock(b, 2 * b)
        self.skip2 = SkipBlock(2 * b, 8 * b, scale=4)
        self.conv3 = ConvBlock(2 * b, 4 * b)
        self.skip3 = SkipBlock(4 * b, 8 * b, scale=2)
        self.conv4 = ConvBlock(4 * b, 8 * b)
        self.attention = CBAM(32 * b, ratio=ratio, kernel_size=kernel_size)
        self.merge = SkipBlock(32 * b, b * last_filters, scale=1)
        self.head_name = head
        self.fc = (classifier_head(b * last_filters, b * last_fc, num_classes, dropout) if head == "mlp"
                   else make_head(head, b * last_filters, num_classes, dropout))
        self.aux1 = AuxHead(8 * b, b * last_fc, num_classes, dropout)
        self.aux2 = AuxHead(8 * b, b * last_fc, num_classes, dropout)
        self.aux3 = AuxHead(8 * b, b * last_fc, num_classes, dropout)
        self.noisy_fc = classifier_head(b * last_filters, b * last_fc, num_classes, dropout) if noisy_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, skip1, skip2, skip3 = self._features(x)
        pooled = x.mean((2, 3))
        main = self.fc(pooled) if self.head_name == "mlp" else self.fc(x)
        heads = (main, self.aux3(skip3), self.aux2(skip2), self.aux1(skip1))
        if self.noisy_fc is not None and self.training:
            return (*heads, self.noisy_fc(pooled))
        return heads

    def framewise(self, x: torch.Tensor) -> torch.Tensor:
        """The main head's frame logits ``(B, W // 16, num_classes)`` of an input ``(B, C, H, W)``.

        Raises
        ------
        ValueError
            The model has the method's head (``head = "mlp"``), which has no frame-wise output.
        """
        if self.head_name == "mlp":
            raise ValueError('the method\'s head (head = "mlp") has no frame-wise output; build the model with '
                             'head = "sed" or "pooled"')
        return self.fc.framewise(self._features(x)[0])

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(merged map, skip1, skip2, skip3)``: the main head's input and the auxiliary heads'."""
        x = self.conv1(x)  # (B, b, H/2, W/2)
        skip1 = self.skip1(x)  # (B, 8b, H/16, W/16)
        x = self.conv2(x)  # (B, 2b, H/4, W/4)
        skip2 = self.skip2(x)
        x = self.conv3(x)  # (B, 4b, H/8, W/8)
        skip3 = self.skip3(x)
        x = self.conv4(x)  # (B, 8b, H/16, W/16)
        x = torch.cat([x, skip1, skip2, skip3], dim=1)  # (B, 32b, H/16, W/16)
        x = self.merge(self.attention(x))  # (B, b * last_filters, H/16, W/16)
        return x, skip1, skip2, skip3
