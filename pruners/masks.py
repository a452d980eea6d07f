"""Weight masks via torch.nn.utils.prune: which layers take a mask, applying one, and baking them in.

torch.nn.utils.prune keeps `weight_orig` and `weight_mask` and recomputes `weight` before every
forward, so masked weights stay zero while the model fine-tunes.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils import prune

from .graph import observe, output_layers
from .layer_types import PRUNABLE_LAYERS

log = logging.getLogger(__name__)


def maskable_layers(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[str], list[str]]:
    """(conv/linear layers a mask may go on, the output layers that never take one).

    A mask is refreshed by the layer's forward-pre-hook, so a layer whose forward never runs (its
    weight read directly by a parent, as nn.MultiheadAttention and Swin's attention do) is skipped.
    """
    protected = output_layers(model, example_inputs)
    called = _called_layers(model, example_inputs)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_LAYERS) or name in protected:
            continue
        if name in called:
            layers.append(name)
        else:
            log.info("skipping %s: its forward never runs, so a mask on it would never be applied", name)
    return layers, protected


def _called_layers(model: nn.Module, example_inputs: torch.Tensor) -> set[str]:
    """Names of the conv/linear layers whose forward runs in one eval-mode pass."""
    called: set[str] = set()
    observe(model, example_inputs, {m: lambda *_, n=name: called.add(n)
                                    for name, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)}, pre=True)
    return called


def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Put a 0/1 `mask` on `module.weight` (composes with any mask already there)."""
    prune.custom_from_mask(module, "weight", mask.to(dtype=module.weight.dtype, device=module.weight.device))


def bake(model: nn.Module) -> nn.Module:
    """Make every mask permanent in place: plain `weight` parameters holding zeros, no hooks or buffers.

    Saved models are always baked first; a model with no masks passes through unchanged.
    """
    for module in model.modules():
        hooks = module._forward_pre_hooks.values()  # noqa: SLF001 - torch.nn.utils.prune keeps its state in hooks only
        names = [h._tensor_name for h in hooks if isinstance(h, prune.BasePruningMethod)]  # noqa: SLF001
        for name in names:
            prune.remove(module, name)
    return model

