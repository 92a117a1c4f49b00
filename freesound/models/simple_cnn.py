"""SimpleCNN: a plain four-block CNN baseline (no skips, no attention, one head)."""

from __future__ import annotations

import torch
from torch import nn

from freesound.models.aux_skip_attention import ConvBlock, classifier_head
from freesound.models.registry import register_model

__all__ = ["SimpleCNN"]


@register_model("simple_cnn")
class SimpleCNN(nn.Module):
    """Four :class:`ConvBlock` s (``b, 2b, 4b, 8b`` channels), global average pool, a small head.

    Parameters
    ----------
    num_classes : int
        Number of output labels.
    base_size : int
        Width ``b`` of the first block.
    dropout : float
        Dropout before the head's hidden layer (``2b`` units); half of it before the output.
    noisy_head : bool
        Add a noisy-label head ``noisy_fc`` of the main head's shape (see ``AuxSkipAttention``).
    in_channels : int
        Input planes: 3 (log-mel, delta, delta-delta), 4 with ``[input] freq_channel``.

    Notes
    -----
    Input ``(B, in_channels, H, W)`` with ``H, W >= 16``. ``forward`` returns the 1-tuple ``(main,)``
    of logits ``(B, num_classes)``, so that every first-level model's output starts with its main
    head; with ``noisy_head``, in training mode only, ``(main, noisy)``.
    """

    def __init__(self, num_classes: int, base_size: int = 64, dropout: float = 0.2, noisy_head: bool = False,
                 in_channels: int = 3):
        super().__init__()
        b = base_size
        widths = [in_channels, b, 2 * b, 4 * b, 8 * b]
        self.conv = nn.Sequential(*(ConvBlock(i, o) for i, o in zip(widths, widths[1:])))
        self.fc = classifier_head(8 * b, 2 * b, num_classes, dropout)
        self.noisy_fc = classifier_head(8 * b, 2 * b, num_classes, dropout) if noisy_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = self.conv(x).mean((2, 3))
        if self.noisy_fc is not None and self.training:
            return self.fc(pooled), self.noisy_fc(pooled)
        return (self.fc(pooled),)
