"""Screening (EagleEye, ECCV 2020): decide from the batch-norm-recalibrated accuracy whether to fine-tune at all.

A candidate is stopped when even the largest fine-tuning gain seen so far could not lift its screened accuracy
to within epsilon of dense. The bound learns from the run itself, so when recalibration alone leaves every
candidate near chance (heavy pruning), gains are large and nothing is stopped on a proxy that ranks nothing.
"""
from __future__ import annotations

from typing import Iterable

MIN_OBSERVED = 4  # fine-tuned trials needed before any candidate is stopped
MARGIN = 0.005  # extra half point of slack on top of the largest gain seen


def screening_threshold(observed: Iterable[tuple[float, float]], dense_accuracy: float, epsilon: float) -> float | None:
    """The screened accuracy below which a candidate is hopeless, from (screened, final) pairs; None = screen nothing."""
    pairs = list(observed)
    if len(pairs) < MIN_OBSERVED:
        return None
    largest_gain = max(final - screened for screened, final in pairs)
    return dense_accuracy - epsilon - max(largest_gain, 0.0) - MARGIN
