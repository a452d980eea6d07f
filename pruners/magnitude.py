"""Unstructured magnitude pruning per layer: in each conv/linear the smallest |w| are masked to zero."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from .masks import maskable_layers
from .registry import Sparsity, register
from .sparsity import layer_ratios


@register("magnitude", criteria=("l1",), knob="per_group",
          sparse_runtime="unstructured sparse kernels (none in dense PyTorch)")
def magnitude(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str) -> nn.Module:
    """Keep W' = {w : |w| > tau_l} with tau_l set so each layer loses its ratio of weights (a dict is per layer)."""
    layers, protected = maskable_layers(model, example_inputs)
    modules = dict(model.named_modules())
    for name, ratio in layer_ratios(sparsity, layers, protected).items():
        if ratio > 0:
            prune.l1_unstructured(modules[name], "weight", amount=ratio)
    return model
