"""Successive halving before the final stage: the most accurate trials within budget (by the search's short
fine-tune) are re-pruned and fine-tuned longer, the better half of them longer still, so the final stage fine-tunes
the candidate that earned it rather than the winner of a short, noisy fine-tune. The last rung (two left) can run at
the final stage's own length: a short fine-tune favours what starts well (a refit model at a low learning rate), which
a longer one washes out (measured on fashion-resnet20 at 0.25 FLOPs: the 0.5-epoch winner lost 0.6 pt to Torch-Pruning's
global ranking after one epoch).

Each rung's validation accuracy is stored per trial on the study (PROMOTION_ATTR) as it ends: a resumed run skips
what is done, and the report can say how each candidate fared.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import optuna

from reports import TrialRecord
from reports.selection import TOLERANCE
from search.finalize import retrained
from search.study import record_by_trial
from search.trial import TrialContext

log = logging.getLogger(__name__)
PROMOTION_ATTR = "promotion"  # trial number -> {rung epochs (str): validation accuracy}


def promotion_candidates(records: list[TrialRecord], budget: float, count: int) -> list[TrialRecord]:
    """The `count` most accurate complete trials at or under the budget, by their search-time validation accuracy."""
    fitting = [r for r in records if r.is_complete and r.policy and r.cost_ratio is not None
               and r.cost_ratio <= budget + TOLERANCE]
    return sorted(fitting, key=lambda r: (-(r.accuracy or 0.0), r.cost_ratio))[:count]


def successive_halving(study: optuna.Study, ctx: TrialContext, records: list[TrialRecord], count: int,
                       epochs: float, last_epochs: float = 0.0) -> TrialRecord | None:
    """Promote the `count` best trials within budget: each rung fine-tunes its candidates for `epochs` (doubling per
    rung, the last one, between two, at least `last_epochs`) and keeps the better half, until one is left; returns it
    (None where no trial is within budget)."""
    rung = promotion_candidates(records, ctx.config.budget, count)
    while len(rung) > 1:
        if len(rung) == 2:
            epochs = max(epochs, last_epochs)
        scores = {r.number: _rung_accuracy(study, ctx, r, epochs) for r in rung}
        rung = sorted(rung, key=lambda r: -scores[r.number])[:max(1, len(rung) // 2)]
        log.info("promotion: %g epochs, %s go on", epochs, ", ".join(f"trial {r.number} ({scores[r.number]:.4f})"
                                                                    for r in rung))
        epochs *= 2
    return rung[0] if rung else None


def _rung_accuracy(study: optuna.Study, ctx: TrialContext, record: TrialRecord, epochs: float) -> float:
    """The validation accuracy of `record` re-pruned and fine-tuned `epochs` (stored, or run now and stored)."""
    stored = (study.user_attrs.get(PROMOTION_ATTR) or {}).get(str(record.number)) or {}
    if f"{epochs:g}" in stored:
        return stored[f"{epochs:g}"]
    _, accuracy = retrained(record, ctx.workload, replace(ctx.config, final_epochs=epochs))
    record_by_trial(study, PROMOTION_ATTR, {record.number: {**stored, f"{epochs:g}": accuracy}})
    return accuracy
