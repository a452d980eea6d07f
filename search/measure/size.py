"""Model size: parameter counts (optionally nonzero only), the bytes of the saved module and of its packed weights."""

from __future__ import annotations

import io

import torch
from torch import nn

from search.packed import packed_bytes


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


def compressed_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict with masked weights packed (search.packed): what a masked model ships at."""
    return packed_bytes(model.state_dict())


def compressed_fields(model: nn.Module, dense_compressed_bytes: int) -> dict[str, int | float | None]:
    """Measured's compressed_bytes and compressed_ratio for `model` (the ratio None where dense has no figure, as in
    runs made before it)."""
    compressed = compressed_size_bytes(model)
    return {"compressed_bytes": compressed,
            "compressed_ratio": compressed / dense_compressed_bytes if dense_compressed_bytes else None}
