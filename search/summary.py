"""The terminal summary after a run: dense against the pick, with FLOPs and latency ratios side by side."""
from __future__ import annotations

from typing import Any

SLOW_RATIO = 0.95  # a pick at or above this latency ratio is not measurably faster than dense


def _fmt_int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _fmt_acc(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


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
        rows += [("val accuracy", _fmt_acc(dense["accuracy"]), "-", ""), ("test accuracy", _fmt_acc(dense["test_accuracy"]), "-", ""),
                 ("FLOPs", _fmt_int(dense["flops"]), "-", ""), ("params", _fmt_int(dense["params"]), "-", ""),
                 ("latency p50", f"{dense['latency_ms']:.3f} ms", "-", "")]
    else:
        rows += [
            ("val accuracy", _fmt_acc(dense["accuracy"]), _fmt_acc(best["accuracy"]),
             f"{100 * (best['accuracy'] - dense['accuracy']):+.2f} pt"),
            ("test accuracy", _fmt_acc(dense["test_accuracy"]), _fmt_acc(best["test_accuracy"]),
             "" if best["test_accuracy"] is None else f"{100 * (best['test_accuracy'] - dense['test_accuracy']):+.2f} pt"),
            ("FLOPs", _fmt_int(dense["flops"]), _fmt_int(best["flops"]), f"{best['flops_ratio']:.3f}x"),
            ("params", _fmt_int(dense["params"]), _fmt_int(best["params"]), f"{best['params_ratio']:.3f}x"),
            ("latency p50", f"{best.get('dense_latency_ms') or dense['latency_ms']:.3f} ms", f"{best['latency_ms']:.3f} ms",
             f"{best['latency_ratio']:.3f}x (interleaved)"),
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if best is not None:
        lines.insert(1, f"Pick: trial {best['trial']} ({best['method']}, {best['label']}), cost ratio {best['cost_ratio']:.3f} "
                        f"({pareto['cost_metric']}), FLOPs ratio {best['flops_ratio']:.3f}, latency ratio {best['latency_ratio']:.3f}.")
        if best["latency_ratio"] >= SLOW_RATIO:
            lines.append("Warning: the pick is not measurably faster than dense. Masked (unstructured) weights cut FLOPs but, "
                         "without sparse kernels, not time; use --cost latency or --methods channel,layer for speed.")
    lines.append(f"Report: {report_path}")
    return lines
