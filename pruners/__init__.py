"""Pruning methods behind one call, prune(model, example_inputs, method, sparsity, criterion, **options).

Each method family is its own module and registers itself by name on import.
"""
from . import channel, dynamic, global_magnitude, layer, magnitude, nm  # noqa: F401 - register the methods
from .api import prune
from .graph import output_layers
from .groups import PrunableGroup, prunable_groups
from .layer import removable_blocks
from .masks import bake
from .registry import (
    Method,
    available_methods,
    criteria_for,
    default_methods,
    faster_methods,
    get_method,
    needs_calibration,
)

__all__ = [
    "Method",
    "PrunableGroup",
    "available_methods",
    "bake",
    "criteria_for",
    "default_methods",
    "faster_methods",
    "get_method",
    "needs_calibration",
    "output_layers",
    "prunable_groups",
    "prune",
    "removable_blocks",
]
