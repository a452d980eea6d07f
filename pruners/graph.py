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
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=forward, verbose=False
        )


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


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """The model's output (classifier) layers, found from the traced graph; no method ever prunes them."""
    return output_layers_of(build_graph(model, example_inputs))
