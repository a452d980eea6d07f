"""Model size: parameter counts (optionally nonzero only) and the bytes of the saved module."""

from __future__ import annotations

import io

import torch
from torch import nn


def count_params(model: nn.Module, nonzero_only: bool = False) -> int:
    """Number of parameters; with ``nonzero_only`` only the nonzero ones of each effective weight.

    Under torch.nn.utils.prune a weight lives as ``<name>_orig`` (parameter) and ``<name>_mask``
    (buffer); the effective weight is their product, counted once. Shared parameters count once.
    """
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if not nonzero_only:
                total += param.numel()
                continue
            mask = getattr(module, name.removesuffix("_orig") + "_mask", None) if name.endswith("_orig") else None
            with torch.no_grad():
                total += int(torch.count_nonzero(param if mask is None else param * mask))
    return total


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model)`` (the whole module, as ``best/model.pt`` is written)."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getbuffer().nbytes
