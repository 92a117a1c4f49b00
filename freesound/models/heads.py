"""Classifier heads over a CNN's feature map, for the families that offer a choice (``head = ...``).

A head takes the last feature map ``(B, C, F, T)`` (channels, mel bands and frames after the
backbone's downsampling) and returns the clip logits ``(B, num_classes)``. Each also has
``framewise(features)``, the class logits of every frame ``(B, T, num_classes)``, for timelines:

- ``"pooled"``: global average pool over mel bands and frames, dropout, linear (timm's own head).
  Its frame-wise logits are the linear layer on each frame's mel-band mean; their mean over the
  frames is the clip logits (in eval mode), as averaging commutes with the linear layer.
- ``"sed"``: sound event detection (PANNs' decision-level attention, Kong et al. 2020, as the
  BirdCLEF 2021-2025 winners used it): mean over mel bands, a 3-frame max + average smoothing,
  dropout, a per-frame 1x1 convolution with ReLU, dropout; then frame-wise class logits (a 1x1
  convolution) and attention weights over time (the softmax over frames of a tanh-clamped 1x1
  convolution); the clip logits are the attention-weighted mean of the frame logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEADS", "PooledHead", "SEDHead", "make_head"]

#: The head names ``make_head`` builds.
HEADS = ("pooled", "sed")


class PooledHead(nn.Module):
    """Global average pool, dropout, linear: ``(B, C, F, T) -> (B, num_classes)``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean((2, 3))))

    def framewise(self, features: torch.Tensor) -> torch.Tensor:
        """Frame logits ``(B, T, num_classes)``: the linear layer on each frame's mel-band mean."""
        return self.fc(features.mean(2).transpose(1, 2))


class SEDHead(nn.Module):
    """Frame-wise class logits pooled over time by attention (see the module docstring).

    ``(B, C, F, T) -> (B, num_classes)``; ``frames_and_weights`` gives the frame logits and the
    attention weights ``(B, num_classes, T)`` whose weighted sum over ``T`` is that output.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.fc = nn.Conv1d(in_channels, in_channels, 1)
        self.attention = nn.Conv1d(in_channels, num_classes, 1)
        self.classifier = nn.Conv1d(in_channels, num_classes, 1)

    def frames_and_weights(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frame logits, attention weights)``, each ``(B, num_classes, T)``; the weights of a
        clip and class sum to 1 over its frames."""
        x = features.mean(2)  # (B, C, T)
        # Smoothing over neighbouring frames, so that one loud frame does not stand alone (PANNs).
        x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        x = F.dropout(x, self.dropout, self.training)
        x = F.dropout(F.relu(self.fc(x)), self.dropout, self.training)
        # tanh keeps the attention logits in [-1, 1]: no frame can take all the weight early on.
        weights = torch.softmax(torch.tanh(self.attention(x)), dim=-1)
        return self.classifier(x), weights

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        frames, weights = self.frames_and_weights(features)
        return (frames * weights).sum(-1)

    def framewise(self, features: torch.Tensor) -> torch.Tensor:
        """Frame logits ``(B, T, num_classes)``."""
        return self.frames_and_weights(features)[0].transpose(1, 2)


def make_head(name: str, in_channels: int, num_classes: int, dropout: float) -> nn.Module:
    """The head ``name`` (one of ``HEADS``) over ``in_channels`` feature channels.

    Raises
    ------
    ValueError
        An unknown head name (the message lists the valid ones).
    """
    if name == "pooled":
        return PooledHead(in_channels, num_classes, dropout)
    if name == "sed":
        return SEDHead(in_channels, num_classes, dropout)
    raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
