"""Screening (EagleEye, ECCV 2020): decide from the batch-norm-recalibrated accuracy whether to fine-tune at all.

A candidate is compared with the finished trials that already dominate its cost (the Pareto front at the same or
lower cost). It is stopped when its screened accuracy is clearly worse than theirs, by RANK_MARGIN at the same
fidelity (recalibrated against recalibrated: EagleEye's bet that the proxy ranks), or when even the largest
fine-tuning gain seen so far could not lift it to their final accuracy. Either way it would almost surely stay
dominated, so it is never the pick. The proxy's rank correlation with the fine-tuned accuracy is reported by
`search.bench`, per budget, so the bet can be checked.
"""
from __future__ import annotations

from typing import Any, Iterable

MIN_OBSERVED = 4  # fine-tuned trials needed before any candidate is stopped
MARGIN = 0.005  # slack on top of the largest gain seen
RANK_MARGIN = 0.03  # how much worse than the front's recalibrated accuracy a candidate must screen to be stopped


def screening_bar(observed: Iterable[tuple[float, float]], finished: Iterable[tuple[float, float, float]]
                  ) -> dict[str, Any] | None:
    """What a trial needs to screen itself, as JSON: the largest gain over the (screened, final) pairs seen, and the
    non-dominated (cost ratio, accuracy, screened accuracy) points of the finished trials; None until enough are seen."""
    pairs = list(observed)
    if len(pairs) < MIN_OBSERVED:
        return None
    front: list[list[float]] = []
    for cost, accuracy, screened in sorted(finished, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append([cost, accuracy, screened])
    return {"largest_gain": max(max(final - screened for screened, final in pairs), 0.0), "front": front}


def stop_below(bar: dict[str, Any] | None, cost: float) -> float | None:
    """The screened accuracy under which a candidate at `cost` would stay dominated by the front at no higher cost."""
    if bar is None:
        return None
    cheaper = [point for point in bar["front"] if point[0] <= cost + 1e-9]
    if not cheaper:
        return None
    by_gain = max(p[1] for p in cheaper) - bar["largest_gain"] - MARGIN
    by_rank = max(p[2] for p in cheaper) - RANK_MARGIN
    return max(by_gain, by_rank)
