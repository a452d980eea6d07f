"""The search space: a method, its criterion and options, a relative allocation per channel group, a cost target.

Budget-aware: the sampled allocation is only a shape; `policy(params, level)` scales it, and `initial_level`
solves the level that the cost model predicts lands on the sampled target, so no trial is wasted far over budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from dynamic import exit_points
from pruners import PrunableGroup, get_method, prunable_groups, removable_blocks
from spaces.cost_model import CostModel
from spaces.policy import Policy

MAX_SPARSITY = 0.9
ROUND_TO = (1, 4, 8)
RANKINGS = ("per_group", "global")  # global: Torch-Pruning ranks all groups together and the level is the overall ratio
ALLOCATIONS = ("shaped", "free", "sensitivity")  # shaped: two knobs over every group (few trials find it); free: one
# knob per group; sensitivity: the run's sensitivity map (search.sensitivity) to a searched power, where it has one
STREAM_SHARE = (0.25, 2.0)  # shaped: weight of coupled groups (residual streams) against single-layer ones
DEPTH_TILT = (-0.9, 0.9)  # shaped: weights grow (> 0) or shrink (< 0) linearly with depth
FREE_WEIGHT = (0.25, 1.0)  # free: one relative weight per group (wider spreads screened near chance on ResNet-20)
SENSITIVITY_POWER = (0.25, 2.0)  # sensitivity: each group's efficiency (cost saved per accuracy lost) to this power
SENSITIVITY_FLOOR = 0.05  # sensitivity: the least relative weight, so every group can still reach its cap
NM_PATTERNS = ("2:4", "1:4", "2:8", "1:8")
DISTILL = (0.0, 0.5, 0.9)  # weight of distillation from the dense model in the recovery loss
DISTILL_TEMPERATURE = (2.0, 4.0, 8.0)  # softening of both models' outputs in the distillation term (where it is on)
MAX_EXITS = 3  # dynamic: early exits offered, at most (spread over the network's stage outputs)
EXIT_SHARE = (0.2, 1.0)  # dynamic: the exits' share of the cost cut, in log space (1: the backbone stays whole)
THIN = (True, False)  # dynamic, with removable blocks: whether channels are pruned besides blocks (False: the exits
# make the rest of the cut; at batch 1 a thinned layer's time falls about linearly with its width, FLOPs as its square)
# What each knob of describe() without a "meaning" of its own does; the report's searched-space table reads them.
KNOB_MEANINGS = {
    "methods": "pruning methods a trial chooses among (pruners.registry)",
    "criteria": "per method, the ranking criteria a trial chooses among",
    "round_to": "kept channels rounded to a multiple of this (hardware-friendly widths)",
    "ranking": "per_group: each group pruned to its own ratio; global: one ranking across groups (Torch-Pruning)",
    "nm_patterns": "N:M patterns (keep N of every M weights) the nm method chooses among",
    "lr_scale": "multiplier of base_lr for the recovery fine-tune (log scale)",
    "base_lr": "the workload's fine-tuning learning rate",
    "distill": "weight a of distillation from the dense model: (1 - a) CE + a T^2 KL",
    "distill_temperature": "temperature T of the distillation term",
    "max_group_sparsity": "the most of any group's channels a trial may remove",
    "allocation": "how a trial splits the cut among channel groups",
}
QUANTIZATIONS = ("none", "int8")  # a point's `quantize` choices with --quantize (search.quantize does the int8 one)


class SpaceError(ValueError):
    """The model offers nothing to search for the chosen methods; the message says what to change."""


class Suggester(Protocol):
    """The part of optuna.Trial the space uses (define-by-run), so the space stays free of Optuna."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass
class SearchSpace:
    """Everything searched for one model: built once per run from the model's prunable groups."""

    methods: tuple[str, ...]
    groups: list[PrunableGroup]
    cost_model: CostModel
    budget: float
    base_lr: float
    depth: dict[str, float]  # group -> position in the network, 0 (input side) to 1 (output side)
    target_floor: float = 0.6  # the lowest cost target a trial aims at, as a fraction of the budget
    round_to: tuple[int, ...] = ROUND_TO  # the round_to values offered (those that can reach the budget)
    blocks: int = 0  # removable residual blocks: a per-group method that takes `blocks` may drop up to this many
    block_share: float = 0.0  # mean share of the dense cost (FLOPs, or time with --cost latency) in one removable block
    sensitivity: dict[str, float] | None = None  # group -> cost saved per accuracy lost, pruned alone (measured)
    block_order: tuple[str, ...] = ()  # removable blocks, first removed first, by the sensitivity map (else: l1)
    exit_choices: tuple[int, ...] = ()  # dynamic: how many early exits a point may have (the network's stage outputs)
    quantize: bool = False  # whether a static point may be quantised to int8 after recovery (--quantize)
    int8_factor: float = 1.0  # the dense model's cost int8 over float, in the run's metric: an int8 point's float
    # model is fitted to its target over this (size: about 0.3; latency: as measured; FLOPs and params: 1)

    @classmethod
    def build(cls, model: nn.Module, example_inputs: torch.Tensor, layer_flops: dict[str, int], total_flops: int,
              methods: tuple[str, ...], budget: float, base_lr: float, target_floor: float = 0.6,
              round_to: tuple[int, ...] = ROUND_TO, layer_cost: dict[str, float] | None = None) -> "SearchSpace":
        """`layer_cost`: each layer's share of the run's cost (e.g. its time), for how much one block is worth;
        FLOPs when not given."""
        groups = prunable_groups(model, example_inputs)
        per_group = [m for m in methods if get_method(m).knob == "per_group"]
        if not groups and per_group:
            raise SpaceError(f"the model has no prunable channel groups for --methods {','.join(per_group)}; "
                             "use methods with one ratio for the whole model (global_magnitude, layer) or nm")
        deepens = any("blocks" in get_method(m).options and get_method(m).knob == "per_group" for m in methods)
        blocks = removable_blocks(model, example_inputs) if deepens else []
        costs, total = (layer_flops, total_flops) if layer_cost is None else (layer_cost, sum(layer_cost.values()))
        in_blocks = sum(c for name, c in costs.items() if any(name.startswith(b + ".") for b in blocks))
        exits = len(exit_points(model, example_inputs, MAX_EXITS)) if any(get_method(m).dynamic for m in methods) else 0
        if any(get_method(m).dynamic for m in methods) and not exits:
            raise SpaceError(f"{type(model).__name__} has no stage output with weighted layers after it, so no early "
                             "exit fits: leave out --methods dynamic")
        return cls(tuple(methods), groups, CostModel.build(layer_flops, total_flops, groups), budget, base_lr,
                   _depths(model, groups), target_floor, tuple(round_to) or (1,), len(blocks),
                   in_blocks / total / len(blocks) if blocks else 0.0, exit_choices=tuple(range(1, exits + 1)))

    def target_range(self) -> tuple[float, float]:
        """Cost-ratio targets the search samples from: up to the budget, down to `target_floor` of it."""
        return max(0.02, self.target_floor * self.budget), self.budget

    def nm_patterns(self) -> list[str]:
        """N:M patterns whose predicted cost fits the budget (2:4 first: the one sparse tensor cores run)."""
        fitting = [p for p in NM_PATTERNS
                   if self.cost_model.masked_ratio({g.name: _nm_sparsity(p) for g in self.groups}) <= self.budget]
        return fitting or [NM_PATTERNS[-1]]

    def suggest(self, trial: Suggester) -> dict[str, Any]:
        """Sample the parameters of one trial (define-by-run: only what the chosen method uses)."""
        method = trial.suggest_categorical("method", list(self.methods))
        traits = get_method(method)
        params: dict[str, Any] = {"method": method}
        params["lr_scale"] = trial.suggest_float("lr_scale", 0.3, 3.0, log=True)
        params["distill"] = trial.suggest_categorical("distill", list(DISTILL))
        if params["distill"] > 0:
            params["temperature"] = trial.suggest_categorical("temperature", list(DISTILL_TEMPERATURE))
        if self.quantize and not traits.dynamic:
            params["quantize"] = trial.suggest_categorical("quantize", list(QUANTIZATIONS))
        if traits.knob == "pattern":
            params["pattern"] = trial.suggest_categorical("pattern", self.nm_patterns())
            return params
        params["target"] = trial.suggest_float("target", *self.target_range())
        if traits.dynamic and self.blocks and "blocks" in traits.options:
            params["thin"] = trial.suggest_categorical("thin", list(THIN))
        if not self.thins_channels(params):
            return self._suggest_exits(trial, params)  # its exit share alone sets how many blocks go (removed_blocks)
        if len(traits.searched_criteria) > 1:
            params["criterion"] = trial.suggest_categorical("criterion", list(traits.searched_criteria))
        if "round_to" in traits.options:
            params["round_to"] = trial.suggest_categorical("round_to", list(self.round_to))
        if traits.global_ranking:
            params["ranking"] = trial.suggest_categorical("ranking", list(RANKINGS))
        if traits.knob == "per_group" and "blocks" in traits.options and self.blocks:
            params["depth"] = trial.suggest_float("depth", 0.0, 1.0)
        if "reconstruct" in traits.options:
            params["reconstruct"] = trial.suggest_categorical("reconstruct", [False, True])
        if traits.dynamic:
            self._suggest_exits(trial, params)
        if traits.knob == "per_group" and params.get("ranking", "per_group") == "per_group":
            params["allocation"] = trial.suggest_categorical("allocation", self.allocations())
            if params["allocation"] == "sensitivity":
                params["sensitivity_power"] = trial.suggest_float("sensitivity_power", *SENSITIVITY_POWER)
            elif params["allocation"] == "shaped":
                params["stream_share"] = trial.suggest_float("stream_share", *STREAM_SHARE, log=True)
                params["depth_tilt"] = trial.suggest_float("depth_tilt", *DEPTH_TILT)
            else:
                for group in self.groups:
                    params[f"a:{group.name}"] = trial.suggest_float(f"a:{group.name}", *FREE_WEIGHT)
        return params

    def _suggest_exits(self, trial: Suggester, params: dict[str, Any]) -> dict[str, Any]:
        """A dynamic point's exits: how many, and their share of the cost cut."""
        params["exits"] = trial.suggest_categorical("exits", list(self.exit_choices))
        params["exit_share"] = trial.suggest_float("exit_share", *EXIT_SHARE)
        return params

    @staticmethod
    def thins_channels(params: dict[str, Any]) -> bool:
        """Whether the point prunes channels to its target: all but a dynamic point that only removes blocks (`thin`
        False), whose backbone keeps its widths and whose exits make the rest of the cut."""
        return bool(params.get("thin", True))

    def backbone_target(self, params: dict[str, Any], target: float) -> float:
        """The cost ratio the pruned float model is fitted to: `target` itself; for an int8 point target over
        int8_factor (quantisation makes the rest of the cut); for a dynamic point the part of the cut its exits do not
        make (target ** (1 - exit_share); the exits take the backbone's cost down to `target`)."""
        if params.get("quantize") == "int8":
            return min(1.0, target / self.int8_factor)
        if not get_method(params["method"]).dynamic:
            return target
        return min(1.0, target ** (1.0 - float(params.get("exit_share", 1.0))))

    def allocations(self) -> list[str]:
        """The allocation kinds offered: `sensitivity` only where the run measured a sensitivity map."""
        return [a for a in ALLOCATIONS if a != "sensitivity" or self.sensitivity]

    def allocation(self, params: dict[str, Any]) -> dict[str, float]:
        """Relative pruning weight of each group: from the two shape knobs, the sensitivity map, the free per-group
        knobs, or uniform."""
        if params.get("allocation") == "sensitivity":
            if not self.sensitivity:
                raise SpaceError("this point asks for the sensitivity allocation, but the run has no sensitivity map")
            top = max(self.sensitivity.values())
            power = float(params["sensitivity_power"])
            return {g.name: max(SENSITIVITY_FLOOR, (self.sensitivity[g.name] / top) ** power) for g in self.groups}
        if params.get("allocation") == "shaped":
            share, tilt = float(params["stream_share"]), float(params["depth_tilt"])
            return {g.name: (share if len(g.out_layers) > 1 else 1.0) * (1.0 + tilt * (2.0 * self.depth[g.name] - 1.0))
                    for g in self.groups}
        return {g.name: float(params.get(f"a:{g.name}", 1.0)) for g in self.groups}

    def policy(self, params: dict[str, Any], level: float, label: str = "search") -> Policy:
        """The policy at pruning `level`: the top-allocated group's ratio (others in proportion, all capped at
        MAX_SPARSITY), or the global ratio for scalar methods."""
        method = params["method"]
        traits = get_method(method)
        recipe = {"finetune_lr": self.base_lr * params.get("lr_scale", 1.0), "label": label,
                  "distill": float(params.get("distill", 0.0)),
                  "distill_temperature": float(params.get("temperature", DISTILL_TEMPERATURE[1])),
                  "quantize": str(params.get("quantize", QUANTIZATIONS[0]))}
        criterion = params.get("criterion", traits.criteria[0])
        if traits.knob == "pattern":
            n, m = (int(v) for v in params["pattern"].split(":"))
            return Policy(method, criterion, 1.0 - n / m, {"n": n, "m": m}, **recipe)
        options: dict[str, Any] = dict(params.get("options", {}))
        if params.get("round_to", 1) > 1:
            options["round_to"] = params["round_to"]
        if self.removed_blocks(params) > 0:
            options["blocks"] = self.removed_blocks(params)
        if self.block_order and (options.get("blocks") or traits.knob == "scalar") and "block_order" in traits.options:
            options["block_order"] = list(self.block_order)
        if params.get("reconstruct"):
            options["reconstruct"] = True
        if traits.dynamic:
            options["exits"] = int(params["exits"])
            options["exit_target"] = round(float(params.get("target", self.budget)), 6)
        if not self.thins_channels(params):
            return Policy(method, criterion, 0.0, options, **recipe)
        if traits.knob == "scalar" or params.get("ranking") == "global":
            if params.get("ranking") == "global":
                options["global_pruning"] = True
            return Policy(method, criterion, round(level, 6), options, **recipe)
        ratios = self.group_ratios(params, level)
        per_layer = {layer: ratios[g.name] for g in self.groups for layer in g.out_layers}
        return Policy(method, criterion, per_layer, options, group_sparsity=ratios, **recipe)

    def removed_blocks(self, params: dict[str, Any]) -> int:
        """Blocks a point removes: its `depth` share of the most that removal alone could take off before the cost
        falls under the point's target (each block costing block_share, rounded to the nearest whole block), so depth
        never overshoots the target by more than half a block. A point that thins no channels removes that most."""
        depth = float(params.get("depth", 0.0 if self.thins_channels(params) else 1.0))
        if not depth or not self.block_share:
            return 0
        target = self.backbone_target(params, params.get("target", self.budget))
        most = min(self.blocks, round((1.0 - target) / self.block_share))
        return min(most, int(depth * (most + 1)))

    def group_ratios(self, params: dict[str, Any], level: float) -> dict[str, float]:
        """Scale the sampled allocation so the top-allocated group is at `level`, each group capped at MAX_SPARSITY."""
        alloc = self.allocation(params)
        top = max(alloc.values(), default=1.0)
        return {name: round(min(MAX_SPARSITY, level * a / top), 6) for name, a in alloc.items()}

    def predicted_ratio(self, params: dict[str, Any], level: float) -> float:
        """The cost model's FLOPs ratio for this point (scalar methods: as if the level were uniform; a scalar method
        that removes work removes whole blocks, that share of the prunable layers)."""
        traits = get_method(params["method"])
        if traits.removes_work and traits.knob == "scalar":
            return 1.0 - level * self.cost_model.prunable_share()
        ratios = self.group_ratios(params, level)
        if traits.removes_work:
            return self.cost_model.channel_ratio(ratios, params.get("round_to", 1))
        return self.cost_model.masked_ratio(ratios)

    def max_level(self, params: dict[str, Any]) -> float:
        """The level at which every group is at MAX_SPARSITY (past the top group, the others keep rising)."""
        if get_method(params["method"]).knob != "per_group" or params.get("ranking") == "global":
            return MAX_SPARSITY
        alloc = list(self.allocation(params).values())
        return MAX_SPARSITY * max(alloc) / min(alloc)

    def initial_level(self, params: dict[str, Any], target: float) -> float:
        """The lowest level whose predicted ratio is at or under `target` (bisection; the model is monotone)."""
        low, high = 0.0, self.max_level(params)
        if self.predicted_ratio(params, high) > target:
            return high
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (low, mid) if self.predicted_ratio(params, mid) <= target else (mid, high)
        return high

    def describe(self) -> dict[str, Any]:
        """The space definition, saved with the study so a reader sees what was searched."""
        return {
            "methods": list(self.methods),
            "target": {"low": self.target_range()[0], "high": self.target_range()[1],
                       "meaning": "cost ratio each trial aims at; the allocation is scaled to land at or under it"},
            "groups": [{"name": g.name, "channels": g.channels, "layers": list(g.out_layers)} for g in self.groups],
            "allocation": {
                "shaped": f"weight = stream_share {list(STREAM_SHARE)} for coupled groups (1 for the rest) x "
                          f"(1 + depth_tilt {list(DEPTH_TILT)} x (2 depth - 1)), depth in [0, 1] per group",
                "free": f"one relative weight in {list(FREE_WEIGHT)} per group",
                "sensitivity": f"(efficiency / the largest) ** sensitivity_power {list(SENSITIVITY_POWER)}, at least "
                               f"{SENSITIVITY_FLOOR}; efficiency: the run's cost saved per accuracy lost by the group "
                               "pruned alone (the run's sensitivity map)" if self.sensitivity else "no sensitivity map",
                "scale": "the weights are scaled by a level solved so the cost lands on the sampled target",
            },
            "group_depth": {name: round(d, 3) for name, d in self.depth.items()},
            "group_sensitivity": {name: round(e, 4) for name, e in (self.sensitivity or {}).items()},
            "criteria": {m: list(get_method(m).searched_criteria) for m in self.methods},
            "round_to": list(self.round_to), "ranking": list(RANKINGS),
            "reconstruct": {"choices": [False, True],
                            "meaning": "refit each layer that lost input channels to reproduce the dense outputs on "
                                       "a calibration batch (least squares), before batch-norm recalibration"},
            "depth": {"low": 0.0, "high": 1.0, "removable_blocks": self.blocks,
                      "block_flops_share": round(self.block_share, 4),
                      "order": list(self.block_order) or "l1 ranking",
                      "meaning": "share of the blocks that removal alone could take off before the cost falls under "
                                 "the target, removed in `order` (the sensitivity map's: most cost saved per accuracy "
                                 "lost first) before channels are pruned"},
            "nm_patterns": self.nm_patterns() if any(get_method(m).knob == "pattern" for m in self.methods) else [],
            "exits": {"choices": list(self.exit_choices), "share": list(EXIT_SHARE),
                      "thin": list(THIN) if self.blocks else [True],
                      "meaning": "dynamic: early-exit heads after stage outputs; the backbone is pruned to target ** "
                                 "(1 - share) (thin False: by removing blocks only, its channels kept) and the heads' "
                                 "thresholds fitted so the expected cost is the target"},
            "lr_scale": [0.3, 3.0], "base_lr": self.base_lr, "distill": list(DISTILL),
            "distill_temperature": list(DISTILL_TEMPERATURE),
            "quantize": {"choices": list(QUANTIZATIONS) if self.quantize else [QUANTIZATIONS[0]],
                         "int8_factor": round(self.int8_factor, 4),
                         "meaning": "int8: quantised after recovery; its float model is fitted to the target over "
                                    "int8_factor, the dense model's cost int8 over float"},
            "max_group_sparsity": MAX_SPARSITY,
            "meanings": KNOB_MEANINGS,
        }


def _nm_sparsity(pattern: str) -> float:
    n, m = (int(v) for v in pattern.split(":"))
    return 1.0 - n / m


def _depths(model: nn.Module, groups: list[PrunableGroup]) -> dict[str, float]:
    """Each group's depth in [0, 1]: the mean module-order position of its output layers, ranked across groups."""
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    mean = {g.name: sum(order.get(layer, 0) for layer in g.out_layers) / max(len(g.out_layers), 1) for g in groups}
    ranked = sorted(mean, key=mean.__getitem__)
    return {name: index / max(len(ranked) - 1, 1) for index, name in enumerate(ranked)}
