"""`python -m search.run`: search pruning policies for a workload under a budget, then report the Pareto front.

Flow: RunConfig -> Workload -> SearchSpace -> backend trials (prune, recover, measure) -> study -> reports.
"""
from __future__ import annotations

import logging
import sys
import warnings

import optuna
import torch

from reports import ReportError, pareto_front, write_report
from reports.records import load_records
from search.baselines import enqueue_baselines
from search.config import ConfigError, RunConfig, parse_config
from search.finalize import evaluate_front_on_test, finetune_finalists
from search.fit import reachable_round_to, unreachable_methods
from search.latency_checks import remeasure_pick, time_both_batches
from search.measure import count_flops, layer_flops
from search.measure.latency_table import LatencyTable, LatencyTableError, latency_table
from search.reference import DenseReference, measure_dense
from search.study import ResumeError, open_study, record_run_attrs, requeue_interrupted, storage_url
from search.summary import summary_lines
from search.trial import TrialContext, fitting_ratio
from search.workloads import Workload, WorkloadError, build_workload
from spaces import SearchSpace, SpaceError

log = logging.getLogger("search")


def configure_logging() -> None:
    """Our messages on stderr, one line each; libraries' chatter (Optuna's per-trial INFO, fvcore) kept quiet."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("search").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module="torch_pruning")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def prepare(config: RunConfig, workload: Workload, dense: DenseReference | None = None
            ) -> tuple[optuna.Study, TrialContext]:
    """Open (or resume) the study in config.out, describe the run on it, queue the baselines of a new study."""
    run_dir = config.out
    study = open_study(config, run_dir)
    requeue_interrupted(study)
    if "dense" in study.user_attrs:
        dense = DenseReference(**study.user_attrs["dense"])
    elif dense is None:
        log.info("measuring the dense %s (accuracy, FLOPs, latency)", workload.name)
        dense = measure_dense(workload, device=config.device, threads=config.threads, batch_size=config.batch_size)
    table = target_latency_table(workload, config)
    methods = config.methods
    ratio = fitting_ratio(workload, dense, config, table)
    for method, floor in unreachable_methods(workload.model, workload.example_inputs, methods, config.budget,
                                             ratio).items():
        log.warning("method %s is left out: its hardest pruning leaves %s at %.3f of dense, over the budget %g",
                    method, config.cost, floor, config.budget)
        methods = tuple(m for m in methods if m != method)
    if not methods:
        raise SpaceError(f"none of --methods {','.join(config.methods)} reaches the budget {config.budget:g} in "
                         f"{config.cost}; add channel, or raise --budget")
    round_to = reachable_round_to(workload.model, workload.example_inputs, methods, config.budget, ratio)
    space = SearchSpace.build(workload.model, workload.example_inputs, layer_flops(workload.model, workload.example_inputs),
                              count_flops(workload.model, workload.example_inputs), methods, config.budget,
                              workload.finetune_lr, config.target_floor, round_to,
                              table.dense_layer_ms() if table is not None and config.cost == "latency" else None)
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


def execute(config: RunConfig) -> int:
    """Run (or resume) the search described by `config`; returns the exit status."""
    workload = build_workload(config.workload, seed=config.seed, cache_dir=config.cache_dir,
                              data_dir=config.data_dir, device=config.device)
    study, ctx = prepare(config, workload)
    log.info("searching %s: budget %.2f of dense %s, epsilon %.3f, %d trials -> %s",
             config.workload, config.budget, config.cost, config.epsilon, config.trials, config.out)
    try:
        run_backend(study, ctx)
        finish(study, ctx)
    except KeyboardInterrupt:
        log.warning("interrupted: finished trials are kept in %s; rerun the same command to resume", config.out)
        finish(study, ctx, finalists=0)
        return 130
    return 0


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
    if finalists != 0:
        finetune_finalists(study, ctx, finalists, most_accurate)
    front = pareto_front(load_records(storage_url(ctx.run_dir)).trials)
    evaluate_front_on_test(study, front, ctx)
    time_both_batches(study, front, ctx)
    remeasure_pick(study, ctx)
    pareto = write_report(ctx.run_dir)
    if show:
        print("\n".join(summary_lines(pareto, str(ctx.run_dir / "report.html"))))
    return pareto


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        config = parse_config(argv)
        return execute(config)
    except (ConfigError, WorkloadError, ResumeError, ReportError, SpaceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
