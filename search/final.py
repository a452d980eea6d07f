"""The final fine-tune: re-prune from a stored policy and recover for longer, the same way for every model compared."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from pruners import bake, get_method, prune
from search.recover import recover
from search.measure.latency_table import LatencyTable
from search.reference import DenseReference, measure_against_dense
from search.training import evaluate
from search.workloads import Workload
from spaces import Policy

FINAL_DISTILL = 0.5
"""Least distillation weight of a final fine-tune. Measured on fashion-resnet20 (Torch-Pruning's global L2 ranking
at half the FLOPs, one epoch): 91.68% validation without distillation, 91.82% with weight 0.5. A search-time
fine-tune is too short for the dense model's soft labels to pay; a longer one gains from them."""


@dataclass
class FinalModel:
    """A model after the final fine-tune: validation and test accuracy, and its costs measured against dense."""

    model: nn.Module
    accuracy: float
    test_accuracy: float
    measured: dict[str, Any]  # search.reference.measure_against_dense

    @property
    def flops_ratio(self) -> float:
        return float(self.measured["flops_ratio"])

    @property
    def latency_ratio(self) -> float:
        return float(self.measured["latency_ratio"])


def calibration_options(workload: Workload, method: str, criterion: str) -> dict:
    """The labelled batch that data-driven criteria (the method's `calibrated` ones) rank with."""
    return {"calibration": next(iter(workload.calibration))} if criterion in get_method(method).calibrated else {}


def final_finetune(workload: Workload, dense: DenseReference, policy: Policy, *, epochs: float, device: str = "cpu",
                   threads: int | None = None, batch_size: int = 1, table: LatencyTable | None = None) -> FinalModel:
    """Prune the dense model by `policy`, recover it for `epochs` (distilling from dense with at least FINAL_DISTILL),
    and measure it against dense."""
    model = prune(workload.model, workload.example_inputs, **policy.prune_kwargs(),
                  **calibration_options(workload, policy.method, policy.criterion))
    recovery = recover(model, workload, epochs=epochs, lr=policy.finetune_lr, device=device,
                       distill=max(policy.distill, FINAL_DISTILL))
    model = bake(model.cpu().eval())
    measured = measure_against_dense(model, workload, dense, device=device, threads=threads, batch_size=batch_size,
                                     table=table)
    return FinalModel(model, recovery.accuracy, evaluate(model, workload.test, device), measured)
