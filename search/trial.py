"""One trial, the same for every backend: fit the sampled point to its target, prune, recover, measure, save.

`evaluate_point` knows nothing of Optuna or Ray: it takes the sampled parameters and returns the metrics
that the backend records in the study.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pruners import bake, get_method, needs_calibration
from search.config import RunConfig
from search.dynamic import make_dynamic
from search.fit import fit_to_target
from search.measure import compare_latency, count_flops, count_params, model_size_bytes
from search.measure.latency_table import LatencyTable
from search.model_files import save_pruned
from search.quantize import quantize_int8
from search.recover import ScreenedOut, recover
from search.reference import DenseReference, measure_against_dense
from search.screening import stop_below
from search.training import evaluate
from search.workloads import Workload
from spaces import SearchSpace


@dataclass
class TrialContext:
    """What every trial of one run shares: the workload, the space, the config, the dense reference, the run folder."""

    workload: Workload
    space: SearchSpace
    config: RunConfig
    dense: DenseReference
    run_dir: Path
    latency_table: LatencyTable | None = None  # the target's latency model; None where it cannot model the network


FIT_LATENCY_REPEATS = 20  # per bisection step, when no latency table models the network: a quick interleaved timing


def fitting_ratio(workload: Workload, dense: DenseReference, config: RunConfig,
                  table: LatencyTable | None = None) -> Callable[[nn.Module], float]:
    """The ratio a point is fitted on, in the run's cost metric: parameters, FLOPs, bytes, or latency predicted by
    the table (timed interleaved with dense, quickly, where no table models the network: noisier and slower). Always
    of the float model: an int8 point's target is scaled to it (SearchSpace.backbone_target)."""
    if config.cost == "size":
        return lambda model: model_size_bytes(model) / dense.size_bytes
    if config.cost == "params":
        return lambda model: count_params(model, nonzero_only=True) / dense.params
    if config.cost == "latency" and table is not None:
        return table.predict_model_ratio
    if config.cost == "latency":
        return lambda model: compare_latency(
            {"dense": workload.model, "pruned": model}, workload.example_inputs, reference="dense",
            device=config.device, threads=config.threads, batch_size=config.batch_size, repeats=FIT_LATENCY_REPEATS,
            rounds=4)["pruned"]["ratio"]
    return lambda model: count_flops(model, workload.example_inputs) / dense.flops


def calibration_options(workload: Workload, method: str, criterion: str, options: dict[str, Any]) -> dict:
    """The labelled batch that data-driven criteria rank with and reconstruction refits layers on, where the call
    needs one (pruners.needs_calibration)."""
    return {"calibration": next(iter(workload.calibration))} if needs_calibration(method, criterion, options) else {}


def point_seed(run_seed: int, point: dict[str, Any]) -> int:
    """The seed of one point's pruning and fine-tune: the run's seed and the point itself, never the trial number or
    what ran before, so a point re-run (after a resume, on another Ray worker, in another benchmark arm) repeats."""
    text = json.dumps(point, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{text}".encode()).digest()[:4], "little")


def model_path(number: int) -> str:
    """Where trial `number`'s model is saved, relative to the run folder."""
    return f"trials/{number:05d}/model.pt"


def evaluate_point(ctx: TrialContext, params: dict[str, Any], number: int, label: str = "search",
                   screen: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one trial and return its user attributes (policy, accuracy, costs, ratios, model_path).

    With a `screen` bar (search.screening), a candidate that would stay dominated raises ScreenedOut before
    fine-tuning.
    """
    started = time.perf_counter()
    seed = point_seed(ctx.config.seed, params)
    torch.manual_seed(seed)
    workload, dense, config = ctx.workload, ctx.dense, ctx.config
    extra = calibration_options(workload, params["method"], params.get("criterion", ""), params)
    target = ctx.space.backbone_target(params, params.get("target", config.budget))  # exits or int8 cut the rest
    fitted = fit_to_target(workload.model, workload.example_inputs, ctx.space, params, target,
                           fitting_ratio(workload, dense, config, ctx.latency_table), label, extra)
    model, policy = fitted.model, fitted.policy
    fit_seconds = time.perf_counter() - started
    # a backbone that only loses blocks has no level to fit: its exits make whatever cut the blocks leave
    over_budget = ctx.space.thins_channels(params) and fitted.ratio > ctx.space.backbone_target(params, config.budget)
    dynamic = get_method(policy.method).dynamic
    # screened at the cost it will have: a dynamic backbone's accuracy bounds the model its exits make, and an int8
    # point costs its float model's ratio times the run's int8 factor
    int8 = policy.quantize == "int8"
    bar = stop_below(screen, params["target"] if dynamic else fitted.ratio * (ctx.space.int8_factor if int8 else 1))
    torch.manual_seed(seed)  # fitting may time models (random inputs) a varying number of times
    try:
        recovery = recover(model, workload, epochs=0 if over_budget else config.finetune_epochs,
                           lr=policy.finetune_lr, device=config.device, stop_below=bar, distill=policy.distill,
                           temperature=policy.distill_temperature)
    except ScreenedOut as stop:
        stop.attrs = {"policy": policy.to_json(), "method": policy.method, "label": label,
                      "accuracy": stop.accuracy, "accuracy_before_finetune": stop.accuracy,
                      "accuracy_loss": dense.accuracy - stop.accuracy,
                      "fitted_ratio": fitted.ratio, "stopped_reason": str(stop),
                      "screen_seconds": fit_seconds + stop.seconds,
                      "seconds": time.perf_counter() - started}
        raise
    model, accuracy = bake(model.cpu().eval()), recovery.accuracy
    if dynamic:
        model = make_dynamic(model, workload, policy, config, epochs=config.finetune_epochs)
        accuracy = evaluate(model, workload.val, config.device)
    if int8:
        model = quantize_int8(model, workload.example_inputs, workload.calibration)
        accuracy = evaluate(model, workload.val)
    if not math.isfinite(accuracy):
        raise FloatingPointError("validation accuracy is not a number")
    measured = measure_against_dense(model, workload, dense, device=config.device, threads=config.threads,
                                     batch_size=config.batch_size, table=ctx.latency_table)
    relative = model_path(number)
    save_pruned(model, ctx.run_dir / relative, workload.input_shape)
    return {
        "policy": policy.to_json(), "method": policy.method, "label": label,
        "accuracy": accuracy, "accuracy_loss": dense.accuracy - accuracy,
        "accuracy_before_finetune": recovery.accuracy_before_finetune,
        "accuracy_after_finetune": recovery.accuracy_after_finetune, "kept": recovery.kept,
        **measured.to_attrs(),
        "cost_ratio": measured.ratio(config.cost), "fitted_ratio": fitted.ratio,
        "target": params.get("target"), "model_path": relative, "seconds": time.perf_counter() - started,
        "screen_seconds": fit_seconds + recovery.screen_seconds,
        **({"stopped_reason": f"the most this point prunes leaves {config.cost} at {fitted.ratio:.3f} of dense, over "
                              f"the budget {config.budget}: not fine-tuned"} if over_budget else {}),
    }
