"""Pareto front and the pick: min cost subject to loss <= epsilon and cost ratio <= budget.

Feasibility is recomputed from the trials' own metrics, not from Optuna's stored constraints,
so a report stays right even if a run's constraint bookkeeping changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from reports.records import TrialRecord

TOLERANCE = 1e-9
COST_TIE = 0.005  # cost ratios this close are one cost to the pick: points fitted to one target land within it of
# each other (a dynamic model's threshold, refitted after its final fine-tune, moves its cost by about 1e-4), so the
# more accurate of them is the pick rather than whichever landed a few hundred FLOPs lower
ACCURACY_TIE = 0.003  # among cost-tied picks, accuracies this close to the best are one accuracy too, and the faster
# model (lower measured latency ratio) wins: the resolution of a validation split of 5,000 inputs for two models
# that differ in correctness on 4-6% of them (the standard error of their accuracy difference, sqrt(0.045 / 5000)),
# so the tie is noise and the speed-up is not (fashion-resnet20's dynamic trials at 0.5 of the FLOPs ran at 0.56-0.74
# of dense at batch 1, as their backbones kept their widths or were thinned)


def _scored(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Complete trials that carry both a cost ratio and a validation accuracy."""
    return [r for r in records if r.is_complete and r.cost_ratio is not None and r.accuracy is not None]


def pareto_front(records: Iterable[TrialRecord], *, by_size: bool = False) -> list[TrialRecord]:
    """Complete trials not dominated in (lower cost_ratio, higher accuracy), sorted by cost_ratio; with `by_size`
    (runs that search int8: sizes_count) also in lower size_ratio, so a float model stays beside the smaller int8
    one that is no cheaper in the run's cost and no more accurate (under FLOPs int8 saves none; under latency it is
    fast but loses accuracy), and the user sees that trade.

    Trials with identical (cost_ratio, accuracy[, size_ratio]) do not dominate each other, so all of them stay.
    """
    scored = _scored(records)
    ordered = sorted(scored, key=lambda r: (r.cost_ratio, -r.accuracy, r.number))
    if by_size:
        return [r for r in ordered if not any(_dominates(other, r) for other in scored)]
    front: list[TrialRecord] = []
    for record in ordered:
        if not front or record.accuracy > front[-1].accuracy:
            front.append(record)
        elif (record.cost_ratio, record.accuracy) == (front[-1].cost_ratio, front[-1].accuracy):
            front.append(record)
    return front


def _dominates(a: TrialRecord, b: TrialRecord) -> bool:
    """`a` is no worse than `b` in cost, accuracy and size and better in one (an unknown size counts as the worst)."""
    inf = float("inf")
    mine = (a.cost_ratio, -a.accuracy, a.size_ratio if a.size_ratio is not None else inf)
    theirs = (b.cost_ratio, -b.accuracy, b.size_ratio if b.size_ratio is not None else inf)
    return all(x <= y for x, y in zip(mine, theirs)) and mine != theirs


def sizes_count(config: dict) -> bool:
    """Whether a run's front also weighs bytes (pareto_front's by_size): it searched int8 (--quantize)."""
    return bool(config.get("quantize"))


def within_budget(record: TrialRecord, budget: float) -> bool:
    """Complete, with a known cost ratio no larger than the budget."""
    return record.is_complete and record.cost_ratio is not None and record.cost_ratio <= budget + TOLERANCE


def is_feasible(record: TrialRecord, budget: float, epsilon: float) -> bool:
    """Within budget and losing at most epsilon of validation accuracy."""
    return (
        within_budget(record, budget)
        and record.accuracy_loss is not None
        and record.accuracy_loss <= epsilon + TOLERANCE
    )


def _accuracy_or_worst(record: TrialRecord) -> float:
    return record.accuracy if record.accuracy is not None else float("-inf")


def select_best(records: Iterable[TrialRecord], budget: float, epsilon: float) -> TrialRecord | None:
    """The feasible trial of least cost ratio, where costs within COST_TIE of the least count as equal; among them,
    accuracies within ACCURACY_TIE of the best count as equal too, and the lowest measured latency ratio wins (an
    unknown one last), then higher accuracy, lower cost, lower number; None if none."""
    feasible = [r for r in records if is_feasible(r, budget, epsilon)]
    if not feasible:
        return None
    least = min(r.cost_ratio for r in feasible)
    tied = [r for r in feasible if r.cost_ratio <= least + COST_TIE]
    best = max(_accuracy_or_worst(r) for r in tied)
    level = [r for r in tied if _accuracy_or_worst(r) >= best - ACCURACY_TIE]
    return min(level, key=lambda r: (r.latency_ratio if r.latency_ratio is not None else float("inf"),
                                     -_accuracy_or_worst(r), r.cost_ratio, r.number))


def closest_to_epsilon(records: Iterable[TrialRecord], budget: float) -> TrialRecord | None:
    """The in-budget trial that lost the least accuracy (ties: lower cost); None if none is in budget."""
    in_budget = [r for r in records if within_budget(r, budget) and r.accuracy_loss is not None]
    if not in_budget:
        return None
    return min(in_budget, key=lambda r: (r.accuracy_loss, r.cost_ratio, r.number))
