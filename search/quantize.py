"""int8 post-training quantisation of a pruned model on the CPU: torch's FX graph mode (per-channel int8 weights,
histogram-calibrated int8 activations, x86 kernels through fbgemm/oneDNN), calibrated on training images.

FX rather than PT2E: torch 2.14 no longer ships PT2E, and torchao 0.18's X86InductorQuantizer fails to annotate
ResNet-20's residual graph ("Input partition has more than one output node"); FX runs real int8 kernels here (on
fashion-resnet20: 0.8x the fp32 batch-1 latency, 6x faster at batch 500, -0.2 point). Its packed weights cannot be
traced by torch.export, so an int8 model ships as ONNX (onnxruntime's own QDQ quantisation, search.export) or as
its int8 state_dict, which `quantized_like` rebuilds without calibration data.

A trial's int8 model is an Int8Model: the quantised graph that runs, and the float model it came from, which the
product counts FLOPs and parameters on (int8 runs the same multiply-accumulates) and saves by weights.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

ENGINE = "x86"  # torch.backends.quantized engine and qconfig: fbgemm's successor on x86 CPUs
CALIBRATION_BATCHES = 8  # training batches the activation observers see


class QuantizeError(RuntimeError):
    """The model cannot be quantised by FX (it does not trace symbolically); the message says what to do."""


class Int8Model(nn.Module):
    """`quantized` (what runs) beside `float_model` (what it was quantised from); the bytes that ship are the
    quantised graph's alone."""

    def __init__(self, quantized: nn.Module, float_model: nn.Module) -> None:
        super().__init__()
        self.quantized = quantized
        self.float_model = float_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized(x.cpu())


def _prepared(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    torch.backends.quantized.engine = ENGINE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FX quantisation's deprecation notices, once per call
            return prepare_fx(copy.deepcopy(model).cpu().eval(), get_default_qconfig_mapping(ENGINE),
                              example_inputs=(example_inputs.cpu(),))
    except Exception as error:  # noqa: BLE001 - torch.fx raises many kinds on untraceable code
        raise QuantizeError(f"int8 quantisation needs a model torch.fx can trace: {type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''}; search without --quantize") from None


def quantize_int8(model: nn.Module, example_inputs: torch.Tensor, calibration: Iterable) -> Int8Model:
    """An int8 copy of the float `model` (kept beside it), its activation ranges observed on the first
    CALIBRATION_BATCHES of `calibration` (batches of (inputs, labels), or lists as a DataLoader yields them)."""
    prepared = _prepared(model, example_inputs)
    with torch.inference_mode():
        for index, batch in enumerate(calibration):
            if index >= CALIBRATION_BATCHES:
                break
            prepared(batch[0].cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Int8Model(convert_fx(prepared).eval(), model.cpu().eval()).eval()


def int8_structure(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The quantised graph of the float `model` with no calibration (its scales are placeholders): the structure, and
    bytes, of the int8 model, which quantized_like fills with a saved state."""
    prepared = _prepared(model, example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # observers that saw no data
        return convert_fx(prepared)


def quantized_like(model: nn.Module, example_inputs: torch.Tensor, state_dict: dict[str, torch.Tensor]) -> Int8Model:
    """The int8 model whose quantised graph's state_dict is given, rebuilt on the float `model`'s structure: no
    calibration data needed, the scales and zero points come with the state."""
    quantized = int8_structure(model, example_inputs)
    quantized.load_state_dict(state_dict, strict=True)  # the scales and zero points replace the placeholders
    return Int8Model(quantized.eval(), model.cpu().eval()).eval()
