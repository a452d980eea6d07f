"""Validation of the `sparsity` argument and its expansion to per-layer ratios."""
from __future__ import annotations

import logging
import numbers

from torch import nn

from .layer_types import PRUNABLE_LAYERS
from .registry import Sparsity

log = logging.getLogger(__name__)


def check_ratio(value: object, where: str = "sparsity") -> float:
    """`value` as a float in [0, 1); ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{where}={value!r} is invalid; use a number in [0, 1)")
    return float(value)


def check_sparsity(model: nn.Module, sparsity: object) -> Sparsity:
    """A validated copy of `sparsity`: one ratio, or a dict from module names of `model` to ratios."""
    if not isinstance(sparsity, dict):
        return check_ratio(sparsity)
    names = {name for name, _ in model.named_modules()}
    checked = {}
    for name, ratio in sparsity.items():
        if name not in names:
            raise ValueError(
                f"sparsity key {name!r} is not a module of the model; use names from model.named_modules()"
            )
        checked[name] = check_ratio(ratio, f"sparsity[{name!r}]")
    return checked


def layer_ratios(sparsity: Sparsity, layers: list[str], protected: list[str]) -> dict[str, float]:
    """Per-layer ratios for `layers`: one ratio for all, or the dict's (unlisted layers get 0).

    A dict key naming a protected (output) layer is dropped with a warning; a key naming a module
    that is not among `layers` is a ValueError.
    """
    if not isinstance(sparsity, dict):
        return {name: sparsity for name in layers}
    ratios = {}
    for name, ratio in sparsity.items():
        if name in protected:
            log.warning("sparsity key %r is an output layer; output layers are never pruned", name)
        elif name not in layers:
            raise ValueError(
                f"sparsity key {name!r} is not a prunable conv/linear layer; use one of {layers[:8]}"
                + (" ..." if len(layers) > 8 else "")
            )
        else:
            ratios[name] = ratio
    return ratios


def check_layer_keys(model: nn.Module, sparsity: Sparsity) -> None:
    """ValueError unless every key of a dict `sparsity` names a conv/linear layer of `model`."""
    if not isinstance(sparsity, dict):
        return
    modules = dict(model.named_modules())
    for name in sparsity:
        if not isinstance(modules[name], PRUNABLE_LAYERS):
            raise ValueError(
                f"sparsity key {name!r} is a {type(modules[name]).__name__}, not a conv/linear layer; "
                "use the out_layers of prunable_groups()"
            )
