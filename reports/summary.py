"""The pareto.json dict: exactly the public contract's keys, MODEL entries with a few documented extras."""

from __future__ import annotations

import json
from typing import Any

from optuna.trial import TrialState

from reports.formatting import is_masked
from reports.records import RunInfo, TrialRecord

DENSE_KEYS = ("accuracy", "test_accuracy", "flops", "params", "latency_ms", "size_bytes", "compressed_bytes")
DENSE_INT_KEYS = ("flops", "params", "size_bytes", "compressed_bytes")


def model_entry(record: TrialRecord) -> dict[str, Any]:
    """A contract MODEL for one trial; missing metrics are null."""
    return {
        "trial": record.number,
        "method": record.method,
        "accuracy": record.accuracy,
        "test_accuracy": record.test_accuracy,
        "flops": record.flops,
        "params": record.params,
        "latency_ms": record.latency_ms,
        "cost_ratio": record.cost_ratio,
        "policy": record.policy or {},
        "label": record.label,
        "flops_ratio": record.flops_ratio,
        "latency_ratio": record.latency_ratio,
        "params_ratio": record.params_ratio,
        "size_bytes": record.size_bytes,
        "size_ratio": record.size_ratio,
        "compressed_bytes": record.compressed_bytes,
        "compressed_ratio": record.compressed_ratio,
        "latency_p90_ms": record.latency_p90_ms,
        "dense_latency_ms": record.dense_latency_ms,
        "search_accuracy": record.search_accuracy,
        "final_epochs": record.final_epochs,
        "nonzero_flops": record.flops if is_masked(record.method) else None,
        "predicted_latency_ratio": record.predicted_latency_ratio,
        "latency_by_batch": record.latency_by_batch,
        "latency_ratio_p10": record.latency_ratio_p10,
        "latency_ratio_p90": record.latency_ratio_p90,
        "exit_flops": record.exit_flops,
        "exit_counts": record.exit_counts,
        "layers": record.layers,
    }


def _dense_entry(dense: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key in DENSE_KEYS:
        value = dense.get(key)
        if value is not None:
            value = int(value) if key in DENSE_INT_KEYS else float(value)
        entry[key] = value
    return entry


def state_counts(trials: list[TrialRecord]) -> dict[str, int]:
    """The contract's trial counts; "pruned" is Optuna's early stop, not weight pruning."""
    states = [t.state for t in trials]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }


def build_summary(
    info: RunInfo, trials: list[TrialRecord], front: list[TrialRecord], best: TrialRecord | None
) -> dict[str, Any]:
    """The pareto.json dict for a study."""
    return {
        "workload": info.workload,
        "cost_metric": info.cost_metric,
        "budget": info.budget,
        "epsilon": info.epsilon,
        "input_shape": list(info.input_shape),
        "dense": _dense_entry(info.dense),
        "best": None if best is None else model_entry(best),
        "pareto": [model_entry(r) for r in front],
        "trials": state_counts(trials),
        "final_stage_errors": dict(info.final_errors),
    }


def to_json(data: Any) -> str:
    """Strict JSON text (non-finite floats rejected), stable key order, trailing newline."""
    return json.dumps(data, indent=2, allow_nan=False) + "\n"
