"""Spearman rank correlation where it is defined: the one way the report and the benchmark rank screened against
fine-tuned accuracy."""
from __future__ import annotations

from collections.abc import Sequence

from scipy.stats import spearmanr


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho of paired values; None with fewer than two pairs or where one side is constant (scipy would
    warn on stderr and give NaN, which JSON cannot hold)."""
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)
