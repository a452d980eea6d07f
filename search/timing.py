"""Timing models against dense the way their work demands: one input repeated for a static model; at batch 1, a stream
of validation inputs when a model's work depends on the input (early exits), since a repeated input times one path."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynamic import EarlyExitModel
from search.measure import compare_latency, compare_stream_latency
from search.workloads import Workload

STREAM_INPUTS = 300  # validation inputs timed one at a time, interleaved with dense, for a dynamic model's latency
STREAM_ROUNDS = 3  # passes over the stream when a dynamic model is measured: one pass's ratio to dense moved with a
# standard deviation of 0.01 (2% of it) on fashion-resnet20, enough to put a model fitted under a budget over it


def validation_stream(workload: Workload, count: int = STREAM_INPUTS) -> list[torch.Tensor]:
    """The first `count` validation inputs, one tensor of batch 1 each (copies: a Ray task pickles only them)."""
    return [inputs[i:i + 1].clone() for inputs, _ in workload.val for i in range(len(inputs))][:count]


def stream_for(models: dict[str, nn.Module], workload: Workload, batch_size: int) -> list[torch.Tensor] | None:
    """The stream to time `models` over at `batch_size`: the validation stream at batch 1 where one of them is
    dynamic, else None (a batch runs every exit, so its work does not depend on the input)."""
    if batch_size == 1 and any(isinstance(model, EarlyExitModel) for model in models.values()):
        return validation_stream(workload)
    return None


def time_against_dense(models: dict[str, nn.Module], example_inputs: torch.Tensor,
                       stream: list[torch.Tensor] | None, *, device: str, threads: int | None, batch_size: int,
                       repeats: int, rounds: int) -> dict[str, dict[str, Any]]:
    """`models` (one named "dense") timed interleaved: over `stream`, one pass per round, where there is one (see
    stream_for), else `example_inputs[:1]` repeated to `batch_size`; each entry has `ratio`, `headline_ms` and
    `round_ratios`."""
    if stream is not None:
        return compare_stream_latency(models, stream, reference="dense", device=device, threads=threads,
                                      rounds=rounds)
    return compare_latency(models, example_inputs, reference="dense", device=device, threads=threads,
                           batch_size=batch_size, repeats=repeats, rounds=rounds)
