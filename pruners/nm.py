"""N:M semi-structured masks: at most N nonzero weights in every M consecutive input channels.

The sparsity argument does not set the amount: each masked layer ends at 1 - N/M. A float sparsity
of 0 prunes nothing (as for every method), any other float masks every eligible layer; a dict masks
the layers whose ratio is above 0.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .masks import apply_mask, maskable_layers
from .registry import Sparsity, register
from .sparsity import layer_ratios

log = logging.getLogger(__name__)


@register("nm", criteria=("l1",), options=("n", "m"), knob="pattern",
          sparse_runtime="2:4 sparse tensor cores (torch.sparse.to_sparse_semi_structured, NVIDIA Ampere or newer)")
def nm(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str,
       n: int = 2, m: int = 4) -> nn.Module:
    """Keep the N largest |w| of every M along the input dimension of each conv/linear."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"n={n!r}, m={m!r} is not a valid N:M pattern; use integers with 0 < n < m, e.g. n=2, m=4")
    layers, protected = maskable_layers(model, example_inputs)
    modules = dict(model.named_modules())
    for name, ratio in layer_ratios(sparsity, layers, protected).items():
        if ratio == 0:
            continue
        weight = modules[name].weight
        if weight.shape[1] % m:
            log.info("nm: skipping %s: its %d input channels do not split into groups of %d", name, weight.shape[1], m)
            continue
        apply_mask(modules[name], nm_mask(weight.detach(), n, m))
    return model


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """A 0/1 mask keeping the n largest |w| in each group of m along dim 1 (the input channels)."""
    last = weight.movedim(1, -1)
    groups = last.reshape(-1, m).abs()
    mask = torch.zeros_like(groups).scatter_(1, groups.topk(n, dim=1).indices, 1.0)
    return mask.reshape(last.shape).movedim(-1, 1)
