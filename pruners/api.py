"""The one entry point, prune(): validate, copy, and dispatch to the registered method."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .registry import Sparsity, check_call
from .sparsity import check_sparsity


def prune(model: nn.Module, example_inputs: torch.Tensor, method: str = "channel",
          sparsity: Sparsity = 0.5, criterion: str = "l1", **options: Any) -> nn.Module:
    """A pruned copy of `model`; the input model is left untouched.

    `sparsity` is a ratio in [0, 1) or a dict from module names to ratios (see each method for how it
    reads them); output layers are never pruned. Bad arguments raise ValueError naming them.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor):
        raise ValueError(f"example_inputs must be a torch.Tensor batch, got {type(example_inputs).__name__}")
    entry = check_call(method, criterion, options)
    checked = check_sparsity(model, sparsity)
    return entry.fn(copy.deepcopy(model), example_inputs, checked, criterion, **options)
