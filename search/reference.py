"""The dense reference every trial is compared with: its accuracy, FLOPs, params, size and latency."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from search.measure import count_flops, count_params, latency, model_size_bytes
from search.training import evaluate
from search.workloads import Workload


@dataclass(frozen=True)
class DenseReference:
    """Metrics of the dense model, stored once per study as the study attribute "dense"."""

    accuracy: float
    test_accuracy: float
    flops: int
    params: int
    latency_ms: float
    size_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def measure_dense(workload: Workload, *, device: str, threads: int | None, batch_size: int) -> DenseReference:
    """Evaluate and measure the workload's dense model (validation and test accuracy, cost)."""
    model = workload.model
    timing = latency(model, workload.example_inputs, device=device, threads=threads, batch_size=batch_size)
    return DenseReference(
        accuracy=evaluate(model, workload.val, device),
        test_accuracy=evaluate(model, workload.test, device),
        flops=count_flops(model, workload.example_inputs),
        params=count_params(model, nonzero_only=True),
        latency_ms=timing["p50_ms"],
        size_bytes=model_size_bytes(model),
    )
