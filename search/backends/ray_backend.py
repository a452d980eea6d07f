"""The Ray backend: the remaining trials run as Ray Tune trials on a cluster (or a local Ray sized to this machine).

Tune schedules; the study stays the single source of truth: the searcher (StudySearch, in this driver, the only
writer of the SQLite study) records every result, and workers send their models home through RunFolderWriter,
so the run folder needs no shared storage. A lost worker's trial is retried (FailureConfig); a restarted driver
with the same --out resumes from the study. Tune's own files go to <run>/ray/<experiment>.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import optuna
import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from search.backends.ray_latency import require_target, table_on_target, time_on_target
from search.backends.ray_search import RELAUNCHES, StudySearch
from search.backends.ray_trial import RunFolderWriter, TrialSetup, run_trial, trial_dirname
from search.config import ConfigError, RunConfig
from search.study import finished_count
from search.trial import TrialContext

log = logging.getLogger(__name__)
RETRIES = 2  # a trial whose worker (or node) dies runs again, at most this many times


def run_ray(study: optuna.Study, ctx: TrialContext) -> None:
    """Run trials as Ray Tune trials until `--trials` have finished (counting earlier runs) or `--timeout` passes."""
    config = ctx.config
    remaining = config.trials - finished_count(study)
    if remaining <= 0:
        return
    start_ray(config.address)
    search = None
    try:
        if config.latency_on:
            ctx = _dense_latency_on_target(study, ctx)
        workers = config.workers or _fitting_trials(config)
        log.info("ray: %d trial(s) at up to %d at a time, %g CPU and %g GPU each, on %d node(s)", remaining, workers,
                 config.cpus_per_trial, config.gpus_per_trial, len([n for n in ray.nodes() if n["Alive"]]))
        experiment = f"tune-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        search = StudySearch(study, ctx, retries=RETRIES, tune_dir=f"ray/{experiment}")
        _tuner(ctx, search, experiment, remaining * (1 + RELAUNCHES), workers).fit()
    finally:
        if search is not None and search.interrupt_unfinished():
            log.warning("stopped: unfinished trials are queued again; rerun the same command to resume")
        if config.latency_on:
            _record_latency_nodes(study)
        ray.shutdown()


def start_ray(address: str | None) -> None:
    """Connect to the cluster at `address`, or start a local Ray sized to this machine, without Ray's banners.

    Tune's new console output prints an experiment banner even at verbose=0; the classic one does not. Tune's own
    Ctrl-C handler would end the run quietly and advise Tuner.restore; without it, Ctrl-C stops the driver as it
    does the optuna backend (unfinished trials queued again, report written, exit 130).
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as error:
            raise ConfigError(f"--address {address}: no Ray cluster there ({error}); start one with `ray start "
                              "--head` or `ray up ray_cluster.yaml`, or drop --address for a local Ray") from error
    else:
        ray.init(include_dashboard=False, **quiet)


@contextmanager
def reconnected(config: RunConfig) -> Iterator[None]:
    """The connection to the cluster through which the final stage times its models on the --latency-on target (the
    search shut Ray down as it ended); a cluster that cannot be reached is logged, and each timing then fails with
    its reason, stored on the study, as any final step's error is."""
    if ray.is_initialized():
        yield
        return
    try:
        start_ray(config.address)
    except ConfigError as error:
        log.error("the final stage cannot time on the target: %s", error)
        yield
        return
    try:
        yield
    finally:
        ray.shutdown()


def _fitting_trials(config: RunConfig) -> int:
    """How many trials the cluster's CPUs (and GPUs) hold at once right now."""
    total = ray.cluster_resources()
    fits = total.get("CPU", 0) / config.cpus_per_trial
    if config.gpus_per_trial:
        fits = min(fits, total.get("GPU", 0) / config.gpus_per_trial)
    return max(1, math.floor(fits))


def _tuner(ctx: TrialContext, search: StudySearch, experiment: str, samples: int, workers: int) -> tune.Tuner:
    """The Tuner: at most `samples` trials (the searcher ends it sooner), one resource bundle per trial, retries,
    quiet, files under <run>/ray."""
    config = ctx.config
    writer = RunFolderWriter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote(str(ctx.run_dir.resolve()))
    setup = TrialSetup(ctx, writer, threads=max(1, int(config.cpus_per_trial)))
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=samples, max_concurrent_trials=workers,
                                    reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=experiment, storage_path=str((ctx.run_dir / "ray").resolve()),
                                  failure_config=tune.FailureConfig(max_failures=RETRIES), verbose=0),
    )


def _dense_latency_on_target(study: optuna.Study, ctx: TrialContext) -> TrialContext:
    """Measure the dense model's latency on the target node and store it as the run's dense latency."""
    resource = ctx.config.latency_on
    require_target(resource)
    stats, node = time_on_target({"dense": ctx.workload.model}, ctx.workload, ctx.config)
    dense = replace(ctx.dense, latency_ms=stats["dense"]["p50_ms"])
    table = table_on_target(ctx.workload.model, ctx.workload.example_inputs, ctx.config)
    study.set_user_attr("dense", dense.to_json())
    study.set_user_attr("latency_setup", {**study.user_attrs.get("latency_setup", {}), "resource": resource,
                                          "measured_on": node})
    study.set_user_attr("latency_table", None if table is None else {**table.describe(), "measured_on": node})
    return replace(ctx, dense=dense, latency_table=table)


def _record_latency_nodes(study: optuna.Study) -> None:
    """Name every node that measured latency in the run's latency setup, which the report shows."""
    setup = dict(study.user_attrs.get("latency_setup", {}))
    nodes = {t.user_attrs["latency_node"] for t in study.get_trials(deepcopy=False) if "latency_node" in t.user_attrs}
    nodes.update(setup.get("measured_on", "").split("; "))
    setup["measured_on"] = "; ".join(sorted(n for n in nodes if n))
    study.set_user_attr("latency_setup", setup)
