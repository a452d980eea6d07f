"""The terminal summary after a run: dense against the pick, with FLOPs and latency ratios side by side."""
from __future__ import annotations

from typing import Any

from reports.formatting import is_dynamic, is_masked, is_quantized
from reports.selection import TOLERANCE

SLOW_RATIO = 0.95  # a pick at or above this latency ratio is not measurably faster than dense


def _fmt_int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _fmt_acc(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _search_batch(best: dict[str, Any]) -> str:
    """The batch size the search timed at: the one whose entry holds the pick's own latency ratio."""
    searched = [batch for batch, entry in (best.get("latency_by_batch") or {}).items() if entry.get("searched")]
    return searched[0] if searched else "as searched"


def _other_batches(best: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows for the pick's latency at the batch regimes the search did not time at."""
    searched = _search_batch(best)
    return [(f"latency p50, batch {batch}", f"{entry['dense_p50_ms']:.3f} ms", f"{entry['p50_ms']:.3f} ms",
             f"{entry['latency_ratio']:.3f}x (interleaved)")
            for batch, entry in (best.get("latency_by_batch") or {}).items() if batch != searched]


def none_reason(pareto: dict[str, Any]) -> str:
    """Why there is no pick, in one sentence: nothing within budget, or nothing within epsilon."""
    budget, epsilon, cost = pareto["budget"], pareto["epsilon"], pareto["cost_metric"]
    within = [m for m in pareto["pareto"] if m["cost_ratio"] is not None and m["cost_ratio"] <= budget + TOLERANCE]
    if not within:
        cheapest = min((m["cost_ratio"] for m in pareto["pareto"] if m["cost_ratio"] is not None), default=None)
        reached = "no trial completed" if cheapest is None else f"the cheapest reached {cost} ratio {cheapest:.3f}"
        return f"no model came within the budget {budget:g} ({reached}); raise --budget or search more trials."
    closest = max(within, key=lambda m: m["accuracy"])
    lost = pareto["dense"]["accuracy"] - closest["accuracy"]
    return (f"within the budget, the most accurate model lost {100 * lost:.2f} points (epsilon {100 * epsilon:.2f}); "
            "raise --epsilon or --final-epochs, or search more trials.")


def summary_lines(pareto: dict[str, Any], report_path: str) -> list[str]:
    """Lines of the dense-vs-pick table, the pick's warning if it is no faster, and where the report is."""
    dense, best = pareto["dense"], pareto["best"]
    counts = pareto["trials"]
    lines = [f"{counts['complete']} trials complete, {counts['pruned']} stopped early, {counts['failed']} failed; "
             f"{len(pareto['pareto'])} on the Pareto front."]
    rows = [("", "dense", "pick", "ratio")]
    if best is None:
        lines.append(f"No model met epsilon={pareto['epsilon']} within budget {pareto['budget']}: "
                     "see the report for the closest one.")
        rows += [("val accuracy", _fmt_acc(dense["accuracy"]), "-", ""),
                 ("test accuracy", _fmt_acc(dense["test_accuracy"]), "-", ""),
                 ("FLOPs", _fmt_int(dense["flops"]), "-", ""), ("params", _fmt_int(dense["params"]), "-", ""),
                 ("latency p50", f"{dense['latency_ms']:.3f} ms", "-", "")]
    else:
        rows += [
            ("val accuracy", _fmt_acc(dense["accuracy"]), _fmt_acc(best["accuracy"]),
             f"{100 * (best['accuracy'] - dense['accuracy']):+.2f} pt"),
            ("test accuracy", _fmt_acc(dense["test_accuracy"]), _fmt_acc(best["test_accuracy"]),
             "" if best["test_accuracy"] is None
             else f"{100 * (best['test_accuracy'] - dense['test_accuracy']):+.2f} pt"),
            ("nonzero FLOPs" if best.get("nonzero_flops") is not None else "FLOPs", _fmt_int(dense["flops"]),
             _fmt_int(best["flops"]), f"{best['flops_ratio']:.3f}x"),
            ("params", _fmt_int(dense["params"]), _fmt_int(best["params"]), f"{best['params_ratio']:.3f}x"),
            *([("size", f"{dense['size_bytes'] / 1e3:,.0f} KB", f"{best['size_bytes'] / 1e3:,.0f} KB",
                f"{best['size_ratio']:.3f}x")] if best.get("size_ratio") and dense.get("size_bytes") else []),
            *([("size, packed", f"{dense['compressed_bytes'] / 1e3:,.0f} KB",
                f"{best['compressed_bytes'] / 1e3:,.0f} KB", f"{best['compressed_ratio']:.3f}x")]
              if best.get("compressed_ratio") and dense.get("compressed_bytes") else []),
            ("latency mean, stream" if is_dynamic(best["method"]) else "latency p50",
             f"{best.get('dense_latency_ms') or dense['latency_ms']:.3f} ms", f"{best['latency_ms']:.3f} ms",
             f"{best['latency_ratio']:.3f}x (interleaved, batch {_search_batch(best)})"),
            *_other_batches(best),
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if best is not None:
        flops = "nonzero FLOPs" if best.get("nonzero_flops") is not None else "FLOPs"
        int8 = " + int8" if is_quantized(best.get("policy")) else ""
        lines.insert(1, f"Pick: trial {best['trial']} ({best['method']}{int8}, {best['label']}), "
                        f"cost ratio {best['cost_ratio']:.3f} "
                        f"({pareto['cost_metric']}), {flops} ratio {best['flops_ratio']:.3f}, latency ratio "
                        f"{best['latency_ratio']:.3f}.")
        if best.get("latency_ratio_p10") is not None:
            lines.insert(2, f"Latency ratio re-measured after the search: {best['latency_ratio']:.3f} "
                            "(p10-p90 over rounds "
                            f"{best['latency_ratio_p10']:.3f}-{best['latency_ratio_p90']:.3f}).")
        if best["latency_ratio"] >= SLOW_RATIO and is_dynamic(best["method"]):
            lines.append("Warning: the pick is not measurably faster than dense: its early exits' per-call work "
                         "outweighs what they save on a network this fast at batch 1; use --cost latency, which "
                         "prices each exit by its measured time.")
        elif best["latency_ratio"] >= SLOW_RATIO and int8:
            lines.append("Warning: the pick is not measurably faster than dense: its int8 kernels' quantise and "
                         "dequantise steps outweigh what they save on a network this small at batch 1; use --cost "
                         "latency for speed.")
        elif best["latency_ratio"] >= SLOW_RATIO and is_masked(best["method"]):
            lines.append("Warning: the pick is not measurably faster than dense. Masked weights cut nonzero FLOPs but, "
                         "without sparse kernels, not time; search the default methods (channel, layer) or "
                         "use --cost latency for speed.")
        elif best["latency_ratio"] >= SLOW_RATIO:
            lines.append("Warning: the pick is not measurably faster than dense at this batch size; use --cost "
                         "latency for speed.")
    else:
        lines.append(f"Why: {none_reason(pareto)}")
    for step, reason in (pareto.get("final_stage_errors") or {}).items():
        lines.append(f"Final stage: {step} failed ({reason}); the figures above are the search's.")
    lines.append(f"Report: {report_path}")
    return lines
