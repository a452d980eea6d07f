"""Read a search's Optuna study into plain records.

The study storage is the single source of truth, so everything the reports show starts here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from reports.run_files import ReportError, run_relative
from reports.schema import MEASURED_FIELDS

REQUIRED_STUDY_ATTRS = ("workload", "cost_metric", "budget", "epsilon", "dense")


@dataclass(frozen=True)
class RunInfo:
    """Study-level facts the search stored once: target, budget and the dense reference."""

    workload: str
    cost_metric: str
    budget: float
    epsilon: float
    input_shape: list[int]
    dense: dict[str, Any]
    latency_setup: dict[str, Any]
    config: dict[str, Any]
    space: dict[str, Any]
    latency_table: dict[str, Any] | None = None  # search.measure.latency_table.LatencyTable.describe()
    final_errors: dict[str, str] = field(default_factory=dict)  # final-stage step -> why it failed
    sensitivity: dict[str, Any] | None = None  # search.sensitivity.SensitivityMap.to_json()


@dataclass(frozen=True)
class TrialRecord:
    """One trial of any state, flattened from its user attrs."""

    number: int
    state: TrialState
    label: str | None = None
    method: str | None = None
    policy: dict[str, Any] | None = None
    values: list[float] | None = None
    cost_ratio: float | None = None
    accuracy: float | None = None
    accuracy_loss: float | None = None
    test_accuracy: float | None = None
    accuracy_before_finetune: float | None = None
    accuracy_after_finetune: float | None = None
    flops: int | None = None
    params: int | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    dense_latency_ms: float | None = None  # dense p50 timed interleaved with this trial's model
    flops_ratio: float | None = None
    params_ratio: float | None = None
    latency_ratio: float | None = None
    size_ratio: float | None = None
    model_path: str | None = None
    failure: str | None = None
    stopped_reason: str | None = None
    seconds: float | None = None
    screen_seconds: float | None = None
    search_accuracy: float | None = None  # validation accuracy at search time, when a final fine-tune replaced it
    final_epochs: float | None = None
    predicted_latency_ratio: float | None = None  # the latency table's prediction for this model
    fitted_ratio: float | None = None  # the cost ratio the trial was fitted to (predicted latency with --cost latency)
    target: float | None = None  # the cost-ratio target the trial was sampled at
    latency_by_batch: dict[str, Any] | None = None  # {"1": {...}, "64": {...}}: Pareto models at both batch regimes
    latency_ratio_p10: float | None = None  # spread over rounds of the pick's re-measured ratio (--cost latency)
    latency_ratio_p90: float | None = None
    exit_flops: list[int] | None = None  # dynamic models: FLOPs of leaving at each exit (reports.schema.Measured)
    exit_counts: list[int] | None = None  # dynamic models: validation inputs that left at each exit
    compressed_bytes: int | None = None  # masked weights packed (reports.schema.Measured)
    compressed_ratio: float | None = None
    layers: list[list[Any]] | None = None  # per layer: [name, kept units, dense units, nonzero weights, dense weights]
    runtime_checks: dict[str, Any] | None = None  # a dynamic pick's checks fitted on validation (RUNTIME_CHECKS_ATTR)

    @property
    def is_complete(self) -> bool:
        return self.state == TrialState.COMPLETE

    @property
    def is_baseline(self) -> bool:
        return bool(self.label and self.label.startswith("baseline:"))


@dataclass(frozen=True)
class StudyRecords:
    """A study read back: its run-level info and one record per trial, by trial number."""

    info: RunInfo
    trials: list[TrialRecord] = field(default_factory=list)


def _float(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric or non-finite values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _ints(value: Any) -> list[int] | None:
    """A list of ints, or None where the value is not a list of numbers."""
    if not isinstance(value, (list, tuple)):
        return None
    numbers = [_int(v) for v in value]
    return None if any(n is None for n in numbers) else numbers  # type: ignore[return-value]


def _layers(value: Any) -> list[list[Any]] | None:
    """Measured.layers rows ([name, 4 counts]), or None where the value is not such a list."""
    if not isinstance(value, list) or not all(isinstance(row, list) and len(row) == 5 for row in value):
        return None
    rows = [[str(row[0]), *(_int(v) for v in row[1:])] for row in value]
    return None if any(v is None for row in rows for v in row) else rows


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _policy(value: Any) -> dict[str, Any] | None:
    """The policy dict, also when a writer stored it as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


TEST_ACCURACY_ATTR = "test_accuracy"  # study attr {trial number: accuracy}: finished trials cannot take new attrs
FINAL_ATTR = "final"  # study attr {trial number: metrics after the final fine-tune (search --final-epochs)}
BATCHES_ATTR = "latency_by_batch"  # study attr {trial number: {batch size: latency stats and ratio}}
SENSITIVITY_ATTR = "sensitivity"  # study attr: the run's sensitivity map (search.sensitivity), measured once
FINAL_ERRORS_ATTR = "final_stage_errors"  # study attr {final-stage step: why it failed}; the report says it
REMEASURED_ATTR = "remeasured"  # study attr {trial number: the pick's latency ratio re-measured with more rounds}
RUNTIME_CHECKS_ATTR = "runtime_checks"  # study attr {trial number: a dynamic pick's runtime checks fitted on
# validation (search.stream_replay.fit_checks: "settings", the "tried" grid) and the "model_path" they hold for}
FINAL_FIELDS = ("accuracy", "accuracy_loss", "test_accuracy", *MEASURED_FIELDS, "cost_ratio", "model_path")


def trial_record(trial: FrozenTrial, test_accuracies: dict[str, float] | None = None) -> TrialRecord:
    """Flatten one frozen trial; objective values back up cost_ratio and accuracy_loss.

    Test accuracy is measured after the search, when Optuna no longer lets a trial change, so it lives
    in the study attribute `test_accuracy` keyed by trial number.
    """
    attrs = trial.user_attrs
    values = list(trial.values) if trial.values else None
    policy = _policy(attrs.get("policy"))
    return TrialRecord(
        number=trial.number,
        state=trial.state,
        label=_str(attrs.get("label")),
        method=_str(attrs.get("method") or (policy or {}).get("method")),
        policy=policy,
        values=values,
        cost_ratio=_float(attrs.get("cost_ratio", values[0] if values else None)),
        accuracy=_float(attrs.get("accuracy")),
        accuracy_loss=_float(
            attrs.get("accuracy_loss", values[1] if values and len(values) > 1 else None)
        ),
        test_accuracy=_float((test_accuracies or {}).get(str(trial.number), attrs.get("test_accuracy"))),
        accuracy_before_finetune=_float(attrs.get("accuracy_before_finetune")),
        accuracy_after_finetune=_float(attrs.get("accuracy_after_finetune")),
        flops=_int(attrs.get("flops")),
        params=_int(attrs.get("params")),
        size_bytes=_int(attrs.get("size_bytes")),
        latency_ms=_float(attrs.get("latency_ms")),
        latency_p90_ms=_float(attrs.get("latency_p90_ms")),
        dense_latency_ms=_float(attrs.get("dense_latency_ms")),
        flops_ratio=_float(attrs.get("flops_ratio")),
        params_ratio=_float(attrs.get("params_ratio")),
        latency_ratio=_float(attrs.get("latency_ratio")),
        size_ratio=_float(attrs.get("size_ratio")),
        model_path=run_relative(attrs.get("model_path")),
        failure=_str(attrs.get("failure")),
        stopped_reason=_str(attrs.get("stopped_reason")),
        seconds=_float(attrs.get("seconds")),
        screen_seconds=_float(attrs.get("screen_seconds")),
        predicted_latency_ratio=_float(attrs.get("predicted_latency_ratio")),
        fitted_ratio=_float(attrs.get("fitted_ratio")),
        target=_float(attrs.get("target")),
        exit_flops=_ints(attrs.get("exit_flops")),
        exit_counts=_ints(attrs.get("exit_counts")),
        compressed_bytes=_int(attrs.get("compressed_bytes")),
        compressed_ratio=_float(attrs.get("compressed_ratio")),
        layers=_layers(attrs.get("layers")),
    )


def with_final(record: TrialRecord, final: dict[str, Any] | None) -> TrialRecord:
    """The record as the final fine-tune left it: its metrics and model replace the search-time ones, unless it
    made the model worse on validation (kept "search"), when the search's model and figures stay."""
    if not final or final.get("kept") == "search":
        return record
    merged = trial_record_fields(final)
    return replace(record, **{k: v for k, v in merged.items() if v is not None},
                   search_accuracy=record.accuracy, final_epochs=_float(final.get("epochs")))


def with_latency_checks(record: TrialRecord, batches: dict[str, Any] | None, remeasured: dict[str, Any] | None,
                        cost_metric: str) -> TrialRecord:
    """The record with its latency at both batch regimes, and, re-measured (--cost latency), the longer timing's
    ratio and spread in place of the trial's own (and as its cost). Each check holds for the model file it timed."""
    if batches and batches.get("model_path") == record.model_path:
        record = replace(record, latency_by_batch=batches.get("batches"))
    if not remeasured or remeasured.get("model_path") != record.model_path:
        return record
    ratio = _float(remeasured.get("latency_ratio"))
    return replace(record, latency_ratio=ratio, cost_ratio=ratio if cost_metric == "latency" else record.cost_ratio,
                   latency_ratio_p10=_float(remeasured.get("p10")), latency_ratio_p90=_float(remeasured.get("p90")))


def with_runtime_checks(record: TrialRecord, fitted: dict[str, Any] | None) -> TrialRecord:
    """The record with the runtime checks fitted for it, where they were fitted on the model file it holds."""
    if not fitted or fitted.get("model_path") != record.model_path or not isinstance(fitted.get("settings"), dict):
        return record
    settings = {k: float(v) for k, v in fitted["settings"].items() if isinstance(v, (int, float))}
    return replace(record, runtime_checks={**fitted, "settings": settings})


def trial_record_fields(attrs: dict[str, Any]) -> dict[str, Any]:
    """The FINAL_FIELDS of an attrs dict, typed as TrialRecord holds them."""
    kinds = {"flops": _int, "params": _int, "size_bytes": _int, "model_path": run_relative, "exit_flops": _ints,
             "exit_counts": _ints, "compressed_bytes": _int, "layers": _layers}
    return {name: kinds.get(name, _float)(attrs.get(name)) for name in FINAL_FIELDS}


def run_info(attrs: dict[str, Any]) -> RunInfo:
    """Study user attrs as a RunInfo; raises ReportError naming any required attr that is missing."""
    missing = [name for name in REQUIRED_STUDY_ATTRS if name not in attrs]
    if missing:
        raise ReportError(f"study lacks the user attrs {', '.join(missing)}; was it written by search?")
    return RunInfo(
        workload=str(attrs["workload"]),
        cost_metric=str(attrs["cost_metric"]),
        budget=float(attrs["budget"]),
        epsilon=float(attrs["epsilon"]),
        input_shape=[int(d) for d in attrs.get("input_shape") or []],
        dense=dict(attrs["dense"]),
        latency_setup=dict(attrs.get("latency_setup") or {}),
        config=dict(attrs.get("config") or {}),
        space=dict(attrs.get("space") or {}),
        latency_table=attrs.get("latency_table"),
        final_errors=dict(attrs.get(FINAL_ERRORS_ATTR) or {}),
        sensitivity=attrs.get(SENSITIVITY_ATTR),
    )


def load_records(storage: str, study_name: str = "search", final: bool = True) -> StudyRecords:
    """Load the study from `storage` (an Optuna storage URL) and flatten it; ReportError if absent.

    With `final`, trials that had the final fine-tune carry its metrics (else their search-time ones).
    """
    return study_records(open_study(storage, study_name), final)


def open_study(storage: str, study_name: str = "search") -> optuna.Study:
    """The study named `study_name` in `storage`; ReportError if there is none."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as error:
        raise ReportError(f"no study named {study_name!r} in {storage}") from error


def study_records(study: optuna.Study, final: bool = True) -> StudyRecords:
    """A loaded study flattened into records (load_records' second half, for a caller that keeps the study)."""
    attrs = study.user_attrs
    info = run_info(attrs)
    tested = attrs.get(TEST_ACCURACY_ATTR) or {}
    finals = (attrs.get(FINAL_ATTR) or {}) if final else {}
    batches, remeasured = attrs.get(BATCHES_ATTR) or {}, (attrs.get(REMEASURED_ATTR) or {}) if final else {}
    checks = attrs.get(RUNTIME_CHECKS_ATTR) or {}
    trials = [with_runtime_checks(
        with_latency_checks(with_final(trial_record(t, tested), finals.get(str(t.number))),
                            batches.get(str(t.number)), remeasured.get(str(t.number)), info.cost_metric),
        checks.get(str(t.number))) for t in study.get_trials(deepcopy=False)]
    return StudyRecords(info=info, trials=trials)
