"""The pipeline of a run: prepare (study, dense reference, latency table, space, baselines), search (a backend's
trials), finish (final stage and report). The CLI (search.run), the benchmark (search.bench) and the tests call it.
"""
from __future__ import annotations

import logging
import shutil
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import torch

from reports import ReportError, pareto_front, sizes_count, write_report
from reports.records import load_records
from reports.terminal import summary_lines
from search.baselines import enqueue_baselines
from search.config import ConfigError, RunConfig
from search.finalize import evaluate_front_on_test, finetune_finalists
from search.fit import reachable_round_to, unreachable_methods
from search.latency_checks import remeasure_pick, time_both_batches
from search.measure import compare_latency, count_flops, layer_flops, model_size_bytes
from search.measure.latency_table import LatencyTable, LatencyTableError, latency_table
from search.quantize import QuantizeError, quantize_int8
from search.reference import DenseReference, measure_dense, near_chance_bar, weights_fingerprint
from search.sensitivity import with_sensitivity
from search.stream_replay import fit_pick_checks
from search.study import ResumeError, open_study, record_final_error, record_run_attrs, requeue_interrupted, storage_url
from search.trial import TrialContext, fitting_ratio
from search.workloads import Workload, WorkloadError
from spaces import SearchSpace, SpaceError

log = logging.getLogger("search")
# What a user's input can be wrong about: each is one line on stderr and exit 2, never a traceback.
USER_ERRORS = (ConfigError, WorkloadError, ResumeError, ReportError, SpaceError, QuantizeError)
INT8_FACTOR_ATTR = "int8_factor"  # study attr: the run's int8 cost factor, measured once, reused on resume


def prepare(config: RunConfig, workload: Workload, dense: DenseReference | None = None
            ) -> tuple[optuna.Study, TrialContext]:
    """Open (or resume) the study in config.out, describe the run on it, queue the baselines of a new study."""
    run_dir = config.out
    study = open_study(config, run_dir)
    if "dense" in study.user_attrs:
        dense = DenseReference(**study.user_attrs["dense"])
        if dense.fingerprint and dense.fingerprint != weights_fingerprint(workload.model):
            raise ResumeError(f"--out {run_dir} searched another dense {config.workload} than the one built now (its "
                              "weights differ: retrained, or another cache); use a new --out, or restore that model")
    else:
        if dense is None:
            log.info("measuring the dense %s (accuracy, FLOPs, latency)", workload.name)
            dense = measure_dense(workload, device=config.device, threads=config.threads, batch_size=config.batch_size)
        check_dense_trained(dense, workload, config.allow_weak_dense)
    requeue_interrupted(study)
    table = target_latency_table(workload, config)
    methods = config.methods
    ratio = fitting_ratio(workload, dense, config, table)
    floors = unreachable_methods(workload.model, workload.example_inputs, methods, config.budget, ratio)
    for method, floor in floors.items():
        log.warning("method %s is left out: its hardest pruning leaves %s at %.3f of dense, over the budget %g",
                    method, config.cost, floor, config.budget)
        methods = tuple(m for m in methods if m != method)
    if not methods:
        closest = min(floors, key=floors.__getitem__)
        more = "" if "channel" in config.methods else "add channel, or "
        raise SpaceError(f"none of --methods {','.join(config.methods)} reaches the budget {config.budget:g} in "
                         f"{config.cost} (the closest, {closest}, leaves {floors[closest]:.3f} of dense); {more}raise "
                         f"--budget above {floors[closest]:.3f}")
    round_to = reachable_round_to(workload.model, workload.example_inputs, methods, config.budget, ratio)
    space = SearchSpace.build(workload.model, workload.example_inputs,
                              layer_flops(workload.model, workload.example_inputs),
                              count_flops(workload.model, workload.example_inputs), methods, config.budget,
                              workload.finetune_lr, config.target_floor, round_to,
                              table.dense_layer_ms() if table is not None and config.cost == "latency" else None)
    # what a group saves is counted in the run's metric, as the points are fitted; FLOPs where that would mean timing
    # every pruned model (latency with no table to predict it)
    counted = config.cost != "flops" and (config.cost != "latency" or table is not None)
    space = with_sensitivity(study, space, workload, config.device, measure=config.sensitivity,
                             cost=(config.cost, ratio) if counted else None)
    if config.quantize:
        if INT8_FACTOR_ATTR not in study.user_attrs:
            study.set_user_attr(INT8_FACTOR_ATTR, int8_cost_factor(workload, dense, config))
        space = replace(space, quantize=True, int8_factor=float(study.user_attrs[INT8_FACTOR_ATTR]))
    record_run_attrs(study, {
        "workload": config.workload, "cost_metric": config.cost, "budget": config.budget, "epsilon": config.epsilon,
        "input_shape": workload.input_shape, "dense": dense.to_json(), "config": config.to_json(),
        "space": space.describe(),
        "latency_setup": {"device": config.device, "threads": config.threads or torch.get_num_threads(),
                          "batch_size": config.batch_size},
        "latency_table": None if table is None else table.describe(),
    })
    baselines = enqueue_baselines(study, space)
    if baselines:
        log.info("first trials are the baselines a user would try by hand: %s", ", ".join(baselines))
    return study, TrialContext(workload, space, config, dense, run_dir, table)


def int8_cost_factor(workload: Workload, dense: DenseReference, config: RunConfig) -> float:
    """The dense model's cost int8 over float in the run's metric (bytes, or latency timed interleaved), which an
    int8 point's float model is fitted against; 1 for FLOPs and params, which int8 keeps."""
    if config.cost not in ("size", "latency"):
        return 1.0
    int8 = quantize_int8(workload.model, workload.example_inputs, workload.calibration)
    if config.cost == "size":
        factor = model_size_bytes(int8.quantized) / dense.size_bytes
    else:
        factor = compare_latency({"dense": workload.model, "int8": int8}, workload.example_inputs, reference="dense",
                                 threads=config.threads, batch_size=config.batch_size)["int8"]["ratio"]
    log.info("int8: the dense model's %s is %.3f of float's; int8 points are fitted against it", config.cost, factor)
    return factor


def check_dense_trained(dense: DenseReference, workload: Workload, allowed: bool) -> None:
    """Refuse (or, with --allow-weak-dense, warn about) a dense model near chance on validation: an untrained model
    or one in a broken batch-norm state, against which every pruned model would look like a gain."""
    bar = near_chance_bar(workload.model, workload.example_inputs)
    if dense.accuracy >= bar:
        return
    message = (f"the dense {workload.name} scores {100 * dense.accuracy:.1f}% on validation, near chance (under "
               f"{100 * bar:.1f}%): train it, or check its batch-norm state and its labels")
    if not allowed:
        raise WorkloadError(f"{message}; --allow-weak-dense searches it anyway")
    log.warning("%s; searching it anyway (--allow-weak-dense): accuracy losses are against a weak model", message)


def target_latency_table(workload: Workload, config: RunConfig) -> LatencyTable | None:
    """The per-layer latency table of the target (cached), or None, said once, where it cannot model the network."""
    try:
        table = latency_table(workload.model, workload.example_inputs, device=config.device, threads=config.threads,
                              batch_size=config.batch_size, cache_dir=config.cache_dir)
    except LatencyTableError as error:
        fallback = "; latency targets are fitted by timing each step instead" if config.cost == "latency" else ""
        log.warning("the latency table cannot model %s: %s%s", workload.name, error, fallback)
        return None
    if table.from_cache:
        log.info("latency table: cache hit (%s, built in %.1f s)", table.key, table.build_seconds)
    else:
        log.info("latency table: built in %.1f s, cached as %s", table.build_seconds, table.key)
    return table


@contextmanager
def removed_if_new(run_dir: Path) -> Iterator[None]:
    """A run folder this command created is removed again if setting the run up fails (before any trial ran), so a
    refused command leaves nothing behind; a folder that existed before is never touched."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def run_backend(study: optuna.Study, ctx: TrialContext) -> None:
    if ctx.config.backend == "ray":
        from search.backends.ray_backend import run_ray
        run_ray(study, ctx)
    else:
        from search.backends.optuna_backend import run_optuna
        run_optuna(study, ctx)


def finish(study: optuna.Study, ctx: TrialContext, show: bool = True, finalists: int | None = None,
           most_accurate: bool = False) -> dict:
    """The final fine-tune (--final-epochs, of at most `finalists` models, --finalists by default; 0 skips it), test
    accuracy and both batch
    regimes' latency for the Pareto models, the pick's re-measured latency (--cost latency), the report files, and the
    summary on stdout; returns pareto.json's dict."""
    finalists = ctx.config.finalists if finalists is None else finalists
    with target_connection(ctx.config):
        if finalists != 0:
            final_step(study, "final fine-tune", finetune_finalists, study, ctx, finalists, most_accurate)
        records = load_records(storage_url(ctx.run_dir))
        front = pareto_front(records.trials, by_size=sizes_count(records.info.config))
        final_step(study, "test accuracy", evaluate_front_on_test, study, front, ctx)
        final_step(study, "latency at both batch sizes", time_both_batches, study, front, ctx)
        final_step(study, "re-measured latency", remeasure_pick, study, ctx)
        final_step(study, "runtime checks", fit_pick_checks, study, ctx)
    pareto = write_report(ctx.run_dir)
    if show:
        print("\n".join(summary_lines(pareto, str(ctx.run_dir / "report.html"))))
    return pareto


def target_connection(config: RunConfig) -> AbstractContextManager:
    """With --latency-on, the Ray connection the final stage times through on the target (ray_backend); Ray is
    imported only then."""
    if not config.latency_on:
        return nullcontext()
    from search.backends.ray_backend import reconnected
    return reconnected(config)


def final_step(study: optuna.Study, name: str, step: Callable[..., None], *args: Any) -> None:
    """Run one step of the final stage; an error in it (a NaN loss, a model that will not load) is logged and stored
    on the study (attribute FINAL_ERRORS_ATTR), and the report is still written from what the search found."""
    try:
        step(*args)
    except Exception as error:  # noqa: BLE001 - whatever fails after the search must not cost the report
        reason = f"{type(error).__name__}: {error}"[:300]
        log.error("%s failed (%s); the report is written without it", name, reason)
        record_final_error(study, name, reason)
