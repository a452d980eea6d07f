"""Divide and conquer for models torch-pruning cannot handle whole.

When tracing or pruning a module fails (channel shuffles, window attention), its parts are tried
one by one, each traced alone on the input it received, so the parts torch-pruning does understand
still get pruned; the rest is skipped with a logged reason.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from .graph import observe
from .layer_types import PRUNABLE_LAYERS

log = logging.getLogger(__name__)

Attempt = Callable[[nn.Module, torch.Tensor, str, bool], nn.Module]
"""attempt(module, inputs, name, whole_model) -> module to put in its place; raises when it cannot."""


def by_parts(module: nn.Module, inputs: torch.Tensor, attempt: Attempt, name: str = "",
             whole_model: bool = True) -> nn.Module:
    """`attempt` on `module`; where it fails, on each of its parts in turn. Returns the (replaced) module."""
    if sum(isinstance(m, PRUNABLE_LAYERS) for m in module.modules()) < 2:
        return module
    try:
        return attempt(module, inputs, name, whole_model)
    except Exception as error:  # noqa: BLE001 - torch-pruning fails in many ways; each means "split further"
        log.warning("channel: torch-pruning cannot prune %s whole (%s: %s); pruning its parts separately",
                    name or "the model", type(error).__name__, str(error)[:200])
    for part, part_inputs in part_inputs_of(module, inputs, name).items():
        child = module.get_submodule(part)
        full = f"{name}.{part}" if name else part
        pruned = by_parts(child, part_inputs, attempt, full, whole_model=False)
        if pruned is not child:
            parent, _, leaf = part.rpartition(".")
            setattr(module.get_submodule(parent), leaf, pruned)
    return module


def part_inputs_of(module: nn.Module, inputs: torch.Tensor, name: str = "") -> dict[str, torch.Tensor]:
    """The parts of `module` that can be traced alone, each with the tensor it received in one forward.

    A part is a child called once with one tensor; a child never called itself (a ModuleList, say)
    is looked into for such parts. Parts called more than once, or with anything but one tensor,
    cannot be traced alone and are skipped with a logged reason.
    """
    calls: dict[str, list] = {sub: [] for sub, _ in module.named_modules() if sub}

    def recorder(sub: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            one_tensor = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            calls[sub].append(args[0] if one_tensor else None)
        return record

    observe(module, inputs, {m: recorder(sub) for sub, m in module.named_modules() if sub}, pre=True)
    found: dict[str, torch.Tensor] = {}
    pending = [child for child, _ in module.named_children()]
    while pending:
        sub = pending.pop(0)
        seen = calls[sub]
        if len(seen) == 1 and seen[0] is not None:
            found[sub] = seen[0]
        elif not seen:
            pending += [f"{sub}.{child}" for child, _ in module.get_submodule(sub).named_children()]
        elif any(isinstance(m, PRUNABLE_LAYERS) for m in module.get_submodule(sub).modules()):
            log.warning("channel: skipping %s: called %d times or not with one tensor, so it cannot be traced alone",
                        f"{name}.{sub}" if name else sub, len(seen))
    return found
