"""A backbone cut at its exit points into segments run one after another, so that a batch-1 forward which stops at a
confident head needs no forward hook and no exception: on ResNet-20 at batch 1 the hooks and the raise that unwinds
through the backbone cost 0.007-0.029 of the dense model's time, by exit path (benchmarks/exit_segments.py).

The cut is made on torch.fx's trace of the backbone in which every module that holds no exit point is a leaf, and
each segment is compiled to Python source that looks its modules up on the backbone it is given at call time
(`self.layer1(x)`): a module replaced later (batch norms folded for timing) is the one that runs, and a copy of the
model runs its own modules. Where the backbone does not trace, an exit point is called more than once, or a value
other than an exit's output crosses a cut, there are no segments and the model keeps its hooks.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx
from torch import nn

Segment = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (backbone, input of the segment) -> its output


class _ExitTracer(torch.fx.Tracer):
    """Traces into a module only where an exit point lies inside it: every other module is one call."""

    def __init__(self, exits: list[str]) -> None:
        super().__init__()
        self.exits = exits

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return bool(qualified_name) and (qualified_name in self.exits
                                         or not any(e.startswith(qualified_name + ".") for e in self.exits))


def split_at_exits(backbone: nn.Module, exits: list[str]) -> list[Segment] | None:
    """One segment per exit (the backbone from the previous exit's output up to this exit's), then the rest to the
    backbone's output; None where the backbone cannot be cut so (see the module's docstring)."""
    try:
        graph = _ExitTracer(exits).trace(backbone)
    except Exception:  # noqa: BLE001 - whatever torch.fx cannot trace keeps the hooks, which need no trace
        return None
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    at_exit = [[n for n in nodes if n.op == "call_module" and n.target == name] for name in exits]
    if len(placeholders) != 1 or any(len(found) != 1 for found in at_exit):
        return None
    ends = [found[0] for found in at_exit]
    if [nodes.index(n) for n in ends] != sorted(nodes.index(n) for n in ends):
        return None
    parts: list[list[torch.fx.Node]] = [[]]
    for node in nodes:
        if node.op != "placeholder":
            parts[-1].append(node)
        if node in ends:
            parts.append([])
    starts = [placeholders[0], *ends]
    segments = [_compiled(part, start, ends[k] if k < len(ends) else None) for k, (part, start)
                in enumerate(zip(parts, starts))]
    return None if any(s is None for s in segments) else segments


def _compiled(part: list[torch.fx.Node], start: torch.fx.Node, end: torch.fx.Node | None) -> Segment | None:
    """The nodes of `part` as a function of `start`'s value, returning `end`'s value (None: the graph's output);
    None where a node reads a value from before `start`."""
    graph = torch.fx.Graph()
    values = {start: graph.placeholder("x")}
    for node in part:
        if any(source not in values for source in node.all_input_nodes):
            return None
        if node.op == "output":
            graph.output(torch.fx.map_arg(node.args[0], values.__getitem__))
        else:
            values[node] = graph.node_copy(node, values.__getitem__)
    if end is not None:
        graph.output(values[end])
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, "<exit segment>", "exec"), namespace)  # the source torch.fx generated
    return namespace["forward"]
