"""Streams through a dynamic pick's runtime: a stream that turns noisy, its replay with the loss over every input,
and the fit of the runtime's checks on validation (the cheapest that hold the budget there).

The checks a runtime spends (`sample_rate`, `unsure_checks`, `alarm_checks`) are worth what the pick needs: a
backbone that loses more than dense on a shifted stream needs many checks to catch the shift in time (the
runtime's defaults, which hold digits-cnn's pruned backbone on a stream that turns noisy), while one that loses no
more than dense under noise pays for checks it does not need (fashion-resnet20's dynamic pick at 0.5 of the FLOPs
of 2026-12-08, six test streams under the accuracy loss: 0.51-0.58 of dense on the clean part at the defaults,
0.46-0.48 at a 3% base rate, a fifth of the extra checks and a ceiling of 3, every window held either way).
`fit_checks` replays the validation split, clean then noisy, under each setting of CHECK_GRID and keeps the
cheapest on the clean part whose worst window stays within HOLD of epsilon on every seed (digits-cnn's pruned
backbone keeps the defaults: fewer checks let its worst window on validation rise from 0.035 to 0.04 and 0.10 under
disagreement).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import optuna
import torch
from tqdm import tqdm

from dynamic import EarlyExitModel
from dynamic.runtime import DynamicRuntime
from reports import select_best
from reports.best import runtime_settings
from reports.records import RUNTIME_CHECKS_ATTR, load_records
from search.model_files import load_pruned
from search.study import record_by_trial, storage_url
from search.training import Batches
from search.trial import TrialContext

log = logging.getLogger("search.stream_replay")

CHECK_GRID = (  # the runtime's check settings tried by fit_checks, from the most checks (its defaults) to the fewest,
    # each with the ceiling on how far it may loosen the exits (max_scale). The fewest come with a lower ceiling: at a
    # 3% base rate a window of 1,000 inputs gets about 30 checks, too few to see a loss of 1.4% within it, so the exits
    # must not loosen as far. No fewer checks: at 2% and no extra checks (about 20 a window) fashion-resnet20's pick
    # held 0.002 on validation and broke a test window at 0.012, one seed of six, and a validation split the pick was
    # selected on cannot show that
    {"sample_rate": 0.05, "unsure_checks": 0.5, "alarm_checks": 0.5, "max_scale": 4.0},
    {"sample_rate": 0.05, "unsure_checks": 0.25, "alarm_checks": 0.25, "max_scale": 4.0},
    {"sample_rate": 0.03, "unsure_checks": 0.1, "alarm_checks": 0.1, "max_scale": 3.0},
)
HOLD = 0.8  # a fitted setting keeps every validation window within HOLD * epsilon: the rest is for the user's stream
FIT_LENGTH, FIT_WINDOW, FIT_WARMUP, FIT_NOISE = 4000, 1000, 200, 1.0  # the validation stream: half clean, then noisy
FIT_SEEDS = (100, 101)  # seeds of its noise and of the runtime's sampling, apart from a replay's default seeds
DENSE_BATCH = 256  # stream inputs answered by the dense model at once when replaying


def noisy_stream(loader: Batches, length: int, clean: int, noise: float, seed: int = 0
                 ) -> list[tuple[torch.Tensor, int, float]]:
    """(input of batch 1, label, noise strength) for `length` inputs cycled from `loader`: the first `clean` as they
    are, then Gaussian noise growing linearly to a standard deviation of `noise`."""
    samples = [(inputs[i:i + 1], int(labels[i])) for inputs, labels in loader for i in range(len(labels))]
    if not samples:
        raise ValueError("the split to stream from is empty")
    generator = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(length):
        x, label = samples[t % len(samples)]
        strength = 0.0 if t < clean else noise * (t - clean + 1) / max(length - clean, 1)
        stream.append((x + strength * torch.randn(x.shape, generator=generator), label, strength))
    return stream


@torch.inference_mode()
def dense_answers(dense: torch.nn.Module, stream: list[tuple[torch.Tensor, int, float]]) -> list[int]:
    """The dense model's class for every input of the stream, DENSE_BATCH at a time (what the runtime never sees
    but the replay scores it by)."""
    xs = [x for x, _, _ in stream]
    return [int(a) for s in range(0, len(xs), DENSE_BATCH) for a in dense(torch.cat(xs[s:s + DENSE_BATCH])).argmax(1)]


def replay(runtime: DynamicRuntime, stream: list[tuple[torch.Tensor, int, float]], progress: bool = True
           ) -> tuple[list[dict], list[int]]:
    """Serve the stream through the runtime: its per-window log, with added the loss over every input (of the
    runtime's kind: disagreement with dense, or accuracy lost against it), the disagreement over every input and
    the largest noise strength of the window; and the loss per input."""
    dense = dense_answers(runtime.dense, stream)
    disagreed: list[int] = []
    lost: list[int] = []
    with torch.inference_mode():
        served = tqdm(stream, desc="stream", unit="input", leave=False) if progress else stream
        for number, (x, label, _) in enumerate(served):
            answer = int(runtime(x).argmax(1))
            disagreed.append(int(answer != dense[number]))
            lost.append(int(answer != label) - int(dense[number] != label))
            runtime.observe_label(number, label)
    losses = disagreed if runtime.loss == "disagreement" else lost
    windows = runtime.log()
    for window in windows:
        span = range(window["start"], window["start"] + window["inputs"])
        window["loss_all"] = sum(losses[i] for i in span) / max(len(span), 1)
        window["disagreement_all"] = sum(disagreed[i] for i in span) / max(len(span), 1)
        window["noise"] = max((stream[i][2] for i in span), default=0.0)
    return windows, losses


def worst_window(losses: list[int], window: int, warmup: int) -> float:
    """The largest mean loss over sliding windows of `window` inputs starting after `warmup` (in steps of a tenth of
    a window); the whole stream after warm-up where it is shorter than a window."""
    span = min(window, max(len(losses) - warmup, 1))
    step = max(span // 10, 1)
    return max(sum(losses[s:s + span]) / span for s in range(warmup, max(len(losses) - span, warmup) + 1, step))


def mean_cost(windows: list[dict]) -> float:
    """The mean cost per input over `windows` of the runtime's log."""
    return sum(w["cost"] for w in windows) / max(sum(w["inputs"] for w in windows), 1)


@dataclass(frozen=True)
class CheckFit:
    """fit_checks' answer: the check settings kept, and per setting tried its clean-part cost and worst window
    (worst over seeds) on the validation stream."""

    settings: dict[str, float]
    tried: list[dict] = field(default_factory=list)

    @property
    def kept(self) -> dict:
        """The tried entry of the settings kept."""
        return next(t for t in self.tried if all(t[k] == v for k, v in self.settings.items()))

    def as_dict(self) -> dict:
        return {"settings": self.settings, "tried": self.tried, "hold": HOLD, "length": FIT_LENGTH,
                "seeds": list(FIT_SEEDS)}


def fit_checks(model: EarlyExitModel, dense: torch.nn.Module, settings: dict, val: Batches,
               fixed: dict | None = None) -> CheckFit:
    """The cheapest check settings of CHECK_GRID, on the clean part of a validation stream, whose worst window after
    warm-up stays within HOLD * epsilon for every seed of FIT_SEEDS; where none does, the one whose worst window is
    lowest (on a backbone that loses far more than dense under noise, the most checks). `settings`: the runtime's
    other settings (epsilon, loss, costs...), each run calibrated on `val` first; `fixed`: settings the user chose,
    which stand in every entry of the grid. The model's thresholds are left as they were (a runtime moves them, and
    one built without base thresholds starts from the model's)."""
    streams = {seed: noisy_stream(val, FIT_LENGTH, FIT_LENGTH // 2, FIT_NOISE, seed) for seed in FIT_SEEDS}
    thresholds = model.thresholds.clone()
    base = settings.get("base_thresholds") or thresholds.tolist()
    tried = []
    try:
        for checks in CHECK_GRID:
            clean, worst = [], []
            for seed, stream in streams.items():
                runtime = DynamicRuntime(model, dense, **{**settings, **checks, **(fixed or {}),
                                                          "base_thresholds": base, "window": FIT_WINDOW, "seed": seed})
                runtime.calibrate(val)
                windows, losses = replay(runtime, stream, progress=False)
                clean.append(mean_cost([w for w in windows if w["start"] + w["inputs"] <= FIT_LENGTH // 2]))
                worst.append(worst_window(losses, FIT_WINDOW, FIT_WARMUP))
            tried.append({**checks, "clean_cost": sum(clean) / len(clean), "worst_loss": max(worst),
                          "holds": max(worst) <= HOLD * settings["epsilon"]})
    finally:
        model.thresholds.copy_(thresholds)
    holding = [t for t in tried if t["holds"]]
    kept = (min(holding, key=lambda t: t["clean_cost"]) if holding
            else min(tried, key=lambda t: (t["worst_loss"], t["clean_cost"])))
    return CheckFit(settings={k: kept[k] for k in CHECK_GRID[0]}, tried=tried)


def fit_pick_checks(study: optuna.Study, ctx: TrialContext) -> None:
    """The final stage's step for a dynamic pick: fit its runtime's checks on validation, under the loss its runtime
    is saved with, and store them on the study (RUNTIME_CHECKS_ATTR), so best/runtime.json carries them."""
    records = load_records(storage_url(ctx.run_dir))
    best = select_best(records.trials, ctx.config.budget, ctx.config.epsilon)
    settings = None if best is None else runtime_settings(best, records.info.epsilon)
    if best is None or settings is None or best.model_path is None:
        return
    if best.runtime_checks is not None:
        return  # fitted on this model file already (a resumed run)
    log.info("fitting the dynamic pick's runtime checks on a validation stream (trial %d)", best.number)
    model = load_pruned(ctx.run_dir, best.model_path, ctx.workload.model)
    fit = fit_checks(model, ctx.workload.model, settings, ctx.workload.val)
    record_by_trial(study, RUNTIME_CHECKS_ATTR, {best.number: {"model_path": best.model_path, **fit.as_dict()}})
    log.info("runtime checks: sample rate %g, unsure %g, alarm %g, max scale %g (clean part %.3f of dense, worst "
             "window %.4f on validation)", *fit.settings.values(), fit.kept["clean_cost"], fit.kept["worst_loss"])
