"""Warm-start baselines: the first trials of every new study are what a user would try by hand at the budget."""
from __future__ import annotations

from typing import Any

import optuna

from pruners import get_method
from spaces import SearchSpace

BASELINE_LABEL = "baseline:"  # the label prefix of a warm-start trial: baseline:uniform_l1, ...


def baseline_points(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """Uniform L1 channel pruning, Torch-Pruning's global group-L2 ranking and uniform magnitude, at the budget."""
    uniform = {"allocation": "shaped", "stream_share": 1.0, "depth_tilt": 0.0}
    common = {"lr_scale": 1.0, "distill": 0.0, "target": space.budget, **float_only(space)}
    points = {
        "uniform_l1": {"method": "channel", "criterion": "l1", "round_to": 1, "ranking": "per_group", **uniform,
                       **common},
        "tp_global": {"method": "channel", "criterion": "l2", "round_to": 1, "ranking": "global", **common},
        "uniform_magnitude": {"method": "magnitude", **uniform, **common},
    }
    for point in points.values():  # a hand-picked baseline removes no blocks and refits nothing, where the space may
        if space.blocks and "blocks" in get_method(point["method"]).options:
            point["depth"] = 0.0
        if "reconstruct" in get_method(point["method"]).options:
            point["reconstruct"] = False
    return {name: p for name, p in points.items() if p["method"] in space.methods}


def sensitivity_point(space: SearchSpace) -> dict[str, Any] | None:
    """The search's own first point where the run has a sensitivity map: channel pruning at the budget, each group in
    proportion to its measured efficiency (power 1), the layers refit by reconstruction. Not a hand-picked baseline:
    it is labelled `search`."""
    if not space.sensitivity or "channel" not in space.methods:
        return None
    point = {"method": "channel", "criterion": "l2", "round_to": 1, "ranking": "per_group",
             "allocation": "sensitivity", "sensitivity_power": 1.0, "reconstruct": True, "lr_scale": 1.0,
             "distill": 0.0, "target": space.budget, **float_only(space)}
    return {**point, "depth": 0.0} if space.blocks else point


def float_only(space: SearchSpace) -> dict[str, Any]:
    """The fixed choice that keeps a queued point in float where the space offers int8 (an enqueued trial's unset
    parameters would be sampled)."""
    return {"quantize": "none"} if space.quantize else {}


def enqueue_baselines(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Queue the baselines, then the sensitivity point, in a study that has no trials yet; returns the baselines'
    names."""
    if study.trials:
        return []
    points = baseline_points(space)
    for name, params in points.items():
        study.enqueue_trial(params, user_attrs={"label": f"{BASELINE_LABEL}{name}"})
    first = sensitivity_point(space)
    if first is not None:
        study.enqueue_trial(first, user_attrs={"label": "search"})
    return list(points)
