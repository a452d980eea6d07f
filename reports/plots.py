"""Interactive plotly figures: the cost/accuracy trade-off and FLOPs versus measured latency."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dynamic.runtime import LOSSES
from reports import formatting as fmt
from reports.records import RunInfo, TrialRecord
from reports.selection import sizes_count

HOVER = "%{text}<extra></extra>"


def hover_text(record: TrialRecord) -> str:
    """The hover box: trial, label, method, accuracy and every cost ratio."""
    return "<br>".join(
        [
            f"trial {record.number} ({record.label or 'search'})",
            f"method: {fmt.model_kind(record)}",
            f"val accuracy: {fmt.percent(record.accuracy)} (loss {fmt.points(record.accuracy_loss)})",
            f"cost ratio: {fmt.ratio(record.cost_ratio)}",
            f"FLOPs ratio: {fmt.ratio(record.flops_ratio)}",
            f"latency ratio: {fmt.ratio(record.latency_ratio)}",
            f"params ratio: {fmt.ratio(record.params_ratio)}",
            f"size ratio: {fmt.ratio(record.size_ratio)}",
        ]
    )


def _points(records: list[TrialRecord], name: str, marker: dict, mode: str = "markers") -> go.Scatter:
    return go.Scatter(
        x=[r.cost_ratio for r in records],
        y=[r.accuracy for r in records],
        text=[hover_text(r) for r in records],
        hovertemplate=HOVER,
        mode=mode,
        name=name,
        marker=marker,
    )


def cost_accuracy_figure(
    info: RunInfo, trials: list[TrialRecord], front: list[TrialRecord], best: TrialRecord | None
) -> go.Figure:
    """Cost ratio vs validation accuracy for every trial with both; Pareto, baselines, budget and epsilon marked."""
    plotted = [t for t in trials if t.cost_ratio is not None and t.accuracy is not None]
    complete = [t for t in plotted if t.is_complete]
    groups = [
        ([t for t in complete if not t.is_baseline], "search trials", {"color": "#9aa5b1", "size": 7}, "markers"),
        ([t for t in complete if t.is_baseline], "warm-start baselines",
         {"color": "#e8a33d", "size": 11, "symbol": "diamond"}, "markers"),
        ([t for t in plotted if not t.is_complete], "stopped early",
         {"color": "#c5cbd3", "size": 7, "symbol": "x"}, "markers"),
        *((part.records, part.name, {"color": "#d62728", "size": 12, "symbol": "diamond"} if part.int8 else
           {"color": "#d62728", "size": 10}, "lines+markers" if part.line else "markers")
          for part in fmt.front_parts(front, sizes_count(info.config))),
    ]
    figure = go.Figure()
    for records, name, marker, mode in groups:
        if records:
            figure.add_trace(_points(records, name, marker, mode))
    if best is not None:
        figure.add_trace(_points([best], "pick", {"color": "#2ca02c", "size": 18, "symbol": "star"}))
    dense_accuracy = info.dense.get("accuracy")
    if dense_accuracy is not None:
        figure.add_trace(go.Scatter(
            x=[1.0], y=[dense_accuracy], mode="markers", name="dense",
            marker={"color": "black", "size": 11, "symbol": "square"},
            hovertemplate=f"dense<br>val accuracy: {fmt.percent(dense_accuracy)}<extra></extra>",
        ))
        figure.add_hline(y=dense_accuracy - info.epsilon, line_dash="dot", line_color="#555",
                         annotation_text=f"dense − epsilon ({fmt.percent(dense_accuracy - info.epsilon)})")
    figure.add_vline(x=info.budget, line_dash="dash", line_color="#555",
                     annotation_text=f"budget {info.budget:g}")
    figure.update_layout(
        title=f"{info.cost_metric} ratio vs validation accuracy",
        xaxis_title=f"cost ratio ({info.cost_metric}, pruned / dense)",
        yaxis_title="validation accuracy", yaxis_tickformat=".1%",
        template="plotly_white", height=520,
    )
    return figure


def flops_latency_figure(trials: list[TrialRecord], front: list[TrialRecord]) -> go.Figure | None:
    """FLOPs ratio vs latency ratio per method with y = x; None when no trial has both."""
    measured = [t for t in trials if t.is_complete and t.flops_ratio is not None and t.latency_ratio is not None]
    if not measured:
        return None
    figure = go.Figure()
    for method in sorted({fmt.model_kind(t) for t in measured}):
        group = [t for t in measured if fmt.model_kind(t) == method]
        figure.add_trace(go.Scatter(
            x=[t.flops_ratio for t in group], y=[t.latency_ratio for t in group],
            text=[hover_text(t) for t in group], hovertemplate=HOVER, mode="markers", name=method,
        ))
    measured_numbers = {t.number for t in measured}
    on_front = [t for t in front if t.number in measured_numbers]
    figure.add_trace(go.Scatter(
        x=[t.flops_ratio for t in on_front], y=[t.latency_ratio for t in on_front],
        text=[hover_text(t) for t in on_front], hovertemplate=HOVER, mode="markers", name="Pareto front",
        marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": "#d62728", "width": 2}},
    ))
    top = max(1.0, *(t.flops_ratio for t in measured), *(t.latency_ratio for t in measured))
    figure.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="y = x (latency follows FLOPs)",
                                line={"dash": "dot", "color": "#555"}, hoverinfo="skip"))
    figure.update_layout(
        title="FLOPs ratio vs measured latency ratio",
        xaxis_title="FLOPs ratio (pruned / dense)", yaxis_title="latency ratio, p50 (pruned / dense)",
        template="plotly_white", height=520,
    )
    return figure


def replay_figure(windows: list[dict], epsilon: float, static_cost: float, loss: str,
                  static_pick_cost: float | None = None) -> go.Figure:
    """Mean cost per window against the pick's static backbone (and, where the run's budget is in FLOPs, against a
    static model at the budget, `static_pick_cost`), and the runtime's loss (a name in LOSSES) against epsilon, the
    noise strength on an axis of its own so that a loss of a hundredth stays readable."""
    starts = [w["start"] for w in windows]
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, specs=[[{}], [{"secondary_y": True}]],
                           subplot_titles=("mean cost per input (ratio to dense FLOPs, dense checks included)",
                                           f"loss: {LOSSES[loss]}"))
    figure.add_trace(go.Scatter(x=starts, y=[w["mean_cost"] for w in windows], name="runtime cost",
                                mode="lines+markers"), row=1, col=1)
    figure.add_hline(y=static_cost, line_dash="dash", annotation_text="static backbone", row=1, col=1)
    if static_pick_cost is not None:
        figure.add_hline(y=static_pick_cost, line_dash="dot", annotation_text="a static model at the budget",
                         row=1, col=1)
    figure.add_trace(go.Scatter(x=starts, y=[w.get("loss_all", w["disagreement_all"]) for w in windows],
                                name="over every input", mode="lines+markers"), row=2, col=1)
    figure.add_trace(go.Scatter(x=starts, y=[w.get("loss", w["disagreement"]) for w in windows],
                                name="on the runtime's checks", mode="lines+markers"), row=2, col=1)
    figure.add_trace(go.Scatter(x=starts, y=[w["noise"] for w in windows], name="noise strength (max in window)",
                                mode="lines", line={"dash": "dot"}), row=2, col=1, secondary_y=True)
    figure.add_hline(y=epsilon, line_dash="dash", annotation_text="epsilon", row=2, col=1)
    figure.update_xaxes(title_text="input number (window start)", row=2, col=1)
    figure.update_yaxes(title_text="loss", row=2, col=1, secondary_y=False)
    figure.update_yaxes(title_text="noise strength", row=2, col=1, secondary_y=True, showgrid=False)
    figure.update_layout(height=640, title="Dynamic runtime replay")
    return figure


def exit_cost_figure(record: TrialRecord) -> go.Figure:
    """A dynamic model's per-input cost: the share of validation inputs at each exit's cost (ratio to dense FLOPs)."""
    dense_flops = (record.flops or 0) / (record.flops_ratio or 1.0)
    counts, flops = record.exit_counts or [], record.exit_flops or []
    total = max(sum(counts), 1)
    names = [f"exit {k + 1}" for k in range(len(counts) - 1)] + ["no exit"]
    figure = go.Figure(go.Bar(x=[f / dense_flops for f in flops], y=[c / total for c in counts], text=names,
                              width=0.02, hovertemplate="%{text}: cost %{x:.3f}, %{y:.1%} of inputs<extra></extra>"))
    figure.add_vline(x=record.flops_ratio or 0.0, line_dash="dash", annotation_text="mean")
    figure.update_layout(title="Per-input cost of the dynamic pick (validation split)",
                         xaxis_title="FLOPs of the input's path / dense FLOPs", yaxis_title="share of inputs",
                         xaxis_range=[0, 1.05], yaxis_tickformat=".0%")
    return figure
