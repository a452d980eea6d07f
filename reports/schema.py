"""A trial's measured costs, defined once: search.reference measures them, trials and final fine-tunes record them
as user attributes, reports read them back by the same names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Measured:
    """A pruned model's costs against the dense model, latency timed interleaved with it."""

    flops: int
    params: int
    size_bytes: int
    latency_ms: float
    latency_p90_ms: float
    dense_latency_ms: float
    flops_ratio: float
    params_ratio: float
    latency_ratio: float
    predicted_latency_ratio: float | None  # the latency table's; None where it cannot model the network
    # A dynamic model (early exits): flops, flops_ratio and the latency figures are means over inputs; these give the
    # FLOPs of an input leaving at each exit (the last: no head took it) and how many validation inputs did.
    exit_flops: list[int] | None = None
    exit_counts: list[int] | None = None
    size_ratio: float | None = None  # size_bytes over dense's (None in runs from before --cost size)
    # The state dict with masked weights packed (search.packed), and its ratio to dense's: what a masked model ships at.
    compressed_bytes: int | None = None
    compressed_ratio: float | None = None
    # Per conv/linear layer of dense, in network order: [name, kept units, dense units, nonzero weights, dense
    # weights] (search.measure.layer_profile); the report's policy bar chart and heat map.
    layers: list[list[Any]] | None = None

    def ratio(self, cost_metric: str) -> float:
        """The ratio to dense in a run's cost metric (flops, latency, params or size)."""
        return float(getattr(self, f"{cost_metric}_ratio"))

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)


MEASURED_FIELDS = tuple(f.name for f in fields(Measured))
