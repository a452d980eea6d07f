"""Attribute updates that some models need after their channels change.

torch-pruning resizes weights, but a model that stores a width as a plain attribute and uses it in
forward (torchvision's VisionTransformer reshapes with `hidden_dim`) needs that attribute updated.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer


def fix_attributes(model: nn.Module) -> None:
    """Bring stored widths in line with the pruned weights, in place."""
    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels
