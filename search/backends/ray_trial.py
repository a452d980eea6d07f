"""The Ray Tune side of one trial: the same `evaluate_point` on a worker, its model sent home, one result reported.

Workers need no shared storage: a trial saves its model in a local scratch folder, and the bytes go to the
RunFolderWriter actor, pinned to the driver's node, which writes them into the run folder before the result
is reported, so a trial the study calls complete always has its model on the driver's disk.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.actor import ActorHandle
from ray.tune.experiment import Trial

from search.backends.ray_latency import target_latency_attrs
from search.recover import ScreenedOut
from search.trial import TrialContext, evaluate_point

OBJECTIVES = ("cost_ratio", "accuracy_loss")
ATTRS_KEY = "attrs"  # result key: the trial's user attributes as one JSON string (Tune flattens nested dicts)
SCREENED_KEY = "screened"  # result key: what a candidate stopped by screening knew, as JSON (Optuna: pruned)
FAILURE_KEY = "failure"  # result key: why the trial failed on its own (not retried)
META_KEY = "study_trial"  # config key: the Optuna trial's number, label and screening threshold


@ray.remote(num_cpus=0)
class RunFolderWriter:
    """Writes trial files into the run folder; lives on the driver's node."""

    def __init__(self, run_dir: str) -> None:
        self._run_dir = Path(run_dir)

    def write(self, relative: str, data: bytes) -> None:
        """Write `data` at run_dir/relative atomically (a crash never leaves half a file)."""
        path = self._run_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_bytes(data)
        os.replace(partial, path)


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
    """The result to report. Ray errors (a lost node, a dead task) propagate, so that Tune retries the trial."""
    ctx = setup.ctx
    with tempfile.TemporaryDirectory(prefix="prune-search-trial-") as scratch:
        try:
            attrs = evaluate_point(replace(ctx, run_dir=Path(scratch)), params, meta["number"], meta["label"],
                                   screen=meta["screen"])
            saved = Path(scratch) / attrs["model_path"]
            if ctx.config.latency_on:
                pruned = torch.load(saved, map_location="cpu", weights_only=False)
                attrs.update(target_latency_attrs(ctx.workload.model, pruned, ctx.workload.example_inputs, ctx.config))
            values = [attrs[key] for key in OBJECTIVES]
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"objective values {values} are not finite")
            ray.get(setup.writer.write.remote(attrs["model_path"], saved.read_bytes()))
        except ScreenedOut as stop:
            return {**dict.fromkeys(OBJECTIVES, math.nan), SCREENED_KEY: json.dumps(stop.attrs)}
        except ray.exceptions.RayError:
            raise
        except Exception as error:  # noqa: BLE001 - a trial's own failure is recorded, never retried
            reason = f"{type(error).__name__}: {error}"
            return {**dict.fromkeys(OBJECTIVES, math.nan), FAILURE_KEY: reason[:2000],
                    "traceback": traceback.format_exc()[-4000:]}
    return {**{key: attrs[key] for key in OBJECTIVES}, ATTRS_KEY: json.dumps(attrs)}
