"""The final fine-tune: re-prune from a stored policy and recover for longer, the same way for every model compared."""
from __future__ import annotations

from dataclasses import dataclass

from pruners import bake, prune
from search.measure import compare_latency, count_flops
from search.recover import recover
from search.reference import DenseReference
from search.training import evaluate
from search.workloads import Workload
from spaces import Policy

CALIBRATED_CRITERIA = ("taylor", "activation")


@dataclass(frozen=True)
class FinalResult:
    """Validation and test accuracy after the final fine-tune, with the FLOPs and latency ratios to dense."""

    accuracy: float
    test_accuracy: float
    flops_ratio: float
    latency_ratio: float


def calibration_options(workload: Workload, criterion: str) -> dict:
    """The labelled batch that the taylor and activation criteria rank channels with."""
    return {"calibration": next(iter(workload.calibration))} if criterion in CALIBRATED_CRITERIA else {}


def final_finetune(workload: Workload, dense: DenseReference, policy: Policy, *, epochs: float, device: str = "cpu",
                   threads: int | None = None, batch_size: int = 1) -> FinalResult:
    """Prune the dense model by `policy`, recover it for `epochs`, and measure it against dense."""
    model = prune(workload.model, workload.example_inputs, **policy.prune_kwargs(),
                  **calibration_options(workload, policy.criterion))
    recovery = recover(model, workload, epochs=epochs, lr=policy.finetune_lr, device=device)
    model = bake(model.cpu().eval())
    timing = compare_latency({"dense": workload.model, "pruned": model}, workload.example_inputs, reference="dense",
                             device=device, threads=threads, batch_size=batch_size)
    return FinalResult(recovery.accuracy, evaluate(model, workload.test, device),
                       count_flops(model, workload.example_inputs) / dense.flops, timing["pruned"]["ratio"])
