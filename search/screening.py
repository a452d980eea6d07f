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

import optuna
from optuna.trial import TrialState

from reports.selection import TOLERANCE

MIN_OBSERVED = 4  # fine-tuned trials needed before any candidate is stopped
MARGIN = 0.005  # slack on top of the largest gain seen
RANK_MARGIN = 0.03  # how much worse than the front's recalibrated accuracy a candidate must screen to be stopped
RANK_FLOOR = 0.5  # ranking stops nothing where the front screened under this share of the dense accuracy
"""Recalibrated accuracy ranks fine-tuned accuracy at moderate pruning (EagleEye), not where recalibration leaves
everything near chance: in a --cost latency --budget 0.6 run on fashion-resnet20, candidates that screened at 0.20
and 0.23 ended at 0.83-0.84 after the trial fine-tune, one that screened at 0.38 ended at 0.72, and ranking stopped
14 of 20 candidates. There, only the largest-gain rule stops a candidate."""


def screening_bar(observed: Iterable[tuple[float, float]], finished: Iterable[tuple[float, float, float]],
                  dense_accuracy: float) -> dict[str, Any] | None:
    """What a trial needs to screen itself, as JSON: the largest gain over the (screened, final) pairs seen, the
    non-dominated (cost ratio, accuracy, screened accuracy) points of the finished trials, and the screened accuracy
    under which ranking says nothing (RANK_FLOOR of dense); None until enough are seen."""
    pairs = list(observed)
    if len(pairs) < MIN_OBSERVED:
        return None
    front: list[list[float]] = []
    for cost, accuracy, screened in sorted(finished, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append([cost, accuracy, screened])
    return {"largest_gain": max(max(final - screened for screened, final in pairs), 0.0), "front": front,
            "rank_floor": RANK_FLOOR * dense_accuracy}


def stop_below(bar: dict[str, Any] | None, cost: float) -> float | None:
    """The screened accuracy under which a candidate at `cost` would stay dominated by the front at no higher cost."""
    if bar is None:
        return None
    cheaper = [point for point in bar["front"] if point[0] <= cost + TOLERANCE]
    if not cheaper:
        return None
    by_gain = max(p[1] for p in cheaper) - bar["largest_gain"] - MARGIN
    screened = max(p[2] for p in cheaper)
    return max(by_gain, screened - RANK_MARGIN) if screened >= bar.get("rank_floor", 0.0) else by_gain


def screen_bar(study: optuna.Study, dense_accuracy: float) -> dict | None:
    """The screening bar from this study's finished trials (None until enough are seen), with the
    front in the run's own cost metric: a candidate's fitted ratio is in that metric too."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pairs = [(t.user_attrs["accuracy_before_finetune"], t.user_attrs["accuracy_after_finetune"])
             for t in complete if t.user_attrs.get("accuracy_after_finetune") is not None]
    points = [(t.user_attrs["cost_ratio"], t.user_attrs["accuracy"], t.user_attrs["accuracy_before_finetune"])
              for t in complete if t.user_attrs.get("accuracy_after_finetune") is not None]
    return screening_bar(pairs, points, dense_accuracy)
