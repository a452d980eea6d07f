"""Unstructured magnitude pruning with one threshold across all layers, capped per layer."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .masks import apply_mask, maskable_layers
from .registry import Sparsity, register

log = logging.getLogger(__name__)


@register("global_magnitude", criteria=("l1",), options=("max_layer_sparsity",), knob="scalar",
          sparse_runtime="unstructured sparse kernels (none in dense PyTorch)")
def global_magnitude(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str,
                     max_layer_sparsity: float = 0.95) -> nn.Module:
    """Zero the globally smallest |w| until `sparsity` of all weights are gone, no layer beyond the cap.

    torch.nn.utils.prune.global_unstructured has no per-layer cap, so the threshold is found here and
    the masks are applied with prune.custom_from_mask.
    """
    if isinstance(sparsity, dict):
        raise ValueError("global_magnitude takes one float sparsity, not a per-layer dict; use method='magnitude'")
    if isinstance(max_layer_sparsity, bool) or not 0.0 < float(max_layer_sparsity) <= 1.0:
        raise ValueError(f"max_layer_sparsity={max_layer_sparsity!r} is invalid; use a number in (0, 1]")
    if sparsity == 0.0:
        return model
    layers, _ = maskable_layers(model, example_inputs)
    modules = [dict(model.named_modules())[name] for name in layers]
    magnitudes = [m.weight.detach().abs().flatten() for m in modules]
    counts = capped_counts(magnitudes, sparsity, max_layer_sparsity)
    for module, mags, k in zip(modules, magnitudes, counts):
        if k > 0:
            mask = torch.ones_like(mags)
            mask[torch.topk(mags, k, largest=False).indices] = 0
            apply_mask(module, mask.view_as(module.weight))
    return model


def capped_counts(magnitudes: list[torch.Tensor], sparsity: float, cap: float) -> list[int]:
    """How many weights to zero per layer: all below one global threshold, at most `cap` of any layer."""
    sorted_layers = [m.sort().values for m in magnitudes]
    caps = [int(cap * len(m)) for m in magnitudes]
    total = sum(len(m) for m in magnitudes)
    target = round(sparsity * total)
    if target > sum(caps):
        log.warning("global_magnitude: sparsity %.3f exceeds what the per-layer cap %.2f allows; reaching %.3f",
                    sparsity, cap, sum(caps) / total)
        return caps
    everything = torch.cat(sorted_layers).sort().values

    def zeroed(threshold: torch.Tensor) -> list[int]:
        below = [int(torch.searchsorted(s, threshold, right=True)) for s in sorted_layers]
        return [min(b, c) for b, c in zip(below, caps)]

    lo, hi = 0, total - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(zeroed(everything[mid])) >= target:
            hi = mid
        else:
            lo = mid + 1
    return zeroed(everything[lo])
