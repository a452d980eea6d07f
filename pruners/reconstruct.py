"""Least-squares reconstruction after channel pruning (He et al., ICCV 2017; ThiNet): every convolution or linear
layer that lost input channels gets new weights that reproduce the dense layer's outputs (its kept channels) from
the pruned network's own inputs, on a calibration batch, one layer at a time in forward order, so each layer also
corrects what the layers before it changed.

Torch-Pruning removes channels but never compensates the layers that read them; this is where we go past it.
"""
from __future__ import annotations

import torch
from torch import nn

from .graph import observe

RIDGE = 1e-4  # Tikhonov weight, relative to the mean diagonal of the normal matrix: keeps the solve well posed
MAX_ROWS = 16384  # sampled output positions per layer: the normal matrix needs far fewer than a batch holds


class _Reached(Exception):
    """Raised from a forward-pre-hook to stop the forward once the layer's input is captured."""


def reconstruct(pruned: nn.Module, dense: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Refit, in place, each plain (ungrouped) Conv2d or Linear of `pruned` that has fewer inputs than its namesake in
    `dense`, so that on `inputs` it reproduces the dense layer's outputs at its kept output channels."""
    dense_layers = dict(dense.named_modules())
    targets = [(name, m) for name, m in _call_order(pruned, inputs)
               if _refittable(m) and type(dense_layers.get(name)) is type(m)
               and _fan_in(m) < _fan_in(dense_layers[name])]
    if not targets:
        return pruned
    wanted = {dense_layers[name]: name for name, _ in targets}
    outputs: dict[str, torch.Tensor] = {}
    observe(dense, inputs, {m: lambda mod, _a, out: outputs.__setitem__(wanted[mod], out.detach()) for m in wanted})
    generator = torch.Generator().manual_seed(0)
    for name, layer in targets:
        kept = _kept_outputs(layer.weight, dense_layers[name].weight)
        if kept is None:
            continue
        rows, target = _rows(layer, _layer_input(pruned, layer, inputs), outputs[name][:, kept], generator)
        _solve_into(layer, rows, target)
    return pruned


def _refittable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _fan_in(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _call_order(model: nn.Module, inputs: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Named modules in the order the forward calls them (a few inputs suffice)."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module]] = []
    observe(model, inputs[:2], {m: lambda mod, _a, _k: order.append((names[mod], mod)) for m in names}, pre=True)
    return order


def _layer_input(model: nn.Module, layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What `layer` receives when `model` runs on `inputs` (the forward stops there)."""
    seen: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple, _kwargs: dict) -> None:
        seen.append(args[0].detach())
        raise _Reached

    try:
        observe(model, inputs, {layer: capture}, pre=True)
    except _Reached:
        pass
    return seen[0]


def _kept_outputs(pruned: torch.Tensor, dense: torch.Tensor) -> torch.Tensor | None:
    """The dense output channels a pruned weight kept, found by matching its values (pruning copies them exactly,
    rows and columns in their original order); None when they cannot be matched."""
    columns = _kept_inputs(pruned[0], dense)
    if columns is None:
        return None
    narrowed = dense[:, columns].reshape(dense.shape[0], -1)
    flat = pruned.reshape(pruned.shape[0], -1)
    kept: list[int] = []
    start = 0
    for row in flat:
        match = next((i for i in range(start, len(narrowed)) if torch.equal(narrowed[i], row)), None)
        if match is None:
            return None
        kept.append(match)
        start = match + 1
    return torch.tensor(kept)


def _kept_inputs(row: torch.Tensor, dense: torch.Tensor) -> torch.Tensor | None:
    """The input columns of `dense` that pruned output `row` kept: the first dense row holding every slice of `row`
    in order."""
    for candidate in dense:
        columns: list[int] = []
        start = 0
        for part in row:
            match = next((c for c in range(start, len(candidate)) if torch.equal(candidate[c], part)), None)
            if match is None:
                break
            columns.append(match)
            start = match + 1
        else:
            return torch.tensor(columns)
    return None


def _rows(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares system of `layer`: one row per sampled output position, its receptive field (plus a 1 where
    the layer has a bias, refit with the weights) against the dense output there."""
    if isinstance(layer, nn.Conv2d):
        patches = nn.functional.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        x = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        y = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    if len(x) > MAX_ROWS:
        pick = torch.randperm(len(x), generator=generator)[:MAX_ROWS]
        x, y = x[pick], y[pick]
    if layer.bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    return x.double(), y.double()


@torch.no_grad()
def _solve_into(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Ridge least squares for the layer's weight (and bias), written into it."""
    normal = x.T @ x
    normal += RIDGE * normal.diagonal().mean() * torch.eye(len(normal), dtype=normal.dtype)
    solution = torch.linalg.solve(normal, x.T @ y).T.to(layer.weight.dtype)
    if layer.bias is not None:
        layer.bias.copy_(solution[:, -1])
        solution = solution[:, :-1]
    layer.weight.copy_(solution.reshape(layer.weight.shape))
