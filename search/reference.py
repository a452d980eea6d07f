"""The dense reference every trial is compared with: its accuracy, FLOPs, params, size and latency."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from search.measure import compare_latency, count_flops, count_params, latency, model_size_bytes
from search.measure.latency_table import LatencyTable
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


def measure_against_dense(model: nn.Module, workload: Workload, dense: DenseReference, *, device: str,
                          threads: int | None, batch_size: int, table: LatencyTable | None = None
                          ) -> dict[str, float | int]:
    """FLOPs, non-zero params, size and latency of a pruned (baked, CPU) model, with their ratios to dense, and the
    latency ratio the `table` predicts (when there is one).

    Latency is timed interleaved with the dense model in this process, so the ratio holds on a noisy machine.
    """
    flops = count_flops(model, workload.example_inputs)
    params = count_params(model, nonzero_only=True)
    timing = compare_latency({"dense": workload.model, "pruned": model}, workload.example_inputs, reference="dense",
                             device=device, threads=threads, batch_size=batch_size)
    return {"flops": flops, "params": params, "size_bytes": model_size_bytes(model),
            "latency_ms": timing["pruned"]["p50_ms"], "latency_p90_ms": timing["pruned"]["p90_ms"],
            "dense_latency_ms": timing["dense"]["p50_ms"], "flops_ratio": flops / dense.flops,
            "params_ratio": params / dense.params, "latency_ratio": timing["pruned"]["ratio"],
            "predicted_latency_ratio": None if table is None else table.predict_model_ratio(model)}
