"""`--latency-on RESOURCE`: latency measured as a Ray task on a node that advertises a custom resource (the target).

The task asks for one unit of the resource and no CPU: measurements on one target never overlap, and a target node
that advertises `CPU: 0` runs measurements only, never trials (see ray_cluster.yaml). Models are timed interleaved
with the dense one in the task's process, as everywhere else, so the ratios hold.
"""
from __future__ import annotations

import platform
import socket
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import nn

from search.config import ConfigError, RunConfig
from search.measure.latency_table import LatencyTable, LatencyTableError, latency_table
from search.timing import stream_for, time_against_dense
from search.workloads import Workload

# A task started by a Tune trial lands in the trial's placement group unless told otherwise; the target is elsewhere.
OUTSIDE_TRIAL_BUNDLE = PlacementGroupSchedulingStrategy(placement_group=None)


def _describe_node(device: str) -> str:
    """This Ray node and device in words: `host (ip, node 0123456789ab), cpu x86_64`."""
    node = ray.get_runtime_context().get_node_id()
    name = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {node[:12]}), {device} {name}"


@ray.remote(num_cpus=0)
def _time_models(models: dict[str, nn.Module], example_inputs: torch.Tensor, stream: list[torch.Tensor] | None,
                 device: str, threads: int | None, batch_size: int, repeats: int,
                 rounds: int) -> tuple[dict[str, dict[str, Any]], str]:
    """Ray task: `time_against_dense` where it runs, and where that was."""
    stats = time_against_dense(models, example_inputs, stream, device=device, threads=threads,
                               batch_size=batch_size, repeats=repeats, rounds=rounds)
    return stats, _describe_node(device)


def require_target(resource: str) -> None:
    """Refuse to time where this process holds no connection to a cluster with a live node that advertises
    `resource`: the task would wait for one forever (or Ray would start a local cluster without it)."""
    if not ray.is_initialized() or not any(node["Alive"] and node["Resources"].get(resource) for node in ray.nodes()):
        raise ConfigError(f"--latency-on {resource}: no node of the Ray cluster advertises resource {resource!r}; "
                          "start one that does (ray_cluster.yaml: the target node type)")


def time_on_target(models: dict[str, nn.Module], workload: Workload, config: RunConfig, *,
                   batch_size: int | None = None, repeats: int = 50, rounds: int = 5
                   ) -> tuple[dict[str, dict[str, Any]], str]:
    """Time `models` (one named "dense") on a node with `config.latency_on`, at `batch_size` (default the run's), as
    search.timing times them here; returns the stats and the node."""
    require_target(config.latency_on)
    batch_size = batch_size or config.batch_size
    task = _time_models.options(resources={config.latency_on: 1}, num_gpus=1 if config.device == "cuda" else 0,
                                scheduling_strategy=OUTSIDE_TRIAL_BUNDLE)
    return ray.get(task.remote(models, workload.example_inputs, stream_for(models, workload, batch_size),
                               config.device, config.threads, batch_size, repeats, rounds))


@ray.remote(num_cpus=0)
def _build_table(model: nn.Module, example_inputs: torch.Tensor, config: RunConfig) -> LatencyTable | None:
    """Ray task: the per-layer latency table measured (or read from its cache) on the node it runs on."""
    try:
        return latency_table(model, example_inputs, device=config.device, threads=config.threads,
                             batch_size=config.batch_size, cache_dir=config.cache_dir)
    except LatencyTableError:
        return None


def table_on_target(model: nn.Module, example_inputs: torch.Tensor, config: RunConfig) -> LatencyTable | None:
    """The latency table of the target node (`config.latency_on`), where trials' latency is measured too."""
    task = _build_table.options(resources={config.latency_on: 1}, num_gpus=1 if config.device == "cuda" else 0,
                                scheduling_strategy=OUTSIDE_TRIAL_BUNDLE)
    return ray.get(task.remote(model, example_inputs, config))


def target_latency_attrs(workload: Workload, pruned: nn.Module, config: RunConfig) -> dict[str, Any]:
    """A trial's latency attributes measured on the target, replacing those the trial took where it ran."""
    stats, node = time_on_target({"dense": workload.model, "pruned": pruned}, workload, config)
    attrs = {"latency_ms": stats["pruned"]["headline_ms"], "latency_p90_ms": stats["pruned"]["p90_ms"],
             "dense_latency_ms": stats["dense"]["headline_ms"], "latency_ratio": stats["pruned"]["ratio"],
             "latency_node": node}
    if config.cost == "latency":
        attrs["cost_ratio"] = attrs["latency_ratio"]
    return attrs
