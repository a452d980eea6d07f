"""How numbers and states read in the reports; one place so HTML, Markdown and CSV agree."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import TrialState

from pruners import available_methods, get_method
from reports.records import TrialRecord

MISSING = "—"
NOT_FASTER_RATIO = 0.95
STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "stopped_early",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def state_name(state: TrialState) -> str:
    """Our word for an Optuna state; PRUNED reads "stopped_early" to keep it apart from weight pruning."""
    return STATE_NAMES.get(state, state.name.lower())


def percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.2f}%"


def points(fraction: float | None) -> str:
    """An accuracy difference in percentage points."""
    return MISSING if fraction is None else f"{100 * fraction:.2f} pts"


def ratio(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def count(value: int | None) -> str:
    return MISSING if value is None else f"{value:,}"


def millis(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f} ms"


def size(num_bytes: int | None) -> str:
    """Bytes in binary units, e.g. 1.2 MiB."""
    if num_bytes is None:
        return MISSING
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def is_masked(method: str | None) -> bool:
    """The method masks weights (their FLOPs are nonzero FLOPs, not work that dense kernels skip)."""
    return method in available_methods() and get_method(method).masked


def is_dynamic(method: str | None) -> bool:
    """The method gives the model early exits: its costs are means over inputs."""
    return method in available_methods() and get_method(method).dynamic


def is_quantized(policy: dict | None) -> bool:
    """The policy quantised the pruned model (search --quantize)."""
    return (policy or {}).get("quantize", "none") != "none"


def model_kind(record: TrialRecord) -> str:
    """The method, with "+ int8" where the policy quantised the pruned model."""
    return f"{record.method or MISSING} + int8" if is_quantized(record.policy) else record.method or MISSING


def flops_name(method: str | None) -> str:
    """"nonzero FLOPs" for a masked model, "FLOPs" otherwise."""
    return "nonzero FLOPs" if is_masked(method) else "FLOPs"


def latency_flag(record: TrialRecord) -> str | None:
    """A warning in words when a model is not measurably faster than dense (latency ratio >= 0.95)."""
    if record.latency_ratio is None or record.latency_ratio < NOT_FASTER_RATIO:
        return None
    flag = f"not measurably faster than dense (latency ratio {record.latency_ratio:.2f})"
    if is_dynamic(record.method):
        return f"{flag}: its exits' per-call work outweighs what they save on a network this fast at batch 1"
    if not is_masked(record.method):
        return flag
    return (f"{flag}: masked weights cut nonzero FLOPs but not time without "
            f"{get_method(str(record.method)).sparse_runtime}")


def trial_name(record: TrialRecord) -> str:
    """E.g. "trial 12 (channel, baseline:uniform-50)"."""
    tags = [t for t in (model_kind(record) if record.method else None, record.label) if t and t != "search"]
    return f"trial {record.number}" + (f" ({', '.join(tags)})" if tags else "")


@dataclass(frozen=True)
class FrontPart:
    """Models of the Pareto front drawn as one trace: a line through them, or markers (int8 apart)."""

    records: list[TrialRecord]
    name: str
    int8: bool = False
    line: bool = True


def front_parts(front: list[TrialRecord], by_size: bool) -> list[FrontPart]:
    """The front as one line, or, where it also weighs bytes (int8 searched: selection.sizes_count), its float and
    int8 models as markers apart, since that front is no line in cost and accuracy; empty parts left out."""
    if not by_size:
        return [FrontPart(front, "Pareto front")] if front else []
    parts = [FrontPart([t for t in front if not is_quantized(t.policy)], "Pareto front, float", line=False),
             FrontPart([t for t in front if is_quantized(t.policy)], "Pareto front, int8", int8=True, line=False)]
    return [part for part in parts if part.records]
