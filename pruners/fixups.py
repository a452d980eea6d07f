"""Attribute updates that some models need after their channels change.

torch-pruning resizes weights, but a model that stores a width as a plain attribute and uses it in
forward (torchvision's VisionTransformer reshapes with `hidden_dim`) needs that attribute updated.
"""
from __future__ import annotations

import sys

from torch import nn


def fix_attributes(model: nn.Module) -> None:
    """Bring stored widths in line with the pruned weights, in place."""
    # A model holds a VisionTransformer only if its module was imported: importing torchvision here would add about
    # 3 s (it loads torch._dynamo) to every start of the CLI, most of whose models are not torchvision's.
    vision_transformer = sys.modules.get("torchvision.models.vision_transformer")
    if vision_transformer is None:
        return
    for module in model.modules():
        if isinstance(module, vision_transformer.VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels
