"""The policy, visible: what the pick kept of each layer, and the Pareto models' per-layer sparsity side by side.

Both read a trial's `layers` rows (search.measure.layer_profile: name, kept units, dense units, nonzero weights,
dense weights), measured on the model itself, so a removed block and a masked layer show as what they are.
"""

from __future__ import annotations

import plotly.graph_objects as go

from reports import formatting as fmt
from reports.records import TrialRecord


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def policy_bar_figure(record: TrialRecord) -> go.Figure | None:
    """Per layer of the pick, in network order: the share of dense's output channels and of its weights kept."""
    if not record.layers:
        return None
    names = [row[0] for row in record.layers]
    channels = [f"{name}: {kept} of {dense} output units kept" for name, kept, dense, _, _ in record.layers]
    weights = [f"{name}: {fmt.count(nonzero)} of {fmt.count(total)} weights nonzero"
               for name, _, _, nonzero, total in record.layers]
    figure = go.Figure([
        go.Bar(x=names, y=[_share(kept, dense) for _, kept, dense, _, _ in record.layers], name="output channels kept",
               text=channels, hovertemplate="%{text}<extra></extra>", textposition="none"),
        go.Bar(x=names, y=[_share(nonzero, total) for _, _, _, nonzero, total in record.layers],
               name="weights kept (nonzero)", text=weights, hovertemplate="%{text}<extra></extra>",
               textposition="none"),
    ])
    figure.add_hline(y=1.0, line_dash="dot", line_color="#555", annotation_text="dense")
    figure.update_layout(title=f"Pick (trial {record.number}, {fmt.model_kind(record)}): kept per layer vs dense",
                         xaxis_title="layer (network order)", yaxis_title="share of dense", yaxis_tickformat=".0%",
                         yaxis_range=[0, 1.1], barmode="group", template="plotly_white", height=460)
    return figure


def recipe_text(record: TrialRecord) -> str:
    """Method, criterion and recovery recipe of a trial's policy, for a hover box."""
    policy = record.policy or {}
    parts = [f"method: {fmt.model_kind(record)}"]
    if policy.get("criterion"):
        parts.append(f"criterion: {policy['criterion']}")
    recipe = [f"{key} {policy[key]:.3g}" if isinstance(policy[key], float) else f"{key} {policy[key]}"
              for key in ("finetune_lr", "distill", "distill_temperature", "quantize") if key in policy]
    if recipe:
        parts.append("recipe: " + ", ".join(recipe))
    return "<br>".join(parts)


def pareto_heatmap_figure(front: list[TrialRecord]) -> go.Figure | None:
    """Per-layer sparsity (1 - nonzero weights / dense weights) of each Pareto model: layers in network order across,
    models cheapest first down; None when no front model has layer rows."""
    models = [r for r in front if r.layers]
    if not models:
        return None
    names = [row[0] for row in models[0].layers]
    sparsity, hover = [], []
    for record in models:
        rows = {row[0]: row for row in record.layers}
        recipe = recipe_text(record)
        line, text = [], []
        for name in names:
            _, kept, dense, nonzero, total = rows.get(name, [name, 0, 0, 0, 0])
            line.append(1.0 - _share(nonzero, total))
            text.append(f"trial {record.number}, {name}<br>sparsity {line[-1]:.0%}, {kept} of {dense} output units"
                        f"<br>{recipe}")
        sparsity.append(line)
        hover.append(text)
    labels = [f"trial {r.number} · {fmt.ratio(r.cost_ratio)}" for r in models]
    figure = go.Figure(go.Heatmap(z=sparsity, x=names, y=labels, text=hover, hovertemplate="%{text}<extra></extra>",
                                  zmin=0.0, zmax=1.0, colorscale="Reds", colorbar={"title": "sparsity"}))
    figure.update_layout(title="Pareto models: per-layer sparsity", xaxis_title="layer (network order)",
                         yaxis_title="model (cost ratio)", yaxis_autorange="reversed", template="plotly_white",
                         height=max(300, 60 + 28 * len(models)))
    return figure
