"""The module types pruning and measurement reason about, named once: torch's common bases are private names."""
from __future__ import annotations

from torch import nn

CONV: type[nn.Module] = nn.modules.conv._ConvNd  # noqa: SLF001 - the one base of every Conv*d and ConvTranspose*d
BATCH_NORM: type[nn.Module] = nn.modules.batchnorm._BatchNorm  # noqa: SLF001 - the one base of every BatchNorm*d

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (CONV, nn.Linear)
"""Layers the methods prune (channels, masks) and the cost models count."""

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (CONV, nn.Linear, nn.MultiheadAttention, nn.RNNBase)
"""Layers that transform features with a weight matrix; they end an output path."""
