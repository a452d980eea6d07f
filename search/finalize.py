"""After the search: the final fine-tune of the Pareto models within budget (--final-epochs), then the test split;
re-pruned from the stored policy and recovered for longer, the same way for every model compared.

Multi-fidelity: the search ranks candidates by a short fine-tune; the few that matter (the Pareto models
within budget) get a longer one, and the pick is made on those. Search decisions never see the test split.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import optuna
import torch
from torch import nn

from pruners import bake, get_method, prune
from reports import TrialRecord, pareto_front, select_best
from reports.records import FINAL_ATTR, load_records
from reports.schema import Measured
from reports.selection import TOLERANCE
from search.config import RunConfig
from search.dynamic import make_dynamic
from search.measure.latency_table import LatencyTable
from search.model_files import load_pruned, save_pruned
from search.quantize import quantize_int8
from search.recover import recover
from search.reference import DenseReference, measure_against_dense
from search.study import record_by_trial, record_test_accuracy, storage_url
from search.training import evaluate
from search.trial import TrialContext, calibration_options, point_seed
from search.workloads import Workload
from spaces import Policy

log = logging.getLogger(__name__)
TARGET_TIMED = ("latency_ms", "latency_p90_ms", "dense_latency_ms", "latency_ratio")  # what --latency-on re-times
FINAL_DISTILL = 0.5
"""Least distillation weight of a final fine-tune. Measured on fashion-resnet20 (Torch-Pruning's global L2 ranking
at half the FLOPs, one epoch): 91.68% validation without distillation, 91.82% with weight 0.5. A search-time
fine-tune is too short for the dense model's soft labels to pay; a longer one gains from them."""


@dataclass
class FinalModel:
    """A model after the final fine-tune: validation and test accuracy, its costs measured against dense, and the
    node that timed it where --latency-on timed it on the target."""

    model: nn.Module
    accuracy: float
    test_accuracy: float
    measured: Measured
    latency_node: str | None = None


def retrained(record: TrialRecord, workload: Workload, config: RunConfig) -> tuple[nn.Module, float]:
    """Re-prune a trial from its policy and recover it for config.final_epochs (distilling from dense with at least
    FINAL_DISTILL), seeded by its policy, a dynamic one's exits trained as long, an int8 one quantised; returns the
    baked model and its validation accuracy."""
    torch.manual_seed(point_seed(config.seed, record.policy))
    policy = Policy.from_json(record.policy)
    model = prune(workload.model, workload.example_inputs, **policy.prune_kwargs(),
                  **calibration_options(workload, policy.method, policy.criterion, policy.options))
    recovery = recover(model, workload, epochs=config.final_epochs, lr=policy.finetune_lr, device=config.device,
                       distill=max(policy.distill, FINAL_DISTILL), temperature=policy.distill_temperature)
    model = bake(model.cpu().eval())
    if policy.quantize == "int8":
        model = quantize_int8(model, workload.example_inputs, workload.calibration)
        return model, evaluate(model, workload.val)
    if not get_method(policy.method).dynamic:
        return model, recovery.accuracy
    model = make_dynamic(model, workload, policy, config, epochs=config.final_epochs)
    return model, evaluate(model, workload.val, config.device)


def final_model_path(number: int) -> str:
    """Where trial `number`'s model after the final fine-tune is saved, relative to the run folder."""
    return f"trials/{number:05d}/final.pt"


def final_candidates(records: list[TrialRecord], budget: float) -> list[TrialRecord]:
    """The search-time Pareto models within budget: the ones a longer fine-tune could change the pick among."""
    return [r for r in pareto_front(records)
            if r.policy and r.cost_ratio is not None and r.cost_ratio <= budget + TOLERANCE]


def refinetune(record: TrialRecord, workload: Workload, dense: DenseReference, config: RunConfig,
               table: LatencyTable | None = None) -> FinalModel:
    """A trial retrained for config.final_epochs, then measured against dense and on the test split; with
    --latency-on, timed again on the target as the search's trials were."""
    model, accuracy = retrained(record, workload, config)
    measured = measure_against_dense(model, workload, dense, device=config.device, threads=config.threads,
                                     batch_size=config.batch_size, table=table)
    node = None
    if config.latency_on:
        from search.backends.ray_latency import target_latency_attrs
        on_target = target_latency_attrs(workload, model, config)
        measured = replace(measured, **{key: on_target[key] for key in TARGET_TIMED})
        node = on_target["latency_node"]
    return FinalModel(model, accuracy, evaluate(model, workload.test, config.device), measured, node)


def finetune_finalists(study: optuna.Study, ctx: TrialContext, limit: int | None = None,
                       most_accurate: bool = False) -> None:
    """Re-prune candidates from their policies and fine-tune them for --final-epochs; each result is stored as it
    ends, so an interrupted stage resumes where it stopped.

    With a `limit`, which candidates: the `limit` most accurate (`most_accurate`: the benchmark asks for the best model
    at a cost), or, for the pick (the least cost within epsilon), first the search-time pick (bisection_start), then a
    bisection over the candidates in cost order: a cheaper one next while the last one met epsilon
    after its fine-tune, a dearer one while it did not. Accuracy after the final fine-tune rises with cost along the
    front, so the cheapest model it makes feasible is found in about log2(candidates) fine-tunes.
    """
    epochs, config = ctx.config.final_epochs, ctx.config
    if epochs <= 0:
        return
    records = load_records(storage_url(ctx.run_dir), final=False).trials
    if limit is None or most_accurate:
        for record in sorted(final_candidates(records, config.budget), key=lambda r: -(r.accuracy or 0.0))[:limit]:
            _finetuned(study, ctx, record)
        return
    ordered, index = bisection_start(records, config.budget, config.epsilon)
    stored = study.user_attrs.get(FINAL_ATTR) or {}
    spent = sum((stored.get(str(r.number)) or {}).get("epochs") == epochs for r in ordered)  # a rerun adds none
    low, high = 0, len(ordered) - 1
    while low <= high:
        entry, ran = _finetuned(study, ctx, ordered[index], allowed=spent < limit)
        spent += ran
        if entry is None:
            return
        if entry["accuracy_loss"] <= config.epsilon + TOLERANCE and entry["cost_ratio"] <= config.budget + TOLERANCE:
            high = index - 1
        else:
            low = index + 1
        index = (low + high) // 2


def bisection_start(records: list[TrialRecord], budget: float, epsilon: float) -> tuple[list[TrialRecord], int]:
    """The final stage's candidates in cost order and where its bisection starts: the search-time pick (select_best
    over every trial, added where it is off the front: a faster model tied in cost and accuracy with a front one),
    else the dearest candidate."""
    pick = select_best(records, budget, epsilon)
    ordered = sorted({r.number: r for r in [*final_candidates(records, budget), *([pick] if pick else [])]}.values(),
                     key=lambda r: (r.cost_ratio, -(r.accuracy or 0.0)))
    return ordered, ordered.index(pick) if pick is not None else len(ordered) - 1


def _finetuned(study: optuna.Study, ctx: TrialContext, record: TrialRecord, allowed: bool = True
               ) -> tuple[dict | None, int]:
    """The final fine-tune's entry for `record` (stored earlier, or run now if `allowed`) and whether it ran now."""
    config = ctx.config
    entry = (study.user_attrs.get(FINAL_ATTR) or {}).get(str(record.number)) or {}
    if entry.get("epochs") == config.final_epochs:
        return entry, 0
    if not allowed:
        return None, 0
    log.info("final fine-tune: trial %d (%s, cost ratio %.3f, val %.4f) for %g epochs", record.number, record.method,
             record.cost_ratio, record.accuracy, config.final_epochs)
    started = time.perf_counter()
    final = refinetune(record, ctx.workload, ctx.dense, config, ctx.latency_table)
    if final.accuracy < (record.accuracy or 0.0):  # longer fine-tuning can hurt (DESIGN's trap): keep the better
        entry = {"epochs": config.final_epochs, "kept": "search", "final_accuracy": final.accuracy,
                 "accuracy": record.accuracy, "accuracy_loss": record.accuracy_loss, "cost_ratio": record.cost_ratio,
                 "seconds": time.perf_counter() - started}
        log.info("  trial %d: val %.4f -> %.4f, worse: the search's model stays (%.0f s)", record.number,
                 record.accuracy, final.accuracy, entry["seconds"])
    else:
        relative = final_model_path(record.number)
        save_pruned(final.model, ctx.run_dir / relative, ctx.workload.input_shape)
        entry = {"epochs": config.final_epochs, "kept": "final", "accuracy": final.accuracy,
                 "accuracy_loss": ctx.dense.accuracy - final.accuracy, "test_accuracy": final.test_accuracy,
                 **final.measured.to_attrs(), "cost_ratio": final.measured.ratio(config.cost), "model_path": relative,
                 "seconds": time.perf_counter() - started, **({"latency_node": final.latency_node}
                                                              if final.latency_node else {})}
        log.info("  trial %d: val %.4f -> %.4f, test %.4f (%.0f s)", record.number, record.accuracy, final.accuracy,
                 final.test_accuracy, entry["seconds"])
    record_by_trial(study, FINAL_ATTR, {record.number: entry})
    return entry, 1


def evaluate_front_on_test(study: optuna.Study, front: list[TrialRecord], ctx: TrialContext) -> None:
    """Measure `test_accuracy` for every Pareto trial that lacks it, from its saved model."""
    measured = {}
    for record in front:
        if record.test_accuracy is not None or record.model_path is None:
            continue
        try:
            model = load_pruned(ctx.run_dir, record.model_path, ctx.workload.model)
        except FileNotFoundError as missing:
            log.warning("trial %d's model is missing (%s); its test accuracy stays unknown", record.number, missing)
            continue
        measured[record.number] = evaluate(model, ctx.workload.test, ctx.config.device)
    if measured:
        record_test_accuracy(study, measured)
