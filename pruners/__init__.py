"""Pruning methods behind one call, prune(model, example_inputs, method, sparsity, criterion, **options).

Each method family is its own module and registers itself by name on import.
"""
from . import channel, global_magnitude, layer, magnitude, nm  # noqa: F401 - register the methods
from .api import prune
from .graph import output_layers
from .groups import PrunableGroup, prunable_groups
from .masks import bake
from .registry import available_methods, criteria_for

__all__ = [
    "PrunableGroup",
    "available_methods",
    "bake",
    "criteria_for",
    "output_layers",
    "prunable_groups",
    "prune",
]
