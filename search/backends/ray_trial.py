"""The Ray Tune side of one trial: the same `evaluate_point` on a worker, its model sent home, one result reported.

Workers need no shared storage: a trial saves its model in a local scratch folder, and the bytes go to the
RunFolderWriter actor, pinned to the driver's node, which writes them into the run folder before the result
is reported, so a trial the study calls complete always has its model on the driver's disk.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.actor import ActorHandle
from ray.tune.experiment import Trial

from reports.atomic import write_bytes
from reports.run_files import confined_path, saved_files
from search.backends.ray_latency import target_latency_attrs
from search.model_files import load_pruned
from search.outcome import OBJECTIVES, TrialOutcome, complete, failed, run_point
from search.trial import TrialContext

OUTCOME_KEY = "outcome"  # result key: the trial's search.outcome.TrialOutcome as one JSON string (Tune flattens dicts)
META_KEY = "study_trial"  # config key: the Optuna trial's number, label and screening threshold


@ray.remote(num_cpus=0)
class RunFolderWriter:
    """Writes trial files into the run folder; lives on the driver's node."""

    def __init__(self, run_dir: str) -> None:
        self._run_dir = Path(run_dir)

    def write(self, relative: str, data: bytes) -> None:
        """Write `data` at run_dir/relative atomically (a crash never leaves half a file)."""
        write_bytes(confined_path(self._run_dir, relative), data)


@dataclass
class TrialSetup:
    """What every Ray trial of a run shares, put in the object store once (tune.with_parameters)."""

    ctx: TrialContext
    writer: ActorHandle
    threads: int


def trial_dirname(trial: Trial) -> str:
    """Tune's folder for a trial, named by its study trial number: ray/<experiment>/trial-00007."""
    return f"trial-{trial.config[META_KEY]['number']:05d}"


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: one trial, reported once with the objectives and the attributes (or the failure)."""
    params = {key: value for key, value in config.items() if key != META_KEY}
    torch.set_num_threads(setup.threads)
    tune.report(_outcome(setup, params, config[META_KEY]))


def _outcome(setup: TrialSetup, params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The result to report: the trial's outcome as JSON beside its objective values (NaN unless complete). Ray
    errors (a lost node, a dead task) propagate, so that Tune retries the trial."""
    ctx = setup.ctx
    with tempfile.TemporaryDirectory(prefix="prune-search-trial-") as scratch:
        outcome = run_point(replace(ctx, run_dir=Path(scratch)), params, meta["number"], meta["label"], meta["screen"])
        if outcome.kind == "complete":
            try:
                outcome = _sent_home(setup, outcome, Path(scratch))
            except ray.exceptions.RayError:
                raise
            except Exception as error:  # noqa: BLE001 - a trial's own failure is recorded, never retried
                outcome = failed(error)
    values = outcome.values or [math.nan] * len(OBJECTIVES)
    return {**dict(zip(OBJECTIVES, values)), OUTCOME_KEY: json.dumps(outcome.to_json())}


def _sent_home(setup: TrialSetup, outcome: TrialOutcome, scratch: Path) -> TrialOutcome:
    """Time the model on the target where --latency-on asks, then write its files into the run folder."""
    ctx, attrs = setup.ctx, dict(outcome.attrs)
    if ctx.config.latency_on:
        pruned = load_pruned(scratch, attrs["model_path"], ctx.workload.model)
        attrs.update(target_latency_attrs(ctx.workload, pruned, ctx.config))
    for relative in saved_files(attrs["model_path"]):
        if (scratch / relative).is_file():
            ray.get(setup.writer.write.remote(str(relative), (scratch / relative).read_bytes()))
    return complete(attrs)
