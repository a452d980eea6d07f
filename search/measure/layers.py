"""What a pruning policy did to each layer: the output units and nonzero weights it kept, against dense.

The report draws the pick's bar chart and the Pareto models' heat map from these rows, so they are measured on the
model itself (channels physically removed, whole blocks replaced by nn.Identity, weights masked to zero), not read
back from the policy.
"""

from __future__ import annotations

from torch import nn

from search.measure.flops import weight_density

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _units(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def _nonzero(module: nn.Module) -> int:
    """Nonzero entries of the effective weight."""
    return round(weight_density(module) * module.weight.numel())


def layer_profile(model: nn.Module, dense: nn.Module) -> list[list]:
    """[name, kept output units, dense output units, nonzero weights, dense weights] for every conv and linear layer
    of `dense`, in network order; a layer the pruned `model` no longer has (a removed block) kept 0 of each."""
    pruned = dict(model.named_modules())
    rows = []
    for name, layer in dense.named_modules():
        if not isinstance(layer, WEIGHTED):
            continue
        kept = pruned.get(name)
        present = isinstance(kept, WEIGHTED)
        rows.append([name, _units(kept) if present else 0, _units(layer),
                     _nonzero(kept) if present else 0, layer.weight.numel()])
    return rows
