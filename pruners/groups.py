"""Prunable channel groups: the sets of coupled channels that torch-pruning's DependencyGraph finds.

The search space puts one sparsity knob on each group; `name` is the key of that knob.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .graph import PRUNABLE_LAYERS, build_graph, output_layers_of

ROOT_TYPES: list[type[nn.Module]] = [nn.modules.conv._ConvNd, nn.Linear]


@dataclass(frozen=True)
class PrunableGroup:
    """One independently prunable set of coupled channels."""

    name: str  # the root layer's module name, the key of the group's knob
    out_layers: tuple[str, ...]  # conv/linear module names whose output channels this group removes
    in_layers: tuple[str, ...]  # conv/linear module names whose input channels shrink with it
    channels: int


def groups_of(graph: tp.DependencyGraph, protected: list[str]) -> list[PrunableGroup]:
    """The prunable groups of a traced graph, leaving out every group that touches a protected layer's outputs."""
    names = {m: n for n, m in graph.model.named_modules()}
    modules = dict(graph.model.named_modules())
    ignored = [modules[n] for n in protected]
    found = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
        outs, ins = [], []
        for dep, _ in group:
            layer = dep.target.module
            if not isinstance(layer, PRUNABLE_LAYERS) or layer not in names:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                outs.append(names[layer])
            elif graph.is_in_channel_pruning_fn(dep.handler):
                ins.append(names[layer])
        root = group[0].dep.target.module
        found.append(PrunableGroup(
            name=names[root],
            out_layers=tuple(dict.fromkeys(outs)),
            in_layers=tuple(dict.fromkeys(ins)),
            channels=len(group[0].idxs),
        ))
    return found


def prunable_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[PrunableGroup]:
    """The model's groups of coupled channels, one per independently prunable set (output layers excluded)."""
    graph = build_graph(model, example_inputs)
    return groups_of(graph, output_layers_of(graph))
