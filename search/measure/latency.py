"""Wall-clock latency, measured warm, with fixed threads, several models interleaved in one process.

Absolute times on a shared machine drift between runs (DESIGN.md: 2.0 to 5.0 ms for one model);
timing models round robin in one process lets drift hit all of them alike, so ratios hold.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pruners.masks import bake
from search.measure.folding import fold_batch_norms


def latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, Any]:
    """Latency of one model: ``p50_ms``, ``p90_ms``, ``mean_ms`` and the conditions they were taken in."""
    result = compare_latency(
        {"model": model},
        example_inputs,
        reference="model",
        device=device,
        threads=threads,
        batch_size=batch_size,
        warmup=warmup,
        repeats=repeats,
        rounds=1,
    )["model"]
    for relative_key in ("ratio", "round_p50_ms", "round_ratios", "headline_ms"):
        del result[relative_key]
    return result


def compare_latency(
    models: dict[str, nn.Module],
    example_inputs: torch.Tensor,
    *,
    reference: str,
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
) -> dict[str, dict[str, Any]]:
    """Time the models interleaved; per model its latency stats and ``ratio`` = p50 / the reference's p50.

    Each of ``rounds`` rounds times every model for ``repeats // rounds`` forward passes (at least one),
    in an order rotated each round; ``round_p50_ms`` holds each round's median and ``round_ratios`` each round's
    ratio, so a ratio's spread over rounds can be read. ``headline_ms`` is the figure ``ratio`` divides (the p50).
    Models run on deep copies in eval mode, batch norms folded (``timed_copy``), under inference_mode, so the
    callers' models keep their device, modules and training flag. The input is the first sample of
    ``example_inputs`` repeated to ``batch_size``.
    """
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models: {sorted(models)}")
    if batch_size < 1 or repeats < 1 or rounds < 1 or warmup < 0:
        raise ValueError("batch_size, repeats and rounds must be >= 1 and warmup >= 0")
    dev = torch.device(device)
    per_round = max(repeats // rounds, 1)
    inputs = example_inputs[:1].expand(batch_size, *example_inputs.shape[1:]).contiguous().to(dev)
    copies = {name: timed_copy(model, example_inputs[:2], dev) for name, model in models.items()}
    samples: dict[str, list[float]] = {name: [] for name in copies}
    round_p50: dict[str, list[float]] = {name: [] for name in copies}
    names = list(copies)
    with num_threads(threads) as used_threads, torch.inference_mode():
        for name in names:
            time_calls(copies[name], inputs, warmup, dev)
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                times = time_calls(copies[name], inputs, per_round, dev)
                samples[name] += times
                round_p50[name].append(float(torch.tensor(times, dtype=torch.float64).median()))
    stats = {name: {**_summarise(times), "round_p50_ms": round_p50[name]} for name, times in samples.items()}
    return _with_ratios(stats, round_p50, reference, "p50_ms", batch_size, dev, used_threads)


def compare_stream_latency(
    models: dict[str, nn.Module],
    stream: list[torch.Tensor],
    *,
    reference: str,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    rounds: int = 1,
) -> dict[str, dict[str, Any]]:
    """Time the models on a stream of different inputs, one at a time, interleaved input by input (the order rotated
    each input), ``rounds`` passes over the stream; per model its stats, ``ratio`` = mean / the reference's mean
    (the expected cost per input, so ``headline_ms`` is the mean) and ``round_ratios``, one per pass. For a model
    whose work depends on the input (early exits), where one repeated input would time one path only."""
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models: {sorted(models)}")
    if not stream:
        raise ValueError("the stream is empty: give at least one input")
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    dev = torch.device(device)
    copies = {name: timed_copy(model, torch.cat(stream[:2]), dev) for name, model in models.items()}
    names = list(copies)
    samples: dict[str, list[float]] = {name: [] for name in names}
    round_means: dict[str, list[float]] = {name: [] for name in names}
    with num_threads(threads) as used_threads, torch.inference_mode():
        for name in names:
            time_calls(copies[name], stream[0].to(dev), warmup, dev)
        for _ in range(rounds):
            this_round: dict[str, list[float]] = {name: [] for name in names}
            for index, inputs in enumerate(stream):
                inputs = inputs.to(dev)
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    this_round[name] += time_calls(copies[name], inputs, 1, dev)
            for name, times in this_round.items():
                samples[name] += times
                round_means[name].append(sum(times) / len(times))
    stats = {name: _summarise(times) for name, times in samples.items()}
    return _with_ratios(stats, round_means, reference, "mean_ms", stream[0].shape[0], dev, used_threads)


def _with_ratios(stats: dict[str, dict[str, Any]], per_round: dict[str, list[float]], reference: str, headline: str,
                 batch_size: int, device: torch.device, threads: int) -> dict[str, dict[str, Any]]:
    """Each model's stats with ``headline_ms`` (the statistic compared), its ``ratio`` to the reference's, the
    ratio in each round (``round_ratios``) and the conditions the timing was taken in."""
    for name, entry in stats.items():
        entry.update(
            headline_ms=entry[headline],
            ratio=entry[headline] / stats[reference][headline],
            round_ratios=[own / ref for own, ref in zip(per_round[name], per_round[reference])],
            batch_size=batch_size,
            device=str(device),
            threads=threads,
        )
    return stats


def timed_copy(model: nn.Module, example_inputs: torch.Tensor, device: torch.device | str = "cpu") -> nn.Module:
    """The copy that is timed, as it ships: on `device`, in eval mode, weight masks baked in (as a saved model is) and
    batch norms folded into their convolutions as a deployment folds them (search/measure/folding.py), so
    per-operator time that no deployment pays is not counted."""
    timed = bake(_copy(model)).to(device).eval()
    fold_batch_norms(timed, example_inputs.to(device))
    return timed


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy, also of a model that ran forward with torch.nn.utils.prune masks.

    Such a model keeps ``weight = weight_orig * weight_mask`` as a plain attribute that is not a graph
    leaf, and Tensor.__deepcopy__ refuses those; the copy gets it detached (its pre-hook recomputes it).
    """
    memo = {
        id(value): value.detach().clone()
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Tensor) and not value.is_leaf
    }
    return copy.deepcopy(model, memo)


def time_calls(model: nn.Module, inputs: torch.Tensor, calls: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``calls`` forward passes, synchronising the GPU around each."""
    times = []
    for _ in range(calls):
        _synchronize(device)
        start = time.perf_counter()
        model(inputs)
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summarise(times: list[float]) -> dict[str, Any]:
    """p50, p90 and mean of the samples in milliseconds, with their count."""
    values = torch.tensor(times, dtype=torch.float64)
    return {
        "p50_ms": float(values.quantile(0.5)),
        "p90_ms": float(values.quantile(0.9)),
        "mean_ms": float(values.mean()),
        "repeats": len(times),
    }


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Use ``threads`` intra-op threads (None keeps the current number) and restore the old number."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
