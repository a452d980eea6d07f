"""Static PNG pictures for report.md, so a pull-request comment shows the front and the pick's policy.

matplotlib's Figure, without pyplot (so no backend or display is chosen for the process), rather than plotly's
kaleido: kaleido 1.x drives a Chrome it would have to download, which this tool must not do at run time. The
interactive versions of the same plots live in report.html.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from reports.formatting import front_parts
from reports.records import RunInfo, TrialRecord
from reports.selection import sizes_count

DPI = 100


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes, with no timestamp in the metadata so the same report gives the same bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def front_png(info: RunInfo, trials: list[TrialRecord], front: list[TrialRecord], best: TrialRecord | None) -> bytes:
    """Cost ratio against validation accuracy: every complete trial, the Pareto front, the pick, budget and epsilon."""
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    done = [t for t in trials if t.is_complete and t.cost_ratio is not None and t.accuracy is not None]
    axes.scatter([t.cost_ratio for t in done], [t.accuracy for t in done], s=18, color="#9aa5b1", label="trials")
    for part in front_parts(front, sizes_count(info.config)):
        axes.plot([t.cost_ratio for t in part.records], [t.accuracy for t in part.records],
                  ("D" if part.int8 else "o") + ("-" if part.line else ""), color="#d62728", label=part.name)
    if best is not None:
        axes.scatter([best.cost_ratio], [best.accuracy], s=220, marker="*", color="#2ca02c", label="pick", zorder=3)
    axes.axvline(info.budget, linestyle="--", color="#555", label=f"budget {info.budget:g}")
    dense = info.dense.get("accuracy")
    if dense is not None:
        axes.axhline(dense - info.epsilon, linestyle=":", color="#555", label="dense − epsilon")
    axes.set_xlabel(f"cost ratio ({info.cost_metric}, pruned / dense)")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"{info.workload}: {info.cost_metric} ratio vs validation accuracy")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    return _png(figure)


def policy_png(record: TrialRecord) -> bytes:
    """The pick's kept share of dense per layer: output channels and nonzero weights, in network order."""
    rows = record.layers or []
    figure = Figure(figsize=(max(6.0, 0.35 * len(rows)), 4))
    axes = figure.subplots()
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [k / d if d else 0 for _, k, d, _, _ in rows], width=0.4,
             label="output channels kept")
    axes.bar([p + 0.2 for p in positions], [n / w if w else 0 for _, _, _, n, w in rows], width=0.4,
             label="weights kept (nonzero)")
    axes.axhline(1.0, linestyle=":", color="#555")
    axes.set_xticks(list(positions), [row[0] for row in rows], rotation=90, fontsize=7)
    axes.set_ylabel("share of dense")
    axes.set_ylim(0, 1.1)
    axes.set_title(f"Pick (trial {record.number}): kept per layer vs dense")
    axes.legend(fontsize=8)
    return _png(figure)
