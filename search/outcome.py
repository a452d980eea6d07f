"""How one trial ended, the same for every backend: complete (finite objectives), screened (stopped before its
fine-tune, Optuna's PRUNED) or failed (with its reason); the backends only carry it to search.study's recorder."""
from __future__ import annotations

import math
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from search.recover import ScreenedOut
from search.trial import TrialContext, evaluate_point

OBJECTIVES = ("cost_ratio", "accuracy_loss")  # both minimised, in this order
REASON_CHARS = 2000
Kind = Literal["complete", "screened", "failed"]


@dataclass(frozen=True)
class TrialOutcome:
    """A finished trial: its kind, its user attributes (search.trial's metrics), and for a failure why."""

    kind: Kind
    attrs: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    traceback: str = ""

    @property
    def values(self) -> list[float] | None:
        """The objective values of a complete trial; None otherwise."""
        return [float(self.attrs[key]) for key in OBJECTIVES] if self.kind == "complete" else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialOutcome:
        return cls(**data)


def failed(error: BaseException) -> TrialOutcome:
    """The outcome of a trial that raised `error`, with its reason cut to what a study attribute should hold."""
    reason = f"{type(error).__name__}: {error}"[:REASON_CHARS]
    return TrialOutcome("failed", failure=reason, traceback=traceback.format_exc()[-4000:])


def complete(attrs: dict[str, Any]) -> TrialOutcome:
    """A complete outcome, or a failed one where an objective is not a finite number."""
    values = [attrs.get(key) for key in OBJECTIVES]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return TrialOutcome("failed", attrs, failure=f"FloatingPointError: objective values {values} are not finite")
    return TrialOutcome("complete", attrs)


def run_point(ctx: TrialContext, params: dict[str, Any], number: int, label: str,
              screen: dict[str, Any] | None) -> TrialOutcome:
    """evaluate_point with every ending made an outcome; only KeyboardInterrupt (and other BaseExceptions) escape."""
    try:
        return complete(evaluate_point(ctx, params, number, label, screen=screen))
    except ScreenedOut as stop:
        return TrialOutcome("screened", stop.attrs)
    except Exception as error:  # noqa: BLE001 - any failure of one trial is recorded, the search goes on
        return failed(error)
