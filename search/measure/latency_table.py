"""A latency model of the target: each conv/linear layer's time at the widths the search can produce (NetAdapt,
HALP), measured once per device, batch, threads and input shape, cached, and summed to predict a pruned model.

Each conv/linear layer is timed as a unit with the batch norm and activation modules that run right after it (a
convolution's batch norm folded into it, as models are timed: search/measure/folding.py), at a grid of (input,
output) widths; layers of the same signature (kind, kernel, stride, padding, input size, what follows them) share
one grid. A model's predicted ratio to dense is the sum of its layers' times (bilinearly
interpolated at their widths) over the dense sum, the rest of the network (adds, pooling, each block's own call)
taken to shrink with its layers, raised to an exponent fitted on a few pruned copies timed against dense. A removed
block simply has no layers. Torch has no such table, and NetAdapt and HALP publish none we could install.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruners import prune, removable_blocks
from pruners.graph import observe
from pruners.layer_types import BATCH_NORM, CONV, PRUNABLE_LAYERS
from reports.atomic import write_text
from search.measure.latency import compare_latency, num_threads, time_calls

log = logging.getLogger(__name__)
GRID_POINTS = 16  # widths per grid axis (plus 1): enough to follow the steps that SIMD widths make
ROUNDS = 5  # sweeps of every grid, each bracketed by timings of the dense model
PROBE_SPARSITY = (0.3, 0.5, 0.7)  # uniform channel pruning of the calibration probes
PROBE_ROUNDS = 20
CALLS = 3  # forward passes per grid point per round (their median)
WARMUP = 5  # passes for a unit's first round, which pays its allocations
MIN_COVERAGE = 0.4  # the table models a network when its layers explain at least this share of the dense time
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU)
"""Activation modules timed with the layer they follow (a unit: layer, batch norm, activation)."""
FORMAT = 4  # part of the cache key: a table measured by an older way of measuring is never reused


@dataclass(frozen=True)
class LayerSpec:
    """One dense conv/linear layer: its grid's signature and its dense widths."""

    signature: str
    in_channels: int
    out_channels: int


@dataclass
class Grid:
    """Times (ms) of one layer signature at every (input width, output width) of the grid."""

    in_widths: list[int]
    out_widths: list[int]
    times_ms: list[list[float]]  # [in index][out index]

    def at(self, cin: float, cout: float) -> float:
        """Bilinear interpolation (clamped to the grid) at the given widths."""
        (i0, i1, ti), (o0, o1, to) = _bracket(self.in_widths, cin), _bracket(self.out_widths, cout)
        low = self.times_ms[i0][o0] * (1 - to) + self.times_ms[i0][o1] * to
        high = self.times_ms[i1][o0] * (1 - to) + self.times_ms[i1][o1] * to
        return low * (1 - ti) + high * ti


class LatencyTableError(ValueError):
    """The table cannot model this network (its layers explain too little of the time, or a layer kind is unknown)."""


@dataclass
class LatencyTable:
    """Per-layer latency grids of one model on one target, and the dense model's own measured time."""

    key: str
    setup: dict[str, Any]
    layers: dict[str, LayerSpec]
    grids: dict[str, Grid]
    dense_ms: float
    build_seconds: float = 0.0
    from_cache: bool = False
    exponent: float = 1.0  # calibration: measured ratio = summed-table ratio ** exponent, fitted on probe models
    probes: list[list[float]] = field(default_factory=list)  # [summed-table ratio, measured ratio] of each probe

    @property
    def coverage(self) -> float:
        """Share of the dense model's time that the tabled layers explain."""
        return self.layers_ms(self.dense_widths()) / self.dense_ms

    def dense_widths(self) -> dict[str, tuple[int, int]]:
        return {name: (spec.in_channels, spec.out_channels) for name, spec in self.layers.items()}

    def dense_layer_ms(self) -> dict[str, float]:
        """Each tabled layer's time at its dense widths."""
        return {name: self.grids[spec.signature].at(spec.in_channels, spec.out_channels)
                for name, spec in self.layers.items()}

    def layers_ms(self, widths: dict[str, tuple[int, int]]) -> float:
        return sum(self.grids[self.layers[name].signature].at(*w) for name, w in widths.items() if name in self.layers)

    def predict_ms(self, widths: dict[str, tuple[int, int]]) -> float:
        """Predicted time of a model whose tabled layers have these (input, output) widths; absent layers cost 0.
        The rest of the model (adds, pooling, each block's own call) is taken to shrink in proportion to its layers."""
        return self.dense_ms * self.layers_ms(widths) / self.layers_ms(self.dense_widths())

    def predict_ratio(self, widths: dict[str, tuple[int, int]]) -> float:
        """The predicted latency ratio to dense, with the table's calibration exponent applied."""
        return (self.predict_ms(widths) / self.dense_ms) ** self.exponent

    def predict_model_ratio(self, model: nn.Module) -> float:
        """Predicted latency ratio to dense of a (pruned) model, read from its layers' widths."""
        return self.predict_ratio(layer_widths(model))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "setup": self.setup, "dense_ms": self.dense_ms,
                "build_seconds": self.build_seconds, "exponent": self.exponent, "probes": self.probes,
                "layers": {name: asdict(spec) for name, spec in self.layers.items()},
                "grids": {sig: asdict(grid) for sig, grid in self.grids.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LatencyTable":
        return cls(key=data["key"], setup=data["setup"], dense_ms=float(data["dense_ms"]),
                   build_seconds=float(data.get("build_seconds", 0.0)), exponent=float(data["exponent"]),
                   probes=[list(p) for p in data["probes"]],
                   layers={name: LayerSpec(**spec) for name, spec in data["layers"].items()},
                   grids={sig: Grid(**grid) for sig, grid in data["grids"].items()})

    def describe(self) -> dict[str, Any]:
        """What a report says about the table."""
        return {"key": self.key, **self.setup, "layers": len(self.layers), "signatures": len(self.grids),
                "coverage": round(self.coverage, 3), "dense_ms": round(self.dense_ms, 4),
                "build_seconds": round(self.build_seconds, 1), "from_cache": self.from_cache,
                "exponent": round(self.exponent, 3), "probes": len(self.probes)}


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) widths of every conv/linear layer of `model`, by module name."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, CONV):
            widths[name] = (module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[name] = (module.in_features, module.out_features)
    return widths


def latency_table(model: nn.Module, example_inputs: torch.Tensor, *, device: str, threads: int | None,
                  batch_size: int, cache_dir: Path) -> LatencyTable:
    """The model's table from `cache_dir`, or measured now and cached; LatencyTableError if it cannot model it."""
    shapes = _layer_inputs(model, example_inputs)
    signatures = {name: _signature(module, shapes[name]) for name, module in _layers(model) if name in shapes}
    with num_threads(threads) as used:
        setup = {"device": _device_name(device), "torch": torch.__version__, "input_shape": list(example_inputs.shape),
                 "batch_size": batch_size, "threads": used}
        fingerprint = [FORMAT, setup, sorted(signatures.items()), sorted(layer_widths(model).items())]
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir / "latency-tables" / f"{key}.json"
        if path.exists():
            table = LatencyTable.from_json(json.loads(path.read_text()))
            table.from_cache = True
        else:
            started = time.perf_counter()
            table = _measure(model, example_inputs, signatures, shapes, setup, key, device, batch_size)
            _calibrate(table, model, example_inputs, device, batch_size)
            table.build_seconds = time.perf_counter() - started
            write_text(path, json.dumps(table.to_json()))
    if table.coverage < MIN_COVERAGE:
        raise LatencyTableError(f"its conv/linear layers explain {table.coverage:.0%} of the dense time (under "
                                f"{MIN_COVERAGE:.0%})")
    return table


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)]


@dataclass(frozen=True)
class _Seen:
    """A tabled layer as a forward pass saw it: its input shape (batch 1) and what ran right after it."""

    input_shape: tuple[int, ...]
    norm: bool  # a batch norm over its outputs came next
    activation: str | None  # then this activation module (class name)


def _layer_inputs(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, _Seen]:
    """Every conv/linear layer reached by a forward pass, with its input shape and the modules that follow it."""
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def hook(name: str):  # noqa: ANN202 - a forward hook
        def record(module: nn.Module, args: tuple, _out: object) -> None:
            shape = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else ()
            calls.append((name, module, shape))
        return record

    leaves = {m: hook(n) for n, m in model.named_modules() if not list(m.children())}
    observe(model, example_inputs[:1], leaves)
    seen: dict[str, _Seen] = {}
    for index, (name, module, shape) in enumerate(calls):
        if not isinstance(module, PRUNABLE_LAYERS) or name in seen:
            continue
        following = [m for _, m, _ in calls[index + 1:index + 3]]
        out = module.out_channels if isinstance(module, CONV) else module.out_features
        norm = bool(following) and isinstance(following[0], BATCH_NORM) \
            and following[0].num_features == out
        after = following[1 if norm else 0:][:1]
        activation = type(after[0]).__name__ if after and isinstance(after[0], ACTIVATIONS) else None
        seen[name] = _Seen(shape, norm, activation)
    return seen



def _signature(module: nn.Module, seen: _Seen) -> str:
    """What, besides the widths, decides a unit's time: kind, kernel, stride, padding, groups, input size, and the
    batch norm and activation that follow the layer."""
    input_shape, tail = seen.input_shape, [seen.norm, seen.activation]
    if isinstance(module, nn.Linear):
        return json.dumps(["linear", list(input_shape[:-1]), module.bias is not None, *tail])
    conv: CONV = module  # type: ignore[assignment]
    if conv.groups == 1:
        grouping = "dense"
    elif conv.groups == conv.in_channels == conv.out_channels:
        grouping = "depthwise"
    else:
        raise LatencyTableError(f"layer with groups={conv.groups} (neither dense nor depthwise)")
    return json.dumps([type(conv).__name__, list(conv.kernel_size), list(conv.stride), conv.padding
                       if isinstance(conv.padding, str) else list(conv.padding), list(conv.dilation), grouping,
                       list(input_shape[1:]), conv.bias is not None, *tail])


def _axis(dense: int) -> list[int]:
    """The widths a grid axis measures: 1, then up to GRID_POINTS evenly spaced widths up to the dense one."""
    step = max(1, math.ceil(dense / GRID_POINTS))
    return sorted({1, *range(step, dense, step), dense})


def _bracket(axis: list[int], value: float) -> tuple[int, int, float]:
    """Indices of the grid points around `value` and the weight of the upper one."""
    if value <= axis[0]:
        return 0, 0, 0.0
    if value >= axis[-1]:
        last = len(axis) - 1
        return last, last, 0.0
    for index in range(1, len(axis)):
        if value <= axis[index]:
            low, high = axis[index - 1], axis[index]
            return index - 1, index, (value - low) / (high - low)
    raise AssertionError("unreachable: value is inside the axis")


def _make_unit(template: nn.Module, seen: _Seen, cin: int, cout: int) -> nn.Module:
    """A fresh layer like `template` at the given widths, with the activation that follows it and the batch norm as
    it is timed: a linear layer's runs after it, a convolution's is folded into its bias (search/measure/folding.py)."""
    if isinstance(template, nn.Linear):
        layer: nn.Module = nn.Linear(cin, cout, bias=template.bias is not None)
        parts = [layer] + ([nn.BatchNorm1d(cout)] if seen.norm else [])
    else:
        conv: CONV = template  # type: ignore[assignment]
        depthwise = conv.groups > 1
        cout = cin if depthwise else cout
        parts = [type(conv)(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                            groups=cin if depthwise else 1, bias=conv.bias is not None or seen.norm,
                            padding_mode=conv.padding_mode)]
    return nn.Sequential(*parts, *([getattr(nn, seen.activation)()] if seen.activation else []))


def _median_ms(module: nn.Module, inputs: torch.Tensor, dev: torch.device, calls: int = CALLS) -> float:
    return statistics.median(time_calls(module, inputs, calls, dev))


def _measure(model: nn.Module, example_inputs: torch.Tensor, signatures: dict[str, str],
             shapes: dict[str, _Seen], setup: dict[str, Any], key: str, device: str,
             batch_size: int) -> LatencyTable:
    """Time every signature's grid and the whole dense model, in the current thread setting.

    A machine's speed drifts while a table is measured (on this project's 2-core CPU, the dense model at 2 threads
    ran at 2 ms or at 5 ms for seconds at a time), so, as everywhere in this product, times are taken relative to the
    dense model: each signature's sweep is bracketed by two timings of the dense model, each grid point is kept as a
    fraction of their mean, and the median fraction over ROUNDS rounds is scaled by the dense model's median time.
    """
    dev = torch.device(device)
    modules = dict(model.named_modules())
    widths = layer_widths(model)
    layers = {name: LayerSpec(sig, *widths[name]) for name, sig in signatures.items()}
    dense = model.to(dev).eval()
    batch = example_inputs[:1].expand(batch_size, *example_inputs.shape[1:]).contiguous().to(dev)
    sweeps: dict[str, tuple[list[int], list[int], list[tuple[int, int, nn.Module, torch.Tensor]]]] = {}
    for sig in sorted(set(signatures.values())):
        members = [name for name, s in signatures.items() if s == sig]
        template, seen = modules[members[0]], shapes[members[0]]
        depthwise = json.loads(sig)[5:6] == ["depthwise"]
        ins = _axis(max(widths[n][0] for n in members))
        outs = ins if depthwise else _axis(max(widths[n][1] for n in members))
        inputs = {cin: torch.randn(batch_size, cin, *seen.input_shape[1:], device=dev) for cin in ins}
        points = [(i, j, _make_unit(template, seen, cin, cout).to(dev).eval(), inputs[cin])
                  for i, cin in enumerate(ins) for j, cout in enumerate(outs) if not depthwise or cin == cout]
        sweeps[sig] = (ins, outs, points)
    fractions: dict[str, list[list[list[float]]]] = {
        sig: [[[] for _ in outs] for _ in ins] for sig, (ins, outs, _) in sweeps.items()}
    dense_times: list[float] = []
    with torch.inference_mode():
        _median_ms(dense, batch, dev, WARMUP)
        for round_index in range(ROUNDS):
            for sig, (_, _, points) in sweeps.items():
                before = _median_ms(dense, batch, dev)
                times = [(i, j, _median_ms(unit, x, dev, WARMUP if round_index == 0 else CALLS))
                         for i, j, unit, x in points]
                reference = (before + _median_ms(dense, batch, dev)) / 2
                dense_times.append(reference)
                for i, j, ms in times:
                    fractions[sig][i][j].append(ms / reference)
    model.cpu()
    dense_ms = statistics.median(dense_times)
    grids = {}
    for sig, (ins, outs, _) in sweeps.items():
        times = [[dense_ms * statistics.median(f) if f else math.nan for f in row] for row in fractions[sig]]
        if json.loads(sig)[5:6] == ["depthwise"]:  # only the diagonal exists: fill each row with its diagonal value
            times = [[times[i][i]] * len(outs) for i in range(len(ins))]
        grids[sig] = Grid(ins, outs, times)
    log.info("latency table: %d layers, %d signatures measured on %s (batch %d, %d threads)", len(layers), len(grids),
             setup["device"], batch_size, setup["threads"])
    return LatencyTable(key, setup, layers, grids, dense_ms)


def _calibrate(table: LatencyTable, model: nn.Module, example_inputs: torch.Tensor, device: str,
               batch_size: int) -> None:
    """Fit the table's exponent on a few pruned copies of the model timed interleaved with it.

    A sum of layers timed alone misses how the whole network runs (caches stay warm for one layer repeated, thread
    start-up is paid per call): on this project's 2-core CPU it over-predicted channel-pruned ResNet-20s by up to a
    fifth in one run and under-predicted in another. Probes: uniform channel pruning at three ratios and, where the
    network has removable blocks, a third and two thirds of them removed. A probe that cannot be made is skipped.
    """
    probes: dict[str, nn.Module] = {}
    blocks = len(removable_blocks(model, example_inputs))
    settings = [(s, 0) for s in PROBE_SPARSITY] + [(0.0, blocks * k // 3) for k in (1, 2) if blocks * k // 3]
    for sparsity, removed in settings:
        try:
            probes[f"{sparsity}-{removed}"] = prune(model, example_inputs, method="channel", sparsity=sparsity,
                                                    blocks=removed)
        except Exception as error:  # noqa: BLE001 - a probe the pruner cannot make is only one point fewer
            log.info("latency table: probe %s skipped (%s)", (sparsity, removed), error)
    if not probes:
        return
    timed = compare_latency({"dense": model, **probes}, example_inputs, reference="dense", device=device,
                            batch_size=batch_size, repeats=PROBE_ROUNDS * 10, rounds=PROBE_ROUNDS)
    pairs = [[(table.predict_ms(layer_widths(probe)) / table.dense_ms), timed[name]["ratio"]]
             for name, probe in probes.items()]
    pairs = [p for p in pairs if 0 < p[0] < 1 and p[1] > 0]
    if pairs:
        fitted = sum(math.log(m) * math.log(r) for r, m in pairs) / sum(math.log(r) ** 2 for r, _ in pairs)
        table.exponent = min(max(fitted, 0.5), 2.0)
    table.probes = pairs


def _device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda {torch.cuda.get_device_name()}"
    return " ".join(part for part in ("cpu", platform.machine(), platform.processor(), f"x{os.cpu_count()}") if part)
