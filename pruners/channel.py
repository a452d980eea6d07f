"""Structured channel pruning with torch-pruning's dependency graph: channels are physically removed."""
from __future__ import annotations

import logging
import math

import torch
import torch_pruning as tp
from torch import nn

from .criteria import CHANNEL_CRITERIA, calibrated, check_calibration, make_importance
from .fixups import fix_attributes
from .graph import PRUNABLE_LAYERS, forward, output_layers_of, traceable
from .groups import ROOT_TYPES, PrunableGroup, groups_of
from .masks import bake
from .registry import Sparsity, register

log = logging.getLogger(__name__)


@register("channel", criteria=CHANNEL_CRITERIA, options=("round_to", "global_pruning", "calibration"))
def channel(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str,
            round_to: int | None = None, global_pruning: bool = False,
            calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """Remove the least important channels of every prunable group.

    A float prunes that fraction of each group (or, with global_pruning, of all channels ranked
    together: Torch-Pruning's global ranking). A dict maps layer names to ratios: any layer in a
    group's out_layers sets that group's ratio; when members of one group disagree the largest wins.
    Unlisted groups are left whole. `round_to` keeps widths multiples of it; `calibration` is the
    (inputs, labels) batch that the `taylor` and `activation` criteria need.
    """
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r} is invalid; use a positive int or None")
    calibration = check_calibration(criterion, calibration)
    bake(model)
    modules = dict(model.named_modules())
    with traceable(model):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=forward, verbose=False)
        protected = output_layers_of(graph)
        ratio, ratio_dict = _ratios(sparsity, groups_of(graph, protected), protected, modules)
        importance = make_importance(criterion)
        pruner = tp.pruner.BasePruner(
            model, example_inputs, importance=importance, global_pruning=bool(global_pruning),
            pruning_ratio=ratio, pruning_ratio_dict=ratio_dict,
            ignored_layers=[modules[n] for n in protected], round_to=_round_to(model, round_to),
            root_module_types=ROOT_TYPES, forward_fn=forward,
        )
        with calibrated(importance, model, calibration):
            pruner.step()
    fix_attributes(model)
    return model


def _ratios(sparsity: Sparsity, groups: list[PrunableGroup], protected: list[str],
            modules: dict[str, nn.Module]) -> tuple[float, dict[nn.Module, float]]:
    """torch-pruning's (pruning_ratio, pruning_ratio_dict) for `sparsity`: one dict entry per group."""
    if not isinstance(sparsity, dict):
        return sparsity, {}
    group_of = {layer: g for g in groups for layer in g.out_layers}
    per_group: dict[str, float] = {}
    for name, ratio in sparsity.items():
        if name in protected:
            log.warning("sparsity key %r is an output layer; output layers are never pruned", name)
        elif name in group_of:
            key = group_of[name].name
            per_group[key] = max(ratio, per_group.get(key, 0.0))
        elif isinstance(modules[name], PRUNABLE_LAYERS):
            log.warning("sparsity key %r is in no prunable group (coupled with an output layer); skipped", name)
        else:
            raise ValueError(
                f"sparsity key {name!r} is a {type(modules[name]).__name__}, not a conv/linear layer; "
                "use the out_layers of prunable_groups()"
            )
    return 0.0, {modules[g]: r for g, r in per_group.items() if r > 0}


def _round_to(model: nn.Module, round_to: int | None) -> int | None:
    """`round_to`, widened to a multiple of every attention head count so embeddings split into heads."""
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if not heads:
        return round_to
    return math.lcm(round_to or 1, *heads)
