"""The dense reference every trial is compared with: its accuracy, FLOPs, params, size and latency."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dynamic import EarlyExitModel
from reports.schema import Measured
from search.dynamic import measure_dynamic
from search.measure import (
    compare_latency,
    compressed_fields,
    compressed_size_bytes,
    count_flops,
    count_params,
    latency,
    layer_profile,
    model_size_bytes,
)
from search.measure.latency_table import LatencyTable
from search.quantize import Int8Model
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
    fingerprint: str = ""  # of the weights: a resume must search the same dense model ("" in runs made before it)
    compressed_bytes: int = 0  # search.measure.compressed_size_bytes (0 in runs made before it)

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
        fingerprint=weights_fingerprint(model),
        compressed_bytes=compressed_size_bytes(model),
    )


def near_chance_bar(model: nn.Module, example_inputs: torch.Tensor) -> float:
    """The validation accuracy under which a dense model is treated as untrained: twice chance, and at most a tenth
    of the way from chance to perfect (19% for 10 classes, 55% for 2, 0.2% for 1000)."""
    device = next(model.parameters(), torch.empty(0)).device
    with torch.no_grad():
        classes = model.eval()(example_inputs.to(device)).shape[1]
    chance = 1 / classes
    return min(2 * chance, chance + 0.1 * (1 - chance))


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers, in state_dict order: equal only for the same weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def measure_against_dense(model: nn.Module, workload: Workload, dense: DenseReference, *, device: str,
                          threads: int | None, batch_size: int, table: LatencyTable | None = None) -> Measured:
    """FLOPs, non-zero params, size and latency of a pruned (baked, CPU) model, with their ratios to dense, and the
    latency ratio the `table` predicts (when there is one).

    Latency is timed interleaved with the dense model in this process, so the ratio holds on a noisy machine. A dynamic
    model (early exits) is measured per input over the validation split (search.dynamic.measure_dynamic). An int8
    model is timed and sized as it runs, quantised; its FLOPs and parameters are its float model's (the same
    multiply-accumulates, in int8), and the latency table, which models float layers, predicts nothing for it.
    """
    if isinstance(model, EarlyExitModel):
        return measure_dynamic(model, workload, dense, device=device, threads=threads)
    int8 = isinstance(model, Int8Model)
    counted = model.float_model if int8 else model
    flops = count_flops(counted, workload.example_inputs)
    params = count_params(counted, nonzero_only=True)
    shipped = model.quantized if int8 else model
    size = model_size_bytes(shipped)
    timing = compare_latency({"dense": workload.model, "pruned": model}, workload.example_inputs, reference="dense",
                             device=device, threads=threads, batch_size=batch_size)
    return Measured(flops=flops, params=params, size_bytes=size,
                    latency_ms=timing["pruned"]["p50_ms"], latency_p90_ms=timing["pruned"]["p90_ms"],
                    dense_latency_ms=timing["dense"]["p50_ms"], flops_ratio=flops / dense.flops,
                    params_ratio=params / dense.params, latency_ratio=timing["pruned"]["ratio"],
                    predicted_latency_ratio=None if table is None or int8 else table.predict_model_ratio(model),
                    size_ratio=size / dense.size_bytes, **compressed_fields(shipped, dense.compressed_bytes),
                    layers=layer_profile(counted, workload.model))
