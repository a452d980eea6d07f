"""FLOPs that a model will really compute: fvcore's count, scaled by each conv/linear layer's weight density.

Convention (fvcore): one fused multiply-add = 1 flop; counts follow tensor shapes for the given
example input (the caller passes batch 1), traced in eval mode.

| op (TorchScript name)                     | counted as                                    | source      |
| ----------------------------------------- | --------------------------------------------- | ----------- |
| aten::_convolution                        | N * prod(weight shape) * prod(out spatial)    | fvcore      |
| aten::linear, addmm, mm, matmul, bmm      | MACs of the matrix product                    | fvcore      |
| aten::einsum                              | MACs of numpy's optimal contraction path      | fvcore      |
| aten::scaled_dot_product_attention        | MACs of q @ k^T plus attn @ v                 | ours (below)|
| aten::batch_norm (eval)                   | 2 per element (1 without affine)              | fvcore      |
| aten::layer_norm, group_norm              | 5 per element (4 without affine)              | fvcore      |
| aten::instance_norm                       | 5 per element (4 without affine)              | fvcore      |
| aten::adaptive_avg_pool2d                 | 1 per input element                           | fvcore      |
| aten::upsample_nearest2d / bilinear2d     | 1 / 4 per output element                      | fvcore      |
| elementwise add/mul/div, activations,     | 0: not counted                                | -           |
| max/avg pooling, softmax, gelu, reshapes  |                                               |             |

Why not the rest: fvcore counts the multiply-add-heavy ops that dominate cost; elementwise ops and
pooling are memory-bound and below about 1% of a CNN's total. Attention's two matrix products are
not elementwise (about 4% of ViT-B/16), and fvcore has no handle for them, so we register one.

Masks: fvcore counts from shapes, so a zeroed weight still counts. Each nn.Conv*/nn.Linear module's
own count is multiplied by its density, the fraction of nonzero entries in its effective weight
(plain zeros in ``weight``, or ``weight_orig * weight_mask`` from torch.nn.utils.prune). A weight
entry takes part in a fixed number of MACs per output position, so this scaling is exact.
Channel-pruned models have smaller shapes and need nothing extra. Limitation: weights used outside
their own module's forward (nn.MultiheadAttention's ``in_proj_weight`` and ``out_proj``) count dense.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from math import prod
from typing import Any

import torch
from torch import nn

from pruners.graph import eval_mode_restored
from pruners.layer_types import PRUNABLE_LAYERS

with warnings.catch_warnings():
    # fvcore.nn's __init__ scripts a focal loss at import; torch now warns that jit.script is deprecated.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

_FVCORE_LOGGER = logging.getLogger("fvcore.nn.jit_analysis")
_WEIGHTED = PRUNABLE_LAYERS


def count_flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example_inputs``, with masked conv/linear weights costing nothing."""
    return sum(flops_by_operator(model, example_inputs).values())


def flops_by_operator(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """``count_flops`` split by fvcore operator name (conv, linear, batch_norm, ...); they sum to it."""
    total, per_layer = _fvcore_counts(model, example_inputs)
    modules = dict(model.named_modules())
    for name, ops in per_layer.items():
        sparsity = 1.0 - weight_density(modules[name])
        for op, dense in ops.items():
            total[op] -= round(dense * sparsity)
    return dict(total)


def layer_flops(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Dense (shape-only) fvcore FLOPs of each conv/linear module, by module name; 0 if never called."""
    return {name: sum(ops.values()) for name, ops in _fvcore_counts(model, example_inputs)[1].items()}


def leaf_flops(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """``count_flops`` split by leaf module (modules without children), masks counted as above; operators that a
    container's own forward calls outside any leaf (rare: elementwise ops are not counted) are left out."""
    total, per_layer = _fvcore_counts(model, example_inputs, by_module=True)
    modules = dict(model.named_modules())
    leaves = {name: sum(total.get(name, Counter()).values()) for name, m in modules.items()
              if not list(m.children()) and name}
    for name, ops in per_layer.items():
        if name in leaves:
            leaves[name] -= round(sum(ops.values()) * (1.0 - weight_density(modules[name])))
    return leaves


def weight_density(module: nn.Module) -> float:
    """Fraction of nonzero entries in a module's effective weight (prune reparametrisation aware)."""
    mask = getattr(module, "weight_mask", None)
    orig = getattr(module, "weight_orig", None)
    weight = orig * mask if mask is not None and orig is not None else module.weight
    with torch.no_grad():
        return float(torch.count_nonzero(weight)) / max(weight.numel(), 1)


def _sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of scaled_dot_product_attention: q @ k^T, then weights @ v (fvcore has no handle)."""
    q, k, v = (value.type().sizes() for value in inputs[:3])
    return prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _fvcore_counts(
    model: nn.Module, example_inputs: torch.Tensor, by_module: bool = False
) -> tuple[Any, dict[str, Counter[str]]]:
    """fvcore's dense counts by operator, for the whole model (`by_module`: for every module, by name) and for each
    conv/linear module."""
    with eval_mode_restored(model), _no_fastpath(), _quiet_fvcore(), torch.inference_mode(False), torch.no_grad():
        analysis = (
            FlopCountAnalysis(model, example_inputs.clone())
            .set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
            .tracer_warnings("none")
        )
        counted = analysis.by_module_and_operator()
    as_ints = {name: Counter({op: int(round(n)) for op, n in ops.items()}) for name, ops in counted.items()}
    per_layer = {
        name: as_ints.get(name, Counter()) for name, module in model.named_modules() if isinstance(module, _WEIGHTED)
    }
    return as_ints if by_module else as_ints[""], per_layer


@contextmanager
def _no_fastpath() -> Iterator[None]:
    """Turn off the fused attention fast path, whose single op fvcore cannot count."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextmanager
def _quiet_fvcore() -> Iterator[None]:
    """Keep fvcore's own log lines (unsupported operators, uncalled modules) from users."""
    level = _FVCORE_LOGGER.level
    _FVCORE_LOGGER.setLevel(logging.ERROR)
    try:
        yield
    finally:
        _FVCORE_LOGGER.setLevel(level)
