"""Trace a model into torch-pruning's DependencyGraph and read structural facts off it.

Tracing is shared by every method that needs the graph (output-layer protection, channel groups),
so the quirks of tracing (eval mode, gradients on, mode restored afterwards) live in one place.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.MultiheadAttention,
    nn.RNNBase,
)
"""Layers that transform features with a weight matrix; they end an output path."""

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers the methods prune (channels, masks)."""


def forward(model: nn.Module, example_inputs: torch.Tensor) -> torch.Tensor:
    """Call the model on one tensor; torch-pruning's default would unpack the batch as arguments."""
    return model(example_inputs)


@contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, gradients on and every parameter requiring grad while tracing; restore all after.

    torch-pruning traces through autograd, and calls model.eval() without restoring the mode.
    """
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in grads.items():
            p.requires_grad_(flag)


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """The dependency graph of `model` traced on `example_inputs`."""
    with traceable(model):
        return bound_index_mappings(tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=forward, verbose=False
        ))


def output_layers_of(graph: tp.DependencyGraph) -> list[str]:
    """Names of the conv/linear layers whose output reaches a model output through no other weight layer."""
    names = {m: n for n, m in graph.model.named_modules()}
    found = []
    for module, node in graph.module2node.items():
        if isinstance(module, PRUNABLE_LAYERS) and module in names and _reaches_output(node):
            found.append(names[module])
    return found


def _reaches_output(start: tp.dependency.Node) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if not node.outputs:
            return True
        for nxt in node.outputs:
            if nxt not in seen and not isinstance(nxt.module, WEIGHT_LAYERS):
                seen.add(nxt)
                stack.append(nxt)
    return False


def input_coupled_layers(graph: tp.DependencyGraph) -> list[str]:
    """Grouped convs fed straight from the traced module's input: pruning their outputs would prune that input.

    Only needed when a submodule is traced alone, where its input has no producer in the graph.
    """
    names = {m: n for n, m in graph.model.named_modules()}
    found = []
    for module, node in graph.module2node.items():
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and _reaches_input(node):
            found.append(names[module])
    return found


def _reaches_input(start: tp.dependency.Node) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if not node.inputs and node.type != tp.ops.OPTYPE.PARAMETER:
            return True
        for prev in node.inputs:
            if prev not in seen and not isinstance(prev.module, WEIGHT_LAYERS):
                seen.add(prev)
                stack.append(prev)
    return False


class IndexExplosion(RuntimeError):
    """torch-pruning's index mapping grew past any real channel count (it misreads a reshape)."""


class _Bounded:
    """An index mapping that refuses to produce more than `limit` indices.

    torch-pruning reads some reshapes (Swin's window partition, MaxViT's grid attention) as flattens
    and multiplies indices through each of them until memory runs out; this stops that early.
    """

    def __init__(self, inner: object, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __call__(self, idxs: list) -> list:
        stride = getattr(self.inner, "_stride", 1) if not getattr(self.inner, "reverse", True) else 1
        if len(idxs) * stride > self.limit:
            raise IndexExplosion(f"index mapping would produce {len(idxs) * stride} channel indices")
        return self.inner(idxs)


INDEX_LIMIT = 1 << 21
"""Far above the width of any real layer, even a flatten of a large feature map into a classifier."""


class _BoundedMappings(list):
    """A dependency's index-mapping list that bounds every mapping stored in it.

    torch-pruning recomputes the mappings each time it forms a group and stores them by item
    assignment, so the bound has to live in the list itself.
    """

    def __init__(self, items: list, limit: int) -> None:
        super().__init__()
        self.limit = limit
        for item in items:
            self.append(item if item is None or isinstance(item, _Bounded) else _Bounded(item, limit))

    def __setitem__(self, index: int, value: object) -> None:
        if value is not None and not isinstance(value, _Bounded):
            value = _Bounded(value, self.limit)
        super().__setitem__(index, value)


def bound_index_mappings(graph: tp.DependencyGraph, limit: int = INDEX_LIMIT) -> tp.DependencyGraph:
    """Bound every index mapping of `graph` so that a runaway expansion raises IndexExplosion."""
    for node in graph.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = _BoundedMappings(dep.index_mapping, limit)
    return graph


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """The model's output (classifier) layers, found from the traced graph; no method ever prunes them."""
    return output_layers_of(build_graph(model, example_inputs))
