"""Layer pruning: whole residual blocks replaced by nn.Identity.

A block is removable when its input and output shapes match and its forward adds its own input
back (x + f(x)); dropping f leaves the identity path, so the network still runs.
"""
from __future__ import annotations

import logging
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from .criteria import Calibration
from .graph import observe, output_layers
from .layer_types import PRUNABLE_LAYERS
from .registry import Sparsity, register

log = logging.getLogger(__name__)

LAYER_CRITERIA = ("l1", "activation", "random")
_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


class _ChildrenAsLeaves(fx.Tracer):
    """Traces one module's own forward, treating every submodule as an opaque call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _adds_its_input(module: nn.Module) -> bool:
    """Whether module.forward computes `x + f(x)` on its own (single) input x."""
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception:  # noqa: BLE001 - any untraceable forward simply is not a candidate
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    derived, frontier = set(), [inputs[0]]
    while frontier:
        for user in frontier.pop().users:
            if user not in derived:
                derived.add(user)
                frontier.append(user)
    return any(
        n.target in _ADDS and inputs[0] in n.args and any(a in derived for a in n.args)
        for n in graph.nodes if n.op in ("call_function", "call_method")
    )


def removable_blocks(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of the outermost residual blocks that could be replaced by nn.Identity."""
    protected = output_layers(model, example_inputs)
    residual = [name for name, m in model.named_modules() if name and _adds_its_input(m)]
    shapes = _same_shape(model, example_inputs, residual)
    blocks = []
    for name in residual:
        holds_output = any(p == name or p.startswith(name + ".") for p in protected)
        nested = any(name.startswith(b + ".") for b in blocks)
        if shapes.get(name) and not holds_output and not nested:
            blocks.append(name)
    return blocks


def _same_shape(model: nn.Module, inputs: torch.Tensor, names: list[str]) -> dict[str, bool]:
    """For each named module reached by a forward pass, whether its output shape equals its input's."""
    seen: dict[str, bool] = {}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple, out: object) -> None:
            same = len(args) == 1 and isinstance(out, torch.Tensor) and args[0].shape == out.shape
            seen[name] = seen.get(name, True) and same
        return record

    observe(model, inputs, {modules[n]: hook(n) for n in names})
    return seen


def block_scores(model: nn.Module, blocks: list[str], criterion: str, inputs: torch.Tensor) -> dict[str, float]:
    """Importance of each block (low = removed first).

    l1: mean |w| of the block's conv/linear weights. activation: ||f(x)|| / ||x||, how much the block
    changes its input on `inputs`. random: uniform noise.
    """
    modules = dict(model.named_modules())
    if criterion == "random":
        return {b: float(torch.rand(())) for b in blocks}
    if criterion == "l1":
        scores = {}
        for b in blocks:
            weights = [m.weight.detach().abs().flatten() for m in modules[b].modules()
                       if isinstance(m, PRUNABLE_LAYERS)]
            scores[b] = float(torch.cat(weights).mean()) if weights else 0.0
        return scores
    sums: dict[str, float] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            sums[name] = sums.get(name, 0.0) + float((out - args[0]).norm() / args[0].norm().clamp_min(1e-12))
        return record

    observe(model, inputs, {modules[b]: hook(b) for b in blocks})
    return {b: sums.get(b, 0.0) for b in blocks}


@register("layer", criteria=LAYER_CRITERIA, options=("blocks", "calibration", "block_order"), knob="scalar",
          removes_work=True, search_criteria=("l1",), calibrated=("activation",), subsumed_by="channel")
def layer(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str,
          blocks: int | None = None, calibration: Calibration | torch.Tensor | None = None,
          block_order: list[str] | None = None) -> nn.Module:
    """Replace the least important removable blocks by nn.Identity.

    `sparsity` is the fraction of removable blocks removed (rounded half up); `blocks` gives the count
    directly and overrides it. The activation criterion measures on `calibration` inputs when
    given, else on `example_inputs`. `block_order` names every removable block, first removed first (a measured
    ranking, search.sensitivity), in place of the criterion's.
    """
    if isinstance(sparsity, dict):
        raise ValueError("method 'layer' takes one float sparsity, not a per-layer dict; "
                         "use option blocks=N for a count")
    if blocks is None and sparsity == 0:
        return model
    candidates = removable_blocks(model, example_inputs)
    if not candidates:
        log.warning("layer: the model has no removable residual blocks; nothing removed")
    count = int(sparsity * len(candidates) + 0.5) if blocks is None else blocks
    remove_blocks(model, example_inputs, count, criterion, calibration, candidates, block_order)
    return model


def remove_blocks(model: nn.Module, example_inputs: torch.Tensor, count: int, criterion: str = "l1",
                  calibration: Calibration | torch.Tensor | None = None, candidates: list[str] | None = None,
                  order: list[str] | None = None) -> list[str]:
    """Replace the `count` least important removable blocks of `model` by nn.Identity (by the criterion's scores,
    or the first `count` of `order`, which must name every removable block); returns their names."""
    if type(count) is int and count == 0 and order is None:
        return []  # nothing to remove: skips tracing every submodule (~70 ms), which each channel-only prune paid
    candidates = removable_blocks(model, example_inputs) if candidates is None else candidates
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= len(candidates):
        raise ValueError(f"blocks={count!r} is invalid; use an int in [0, {len(candidates)}] for this model")
    if order is not None and sorted(order) != sorted(candidates):
        raise ValueError(f"block_order={order!r} must name each removable block of this model once: {candidates}")
    if count == 0:
        return []
    if order is None:
        inputs = calibration[0] if isinstance(calibration, (tuple, list)) else calibration
        scores = block_scores(model, candidates, criterion, example_inputs if inputs is None else inputs)
        order = sorted(candidates, key=scores.__getitem__)
    removed = order[:count]
    for name in removed:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
        log.info("layer: replaced block %s by nn.Identity", name)
    return removed
