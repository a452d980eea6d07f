"""`dynamic`: channel pruning of a backbone that the search then gives early exits (dynamic/, search/dynamic.py).

Only the static part happens here: the exits' heads need training data and their thresholds a validation split, so
search.dynamic attaches them after the backbone has recovered. The options say how: `exits` heads, with thresholds
fitted so the expected cost per input is `exit_target` of the dense model's.
"""
from __future__ import annotations

import torch
from torch import nn

from .channel import CHANNEL_OPTIONS, channel
from .criteria import CALIBRATED, CHANNEL_CRITERIA, SEARCH_CRITERIA
from .registry import Sparsity, register


@register("dynamic", criteria=CHANNEL_CRITERIA, options=(*CHANNEL_OPTIONS, "exits", "exit_target"),
          knob="per_group", removes_work=True, search_criteria=SEARCH_CRITERIA, calibrated=CALIBRATED,
          global_ranking=True, dynamic=True)
def dynamic(model: nn.Module, example_inputs: torch.Tensor, sparsity: Sparsity, criterion: str, exits: int = 2,
            exit_target: float = 1.0, **channel_options: object) -> nn.Module:
    """The backbone of a dynamic model: `model` channel-pruned (sparsity 0: left whole, dynamic pruning alone)."""
    if int(exits) < 1:
        raise ValueError(f"exits={exits}: a dynamic model needs at least one early exit")
    if not 0 < exit_target <= 1:
        raise ValueError(f"exit_target={exit_target} must be in (0, 1]: expected cost per input as a ratio to dense")
    return channel(model, example_inputs, sparsity, criterion, **channel_options)
