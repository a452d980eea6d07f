"""Structured channel pruning with torch-pruning's dependency graph: channels are physically removed."""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .criteria import (
    CALIBRATED,
    CHANNEL_CRITERIA,
    SEARCH_CRITERIA,
    check_calibration,
    clean_signals,
    gather_signals,
    make_importance,
)
from .fallback import by_parts
from .fixups import fix_attributes
from .graph import build_graph, forward, traceable
from .groups import ROOT_TYPES, PrunableGroup, groups_of, protected_layers
from .layer import remove_blocks
from .masks import bake
from .reconstruct import reconstruct as reconstruct_layers
from .registry import Sparsity, register
from .sparsity import check_layer_keys

log = logging.getLogger(__name__)
CHANNEL_OPTIONS = ("round_to", "global_pruning", "calibration", "blocks", "reconstruct", "block_order")


@register("channel", criteria=CHANNEL_CRITERIA,
          options=CHANNEL_OPTIONS, knob="per_group",
          removes_work=True, search_criteria=SEARCH_CRITERIA, calibrated=CALIBRATED, global_ranking=True)
def channel(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str,
            round_to: int | None = None, global_pruning: bool = False,
            calibration: tuple[torch.Tensor, torch.Tensor] | None = None, blocks: int = 0,
            reconstruct: bool = False, block_order: list[str] | None = None) -> nn.Module:
    """Remove the least important channels of every prunable group.

    A float prunes that fraction of each group (or, with global_pruning, of all channels ranked
    together: Torch-Pruning's global ranking). A dict maps layer names to ratios: any layer in a
    group's out_layers sets that group's ratio; when members of one group disagree the largest wins.
    Unlisted groups are left whole. `round_to` keeps widths multiples of it; `calibration` is the
    (inputs, labels) batch that the `taylor` and `activation` criteria need. `blocks` first removes that many
    residual blocks (layer pruning, l1 ranking, or the first of `block_order`): depth and width pruned together,
    which at small batch sizes cuts time that thinner layers cannot, since every layer pays a fixed launch cost.
    `reconstruct` then refits every layer that lost inputs to reproduce the dense outputs on the calibration batch's
    inputs (reconstruct.py). Parts of a model that torch-pruning cannot trace are pruned piecewise or skipped (see
    fallback.py), with a warning.
    """
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r} is invalid; use a positive int or None")
    if reconstruct and not (isinstance(calibration, (tuple, list)) and isinstance(calibration[0], torch.Tensor)):
        raise ValueError("option reconstruct=True needs calibration=(inputs, labels): the inputs it refits layers on")
    dense = copy.deepcopy(model) if reconstruct else None
    inputs = calibration[0] if reconstruct else None
    calibration = check_calibration(criterion, calibration)
    check_layer_keys(model, sparsity)
    removed = remove_blocks(model, example_inputs, blocks, order=block_order)
    if removed and isinstance(sparsity, dict):
        sparsity = {k: r for k, r in sparsity.items() if not any(k == b or k.startswith(b + ".") for b in removed)}
    bake(model)
    plan = _Plan(make_importance(criterion), sparsity, bool(global_pruning), _round_to(model, round_to))
    with traceable(model):
        gather_signals(plan.importance, model, calibration)
    pruned = by_parts(model, example_inputs, plan.attempt)
    clean_signals(pruned)
    fix_attributes(pruned)
    if dense is not None:
        reconstruct_layers(pruned, dense, inputs)
    return pruned


@dataclass
class _Plan:
    """What to prune, applied to the whole model or to one part of it."""

    importance: tp.importance.Importance
    sparsity: Sparsity
    global_pruning: bool
    round_to: int | None

    def attempt(self, module: nn.Module, inputs: torch.Tensor, name: str, whole_model: bool) -> nn.Module:
        """A pruned copy of `module` (or `module` itself when nothing in it is to be pruned); raises on failure."""
        graph = build_graph(module, inputs)
        protected = protected_layers(module, inputs, graph, whole_model)
        groups = groups_of(graph, protected)
        ratio, ratio_dict = self._ratios(groups, protected, name)
        if ratio == 0 and not ratio_dict:
            return module
        with traceable(module), torch.no_grad():
            expected = forward(module, inputs).shape
        work = _copy_with_grads(module)
        modules = dict(work.named_modules())
        with traceable(work):
            pruner = tp.pruner.BasePruner(
                work, inputs, importance=self.importance, global_pruning=self.global_pruning,
                pruning_ratio=ratio, pruning_ratio_dict={modules[n]: r for n, r in ratio_dict.items()},
                ignored_layers=[modules[n] for n in protected], round_to=self.round_to,
                max_pruning_ratio=min((self._capped(1.0, g.channels) for g in groups), default=1.0),
                root_module_types=ROOT_TYPES, forward_fn=forward,
            )
            pruner.step()
            fix_attributes(work)
            with torch.no_grad():
                got = forward(work, inputs).shape
        if got != expected:
            raise RuntimeError(f"pruned output shape {tuple(got)} differs from {tuple(expected)}")
        if not whole_model and self.global_pruning:
            log.info("channel: %s ranked on its own; global ranking spans one part at a time here", name)
        return work

    def _ratios(self, groups: list[PrunableGroup], protected: list[str],
                prefix: str) -> tuple[float, dict[str, float]]:
        """torch-pruning's pruning_ratio and a per-group dict of ratios (keyed by group name) for this part."""
        if not isinstance(self.sparsity, dict):
            return min((self._capped(self.sparsity, g.channels) for g in groups), default=self.sparsity), {}
        local = {k[len(prefix) + 1:] if prefix else k: r for k, r in self.sparsity.items()
                 if not prefix or k.startswith(prefix + ".")}
        group_of = {layer: g for g in groups for layer in g.out_layers}
        per_group: dict[str, float] = {}
        for key, ratio in local.items():
            if key in group_of:
                root = group_of[key].name
                per_group[root] = max(ratio, per_group.get(root, 0.0))
            elif ratio > 0:
                where = "an output layer" if key in protected else "in no prunable group"
                log.warning("channel: sparsity key %r is %s here; skipped", f"{prefix}.{key}" if prefix else key, where)
        channels = {g.name: g.channels for g in groups}
        return 0.0, {g: self._capped(r, channels[g]) for g, r in per_group.items() if r > 0}

    def _capped(self, ratio: float, channels: int) -> float:
        """`ratio`, lowered so that at least `round_to` channels stay: Torch-Pruning rounds the kept width down
        to a multiple of round_to and leaves a group whole when that reaches zero, so more pruning would prune less."""
        step = self.round_to or 1
        return min(ratio, max(0.0, (channels - step) / channels - 1e-6))


def _copy_with_grads(module: nn.Module) -> nn.Module:
    """A deep copy that keeps parameter gradients (deepcopy drops them; the taylor criterion reads them)."""
    work = copy.deepcopy(module)
    for src, dst in zip(module.parameters(), work.parameters()):
        if src.grad is not None:
            dst.grad = src.grad.clone()
    return work


def _round_to(model: nn.Module, round_to: int | None) -> int | None:
    """`round_to`, widened to a multiple of every attention head count so embeddings split into heads."""
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if not heads:
        return round_to
    return math.lcm(round_to or 1, *heads)
