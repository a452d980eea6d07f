"""After the search: the final fine-tune of the Pareto models within budget (--final-epochs), then the test split.

Multi-fidelity: the search ranks candidates by a short fine-tune; the few that matter (the Pareto models
within budget) get a longer one, and the pick is made on those. Search decisions never see the test split.
"""
from __future__ import annotations

import logging
import time

import optuna
import torch

from reports import TrialRecord, pareto_front
from reports.selection import is_feasible
from reports.records import FINAL_ATTR, load_records
from search.config import RunConfig
from search.final import FinalModel, final_finetune
from search.measure.latency_table import LatencyTable
from search.reference import DenseReference
from search.study import record_by_trial, record_test_accuracy, storage_url
from search.training import evaluate
from search.trial import TrialContext, save_model
from search.workloads import Workload
from spaces import Policy

log = logging.getLogger(__name__)


def final_model_path(number: int) -> str:
    """Where trial `number`'s model after the final fine-tune is saved, relative to the run folder."""
    return f"trials/{number:05d}/final.pt"


def final_candidates(records: list[TrialRecord], budget: float) -> list[TrialRecord]:
    """The search-time Pareto models within budget: the ones a longer fine-tune could change the pick among."""
    return [r for r in pareto_front(records)
            if r.policy and r.cost_ratio is not None and r.cost_ratio <= budget + 1e-9]


def refinetune(record: TrialRecord, workload: Workload, dense: DenseReference, config: RunConfig,
               table: LatencyTable | None = None) -> FinalModel:
    """Re-prune a trial from its policy and fine-tune it for config.final_epochs, seeded by the trial's number."""
    torch.manual_seed(config.seed + record.number)
    return final_finetune(workload, dense, Policy.from_json(record.policy), epochs=config.final_epochs,
                          device=config.device, threads=config.threads, batch_size=config.batch_size, table=table)


def finetune_finalists(study: optuna.Study, ctx: TrialContext, limit: int | None = None,
                       most_accurate: bool = False) -> None:
    """Re-prune candidates from their policies and fine-tune them for --final-epochs; each result is stored as it
    ends, so an interrupted stage resumes where it stopped.

    With a `limit`, which candidates: the `limit` most accurate (`most_accurate`: the benchmark asks for the best model
    at a cost), or, for the pick (the least cost within epsilon), first the search-time pick (else the most accurate
    candidate), then a bisection over the candidates in cost order: a cheaper one next while the last one met epsilon
    after its fine-tune, a dearer one while it did not. Accuracy after the final fine-tune rises with cost along the
    front, so the cheapest model it makes feasible is found in about log2(candidates) fine-tunes.
    """
    epochs, config = ctx.config.final_epochs, ctx.config
    if epochs <= 0:
        return
    records = load_records(storage_url(ctx.run_dir), final=False).trials
    candidates = final_candidates(records, config.budget)
    if limit is None or most_accurate:
        for record in sorted(candidates, key=lambda r: -(r.accuracy or 0.0))[:limit]:
            _finetuned(study, ctx, record)
        return
    ordered = sorted(candidates, key=lambda r: (r.cost_ratio, -(r.accuracy or 0.0)))
    feasible_now = [i for i, r in enumerate(ordered) if is_feasible(r, config.budget, config.epsilon)]
    stored = study.user_attrs.get(FINAL_ATTR) or {}
    spent = sum((stored.get(str(r.number)) or {}).get("epochs") == epochs for r in ordered)  # a rerun adds none
    low, high = 0, len(ordered) - 1
    index = feasible_now[0] if feasible_now else high
    while low <= high:
        entry, ran = _finetuned(study, ctx, ordered[index], allowed=spent < limit)
        spent += ran
        if entry is None:
            return
        if entry["accuracy_loss"] <= config.epsilon + 1e-9 and entry["cost_ratio"] <= config.budget + 1e-9:
            high = index - 1
        else:
            low = index + 1
        index = (low + high) // 2


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
    relative = final_model_path(record.number)
    save_model(final.model, ctx.run_dir / relative)
    entry = {"epochs": config.final_epochs, "accuracy": final.accuracy,
             "accuracy_loss": ctx.dense.accuracy - final.accuracy, "test_accuracy": final.test_accuracy,
             **final.measured, "cost_ratio": final.measured[f"{config.cost}_ratio"], "model_path": relative,
             "seconds": time.perf_counter() - started}
    record_by_trial(study, FINAL_ATTR, {record.number: entry})
    log.info("  trial %d: val %.4f -> %.4f, test %.4f (%.0f s)", record.number, record.accuracy, final.accuracy,
             final.test_accuracy, entry["seconds"])
    return entry, 1


def evaluate_front_on_test(study: optuna.Study, front: list[TrialRecord], ctx: TrialContext) -> None:
    """Measure `test_accuracy` for every Pareto trial that lacks it, from its saved model."""
    measured = {}
    for record in front:
        if record.test_accuracy is not None or record.model_path is None:
            continue
        path = ctx.run_dir / record.model_path
        if not path.exists():
            log.warning("trial %d's model %s is missing; its test accuracy stays unknown", record.number, path)
            continue
        model = torch.load(path, map_location="cpu", weights_only=False)
        measured[record.number] = evaluate(model, ctx.workload.test, ctx.config.device)
    if measured:
        record_test_accuracy(study, measured)
