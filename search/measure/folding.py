"""Batch norms folded into the convolution before them: the form a model is timed in, as it runs once deployed.

onnxruntime, TensorRT and torch.ao fold an inference-mode batch norm into the convolution that feeds it (new weights
and bias, one operator fewer). Timed eagerly with its batch norms, a thin pruned network at batch 1 pays a fixed
per-operator cost that no deployment pays, and its latency ratio to dense overstates what it will run at. torch ships
the arithmetic (`fuse_conv_bn_eval`) but finds pairs only in an FX graph, which a model with data-dependent control
flow (early exits) does not give; pairs here are found by watching one forward pass instead, and a fold whose
outputs differ from the model's is not kept.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pruners.graph import observe
from pruners.layer_types import BATCH_NORM, CONV

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
TOLERANCE = 1e-4  # largest output change a fold may make, relative to the outputs' largest magnitude


def fold_batch_norms(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Fold, in place and in eval mode, each batch norm of `model` that reads only a convolution's output into it;
    returns how many were folded (0 where none could be, or where folding changed the outputs: then it is undone).

    A pair is folded when a forward pass over `example_inputs` shows the norm reading the very tensor the
    convolution returned, each module called once and hook-free; the folded model's outputs must match the
    model's within TOLERANCE."""
    model.eval()
    if example_inputs.shape[0] == 1:  # a dynamic model given one input stops at its first confident head, and the
        # norms after it would go unseen (and unfolded, though a batch or another input runs them): give it two
        example_inputs = example_inputs.expand(2, *example_inputs.shape[1:])
    pairs = _conv_norm_pairs(model, example_inputs)
    if not pairs:
        return 0
    with torch.no_grad():
        expected = model(example_inputs)
    parents = {module: (parent, name) for parent in model.modules() for name, module in parent.named_children()}
    for conv, norm in pairs:
        _replace(parents[conv], fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, _TRANSPOSED)))
        _replace(parents[norm], nn.Identity())
    with torch.no_grad():
        folded = model(example_inputs)
    if _close(expected, folded):
        return len(pairs)
    for conv, norm in pairs:
        _replace(parents[conv], conv)
        _replace(parents[norm], norm)
    return 0


def _replace(place: tuple[nn.Module, str], module: nn.Module) -> None:
    """Put `module` in the (parent, attribute name) place."""
    parent, name = place
    setattr(parent, name, module)


def _conv_norm_pairs(model: nn.Module, example_inputs: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(convolution, batch norm) pairs where the norm read the convolution's output, seen in one eval forward."""
    calls: dict[nn.Module, int] = {}
    made_by: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # output id -> (conv, output kept alive for the id)
    read_from: dict[nn.Module, nn.Module] = {}

    def record(module: nn.Module, args: tuple, output: object) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(module, CONV) and isinstance(output, torch.Tensor):
            made_by[id(output)] = (module, output)
        elif isinstance(module, BATCH_NORM) and args and id(args[0]) in made_by:
            read_from[module] = made_by[id(args[0])][0]

    candidates = [m for m in model.modules() if isinstance(m, (CONV, BATCH_NORM)) and _foldable(m)]
    if not any(isinstance(m, BATCH_NORM) for m in candidates):
        return []
    observe(model, example_inputs, {module: record for module in candidates})
    readers: dict[nn.Module, int] = {}
    for conv in read_from.values():
        readers[conv] = readers.get(conv, 0) + 1
    return [(conv, norm) for norm, conv in read_from.items()
            if calls[norm] == calls[conv] == 1 and readers[conv] == 1 and norm.num_features == conv.out_channels]


def _foldable(module: nn.Module) -> bool:
    """No hooks of its own (a masked weight is recomputed by one), running statistics to fold, a plain conv."""
    if module._forward_hooks or module._forward_pre_hooks:  # noqa: SLF001 - torch exposes no public test for hooks
        return False
    return not isinstance(module, BATCH_NORM) or (module.track_running_stats and module.running_mean is not None)


def _close(expected: object, got: object) -> bool:
    """Outputs (a tensor or a tuple/list of them) equal within TOLERANCE of the expected ones' largest magnitude."""
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor):
        if expected.shape != got.shape:
            return False
        scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
        return expected.numel() == 0 or float((expected - got).abs().max()) <= TOLERANCE * scale
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)) and len(expected) == len(got):
        return all(_close(e, g) for e, g in zip(expected, got))
    return False
