"""The sensitivity map: the validation accuracy each channel group keeps when it alone is pruned, at a few ratios,
and each removable residual block when it alone is removed, after batch-norm recalibration (NVIDIA Model-Optimizer's
FastNAS, AIMET's greedy ratio selection).

Computed once per run and stored on the study (a resume reuses it); the space's `sensitivity` allocation prunes
each group in proportion to the cost it saves per point of accuracy it costs, raised to a searched power, and a point
that removes blocks removes them in the map's order (most cost saved per accuracy lost first), not by weight
magnitude: on fashion-resnet20, l1 put a block whose removal keeps 89.3% second, where three keep 90.7-91.1%. The cost
is the run's: FLOPs from the analytical cost model, or what the run fits its points on (latency predicted by the
target's table, parameters, bytes), since a group cheap in FLOPs can be dear in time (HALP, NetAdapt).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import optuna
from torch import nn

from pruners import get_method, prune, removable_blocks
from reports.records import SENSITIVITY_ATTR
from search.measure import count_flops
from search.recover import SCREEN_SAMPLES
from search.training import count_correct, leading_batches, recalibrate_batchnorm
from search.workloads import Workload
from spaces import SearchSpace

log = logging.getLogger(__name__)
RATIOS = (0.25, 0.5, 0.75)  # each group pruned alone at these ratios
LOSS_FLOOR = 0.002  # accuracy loss counted at least: a group that loses nothing on the screening samples is not free


@dataclass(frozen=True)
class SensitivityMap:
    """Per group: the screened accuracy at each of `ratios` and the share of the dense cost (`cost`: the run's metric)
    pruning it saves."""

    method: str
    criterion: str
    ratios: list[float]
    dense_accuracy: float  # on the same screening samples, unpruned
    accuracy: dict[str, list[float]]
    saved: dict[str, list[float]]
    seconds: float
    cost: str = "flops"  # maps stored before the cost was the run's were in FLOPs
    block_accuracy: dict[str, float] = field(default_factory=dict)  # removable block -> accuracy with it removed
    block_saved: dict[str, float] = field(default_factory=dict)  # removable block -> share of the cost it saves

    def losses(self, group: str) -> list[float]:
        return [max(self.dense_accuracy - a, 0.0) for a in self.accuracy[group]]

    def efficiency(self) -> dict[str, float]:
        """Cost saved per point of accuracy lost, each group over the measured ratios (higher: prune it harder)."""
        return {g: sum(self.saved[g]) / sum(loss + LOSS_FLOOR for loss in self.losses(g)) for g in self.accuracy}

    def block_order(self) -> list[str]:
        """The removable blocks, most cost saved per accuracy lost first (empty where the map measured none)."""
        def efficiency(block: str) -> float:
            loss = max(self.dense_accuracy - self.block_accuracy[block], 0.0)
            return self.block_saved[block] / (loss + LOSS_FLOOR)
        return sorted(self.block_accuracy, key=lambda b: (-efficiency(b), b))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SensitivityMap":
        return cls(**data)


def sensitivity_method(space: SearchSpace) -> str | None:
    """The per-group method a map is measured with: the first in the space that removes work, else the first per-group
    one; None where the space has no per-group method or no groups."""
    per_group = [m for m in space.methods if get_method(m).knob == "per_group"]
    if not per_group or not space.groups:
        return None
    return next((m for m in per_group if get_method(m).removes_work), per_group[0])


def measure_sensitivity(workload: Workload, space: SearchSpace, device: str = "cpu",
                        cost: tuple[str, Callable[[nn.Module], float]] | None = None) -> SensitivityMap | None:
    """Prune each group of the space alone at RATIOS (the method's first criterion), recalibrate batch norm, and
    screen on the first SCREEN_SAMPLES validation samples; None where the space has nothing to measure. `cost`: the
    metric's name and the pruned model's ratio in it, for what a group saves (default: FLOPs, from the space's
    analytical model)."""
    method = sensitivity_method(space)
    if method is None:
        return None
    started = time.perf_counter()
    criterion = get_method(method).criteria[0]
    head, _ = leading_batches(workload.val, SCREEN_SAMPLES)
    correct, seen = count_correct(workload.model, head, device)

    def screened(model: nn.Module) -> float:
        recalibrate_batchnorm(model, workload.calibration, device)
        kept, total = count_correct(model, head, device)
        return kept / max(total, 1)

    accuracy: dict[str, list[float]] = {}
    saved: dict[str, list[float]] = {}
    for group in space.groups:
        accuracy[group.name], saved[group.name] = [], []
        for ratio in RATIOS:
            model = prune(workload.model, workload.example_inputs, method=method, criterion=criterion,
                          sparsity={layer: ratio for layer in group.out_layers})
            accuracy[group.name].append(screened(model))
            if cost is not None:
                left = cost[1](model)
            elif get_method(method).removes_work:
                left = space.cost_model.channel_ratio({group.name: ratio})
            else:
                left = space.cost_model.masked_ratio({group.name: ratio})
            saved[group.name].append(1.0 - left)
    block_accuracy, block_saved = {}, {}
    blocks = removable_blocks(workload.model, workload.example_inputs) if space.blocks else []
    for block in blocks:
        model = prune(workload.model, workload.example_inputs, method="layer", sparsity=0.0, blocks=1,
                      block_order=[block, *(b for b in blocks if b != block)])
        block_accuracy[block] = screened(model)
        block_saved[block] = 1.0 - (cost[1](model) if cost is not None else
                                    count_flops(model, workload.example_inputs) / space.cost_model.total_flops)
    found = SensitivityMap(method, criterion, list(RATIOS), correct / max(seen, 1), accuracy, saved,
                           time.perf_counter() - started, "flops" if cost is None else cost[0], block_accuracy,
                           block_saved)
    log.info("sensitivity map: %d groups x %d ratios and %d blocks in %.0f s", len(accuracy), len(RATIOS),
             len(blocks), found.seconds)
    return found


def with_sensitivity(study: optuna.Study, space: SearchSpace, workload: Workload, device: str = "cpu",
                     measure: bool = True, cost: tuple[str, Callable[[nn.Module], float]] | None = None
                     ) -> SearchSpace:
    """The space with the run's sensitivity map: the one stored on the study, else, for a study with no trials yet
    (and `measure`), one measured now and stored. A study begun without one keeps its space as it was, so a resume
    samples the same choices."""
    stored = study.user_attrs.get(SENSITIVITY_ATTR)
    if stored is None and (study.trials or not measure):
        return space
    found = SensitivityMap.from_json(stored) if stored else measure_sensitivity(workload, space, device, cost)
    if found is None:
        return space
    if not stored:
        study.set_user_attr(SENSITIVITY_ATTR, found.to_json())
    return replace(space, sensitivity=found.efficiency(), block_order=tuple(found.block_order()))
