"""The registry of pruning methods: a name maps to a function and the facts about it (its traits).

Each method family lives in its own module and registers itself here on import, in the style of
torchvision.models.get_model. Everything outside pruners/ that needs to know what a method is (does it run
faster on dense kernels, what knob does the search turn, which criteria need data) reads it from here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

Sparsity = float | dict[str, float]
MethodFn = Callable[..., nn.Module]
"""fn(model, example_inputs, sparsity, criterion, **options) -> model, pruning `model` in place."""
Knob = Literal["per_group", "scalar", "pattern"]


@dataclass(frozen=True)
class Method:
    """A registered method and its traits.

    - `criteria`: every criterion it accepts (the first is the default); `search_criteria`: those the search
      offers (None: all); `calibrated`: those that rank with a labelled calibration batch.
    - `knob`: what the search turns: one ratio per channel group (`per_group`), one ratio for the whole model
      (`scalar`), or an N:M pattern (`pattern`).
    - `removes_work`: the pruned model is smaller on dense kernels (channels or blocks are physically gone), so it
      runs faster anywhere; otherwise weights are only masked and time drops only with a sparse runtime.
    - `sparse_runtime`: for masked methods, what kernels would make them faster, in words (shown in reports).
    - `global_ranking`: the search may also rank all groups together (Torch-Pruning's global ranking).
    - `subsumed_by`: another method whose space holds every model this one makes (the default search leaves it out).
    - `dynamic`: the search gives the pruned model early exits (search.dynamic), so its cost is an expectation over
      inputs; opt-in (--methods dynamic), neither a default nor a "faster" method, whose speed-up holds for any input.
    """

    fn: MethodFn
    criteria: tuple[str, ...]
    options: tuple[str, ...]
    knob: Knob = "per_group"
    removes_work: bool = False
    sparse_runtime: str = ""
    search_criteria: tuple[str, ...] | None = None
    calibrated: tuple[str, ...] = ()
    global_ranking: bool = False
    subsumed_by: str | None = None
    dynamic: bool = False

    @property
    def searched_criteria(self) -> tuple[str, ...]:
        return self.search_criteria if self.search_criteria is not None else self.criteria

    @property
    def masked(self) -> bool:
        """Zeroed weights that stay in the tensors: FLOPs counted are *nonzero* FLOPs, not work saved by kernels."""
        return not self.removes_work


_METHODS: dict[str, Method] = {}


def register(name: str, criteria: tuple[str, ...], options: tuple[str, ...] = (), **traits: Any
             ) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding a method function to the registry under `name`, with its traits (see Method)."""

    def add(fn: MethodFn) -> MethodFn:
        _METHODS[name] = Method(fn, criteria, options, **traits)
        return fn

    return add


def available_methods() -> list[str]:
    """Names of every registered pruning method."""
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The registered method called `name`; ValueError listing the valid names otherwise."""
    if name not in _METHODS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {available_methods()}")
    return _METHODS[name]


def faster_methods() -> list[str]:
    """Methods whose pruned models run faster with dense kernels on any device, for any input."""
    return [name for name in available_methods() if _METHODS[name].removes_work and not _METHODS[name].dynamic]


def default_methods() -> list[str]:
    """The default search: the faster methods, less those another faster method subsumes."""
    faster = faster_methods()
    return [name for name in faster if _METHODS[name].subsumed_by not in faster]


def needs_calibration(method: str, criterion: str, options: dict[str, Any]) -> bool:
    """Whether a call needs option calibration=(inputs, labels): a data-driven criterion ranks with it, and
    reconstruction refits layers on its inputs."""
    return criterion in get_method(method).calibrated or bool(options.get("reconstruct"))


def criteria_for(method: str) -> list[str]:
    """The importance criteria that `method` accepts."""
    return list(get_method(method).criteria)


def check_call(method: str, criterion: str, options: dict[str, Any]) -> Method:
    """Validate a method name, criterion and option names before any work is done."""
    entry = get_method(method)
    if criterion not in entry.criteria:
        raise ValueError(
            f"unknown criterion {criterion!r} for method {method!r}; choose one of {list(entry.criteria)}"
        )
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; it accepts {list(entry.options)}"
        )
    return entry
