"""The registry of pruning methods: a name maps to a function and the criteria it accepts.

Each method family lives in its own module and registers itself here on import, in the style of
torchvision.models.get_model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

Sparsity = float | dict[str, float]
MethodFn = Callable[..., nn.Module]
"""fn(model, example_inputs, sparsity, criterion, **options) -> model, pruning `model` in place."""


@dataclass(frozen=True)
class Method:
    """A registered method: its function, its criteria (the first is the default) and its options."""

    fn: MethodFn
    criteria: tuple[str, ...]
    options: tuple[str, ...]


_METHODS: dict[str, Method] = {}


def register(name: str, criteria: tuple[str, ...], options: tuple[str, ...] = ()) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding a method function to the registry under `name`."""

    def add(fn: MethodFn) -> MethodFn:
        _METHODS[name] = Method(fn, criteria, options)
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

