"""trials.csv: one row per trial of every state, for spreadsheets and scripts."""

from __future__ import annotations

import csv
import io
import json

from reports.formatting import state_name
from reports.records import TrialRecord

METRIC_COLUMNS = (
    "cost_ratio", "accuracy", "accuracy_loss", "test_accuracy", "accuracy_before_finetune",
    "flops", "params", "size_bytes", "latency_ms", "latency_p90_ms",
    "flops_ratio", "params_ratio", "latency_ratio", "size_ratio", "compressed_bytes", "compressed_ratio", "seconds",
)
COLUMNS = (
    "number", "state", "label", "method", "values", *METRIC_COLUMNS,
    "model_path", "failure", "stopped_reason", "policy",
)


def _row(record: TrialRecord) -> dict[str, object]:
    row: dict[str, object] = {name: getattr(record, name) for name in METRIC_COLUMNS}
    row.update(
        number=record.number,
        state=state_name(record.state),
        label=record.label,
        method=record.method,
        values=json.dumps(record.values) if record.values is not None else None,
        model_path=record.model_path,
        failure=record.failure,
        stopped_reason=record.stopped_reason,
        policy=json.dumps(record.policy, sort_keys=True) if record.policy is not None else None,
    )
    return row


def trials_csv(trials: list[TrialRecord]) -> str:
    """The CSV text; missing values are empty cells."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_row(t) for t in trials)
    return out.getvalue()
