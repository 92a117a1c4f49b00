"""FCNet: the MLP stacker over concatenated first-level probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from freesound.models.registry import register_model

__all__ = ["FCNet"]


class SEScale(nn.Module):
    """Squeeze-excitation-like gate: ``sigmoid(fc2(relu(fc1(x))))``, ``(B, C) -> (B, C)``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))


@register_model("fcnet", aliases=("FCNet",))
class FCNet(nn.Module):
    """The stacker: gate the inputs, then two PReLU layers and a linear output.

    Parameters
    ----------
    in_channels : int
        Input features, e.g. ``n_experiments * num_classes`` probabilities.
    num_classes : int
        Number of output labels.
    base_size : int
        Hidden widths are ``2 * base_size`` then ``base_size``.
    reduction_scale : int
        The gate's hidden width is ``in_channels // reduction_scale``.
    p_dropout : float or None
        Dropout after each hidden layer (``None`` means none).

    Notes
    -----
    Input ``(B, in_channels)``; output logits ``(B, num_classes)`` (a tensor, not a tuple).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_size: int = 64,
        reduction_scale: int = 8,
        p_dropout: float | None = 0.2,
    ):
        super().__init__()
        if in_channels // reduction_scale < 1:
            raise ValueError(f"reduction_scale={reduction_scale} leaves no gate units for in_channels={in_channels}")
        self.p_dropout = p_dropout or 0.0
        self.scale = SEScale(in_channels, in_channels // reduction_scale)
        self.linear1 = nn.Linear(in_channels, 2 * base_size)
        self.relu1 = nn.PReLU()
        self.linear2 = nn.Linear(2 * base_size, base_size)
        self.relu2 = nn.PReLU()
        self.fc = nn.Linear(base_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(x) * x
        x = F.dropout(self.relu1(self.linear1(x)), self.p_dropout, self.training)
        x = F.dropout(self.relu2(self.linear2(x)), self.p_dropout, self.training)
        return self.fc(x)
