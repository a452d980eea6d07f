"""Weight masks via torch.nn.utils.prune: which layers take a mask, applying one, and baking them in.

torch.nn.utils.prune keeps `weight_orig` and `weight_mask` and recomputes `weight` before every
forward, so masked weights stay zero while the model fine-tunes.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils import prune

from .graph import PRUNABLE_LAYERS, output_layers

log = logging.getLogger(__name__)


def maskable_layers(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[str], list[str]]:
    """(conv/linear layers a mask may go on, the output layers that never take one)."""
    protected = output_layers(model, example_inputs)
    inside_attention = {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, _ in module.named_modules()
        if child
    }
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_LAYERS) or name in protected:
            continue
        if name in inside_attention:
            # nn.MultiheadAttention reads out_proj.weight without calling out_proj, so a
            # forward-pre-hook mask would never be refreshed during training.
            log.info("skipping %s: a projection inside nn.MultiheadAttention cannot hold a mask", name)
            continue
        layers.append(name)
    return layers, protected


def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Put a 0/1 `mask` on `module.weight` (composes with any mask already there)."""
    prune.custom_from_mask(module, "weight", mask.to(dtype=module.weight.dtype, device=module.weight.device))


def bake(model: nn.Module) -> nn.Module:
    """Make every mask permanent in place: plain `weight` parameters holding zeros, no hooks or buffers.

    Saved models are always baked first; a model with no masks passes through unchanged.
    """
    for module in model.modules():
        names = [h._tensor_name for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
        for name in names:
            prune.remove(module, name)
    return model


def is_masked(model: nn.Module) -> bool:
    """Whether any module of `model` carries a torch.nn.utils.prune mask."""
    return any(prune.is_pruned(m) for m in model.modules())
