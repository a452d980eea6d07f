"""Prunable channel groups: the sets of coupled channels that torch-pruning's DependencyGraph finds.

The search space puts one sparsity knob on each group; `name` is the key of that knob.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .fallback import by_parts
from .graph import build_graph, input_coupled_layers, output_layers
from .layer_types import PRUNABLE_LAYERS

ROOT_TYPES: list[type[nn.Module]] = list(PRUNABLE_LAYERS)


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


def protected_layers(module: nn.Module, inputs: torch.Tensor, graph: tp.DependencyGraph,
                     whole_model: bool) -> list[str]:
    """Layers whose output channels must stay: output layers, and for a part traced alone its input-coupled ones."""
    return output_layers(module, inputs) + ([] if whole_model else input_coupled_layers(graph))


def prunable_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[PrunableGroup]:
    """The model's groups of coupled channels, one per independently prunable set (output layers excluded).

    Parts that torch-pruning cannot trace whole are split as `channel` splits them, so these are
    exactly the groups that channel pruning acts on, named by full module names.
    """
    found: list[PrunableGroup] = []

    def collect(module: nn.Module, inputs: torch.Tensor, name: str, whole_model: bool) -> nn.Module:
        graph = build_graph(module, inputs)
        groups = groups_of(graph, protected_layers(module, inputs, graph, whole_model))
        found.extend(_prefixed(g, name) for g in groups)
        return module

    by_parts(model, example_inputs, collect)
    return found


def _prefixed(group: PrunableGroup, prefix: str) -> PrunableGroup:
    if not prefix:
        return group
    return PrunableGroup(
        name=f"{prefix}.{group.name}",
        out_layers=tuple(f"{prefix}.{n}" for n in group.out_layers),
        in_layers=tuple(f"{prefix}.{n}" for n in group.in_layers),
        channels=group.channels,
    )
