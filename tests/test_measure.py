"""Cost measurement on real small models: FLOPs against hand counts, published values and torch's counter."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from dynamic import EarlyExitModel, exit_head
from pruners import prune as prune_model
from search.measure import (
    compare_latency,
    count_flops,
    count_params,
    flops_by_operator,
    fold_batch_norms,
    latency,
    layer_flops,
    model_size_bytes,
    timed_copy,
)
from search.workloads.models import resnet20

IMAGE = torch.randn(1, 3, 224, 224)


def hand_net(middle: int) -> nn.Sequential:
    """conv 3->middle k3, conv middle->4 k3, linear 64->10 on 8x8 inputs (no padding, no bias)."""
    return nn.Sequential(
        nn.Conv2d(3, middle, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(middle, 4, 3, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10, bias=False),
    )


def mask_all(model: nn.Module, amount: float) -> nn.Module:
    """Magnitude-prune every conv and linear weight of a copy by ``amount`` (prune hooks kept)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(module, "weight", amount)
    return model


def test_resnet18_matches_fvcore_published_count() -> None:
    assert round(count_flops(torchvision.models.resnet18(weights=None), IMAGE) / 1e9, 2) == 1.82


def test_hand_net_channel_pruned_matches_hand_count() -> None:
    x = torch.randn(1, 3, 8, 8)
    # conv1: 6x6 outputs * 8 out ch * 3 in ch * 9; conv2: 4x4 outputs * 4 out * 8 in * 9; linear 64 * 10.
    assert layer_flops(hand_net(8), x) == {"0": 6 * 6 * 8 * 3 * 9, "2": 4 * 4 * 4 * 8 * 9, "4": 64 * 10}
    assert count_flops(hand_net(8), x) == 7776 + 4608 + 640
    # Channels physically removed (8 -> 6): both convs shrink, the linear does not.
    assert count_flops(hand_net(6), x) == 6 * 6 * 6 * 3 * 9 + 4 * 4 * 4 * 6 * 9 + 64 * 10


@pytest.mark.parametrize("remove_hooks", [False, True])
def test_half_masked_resnet18_halves_conv_linear_flops(remove_hooks: bool) -> None:
    x = torch.randn(1, 3, 64, 64)
    dense = torchvision.models.resnet18(weights=None)
    masked = mask_all(dense, 0.5)
    if remove_hooks:
        for module in masked.modules():
            if prune.is_pruned(module) and isinstance(module, (nn.Conv2d, nn.Linear)):
                prune.remove(module, "weight")
    masked.train()
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    # Only conv/linear cost depends on weights; the rest (batch norm, pooling) is the same in both.
    conv_linear = sum(layer_flops(dense, x).values())
    other = count_flops(dense, x) - conv_linear
    assert abs((count_flops(masked, x) - other) / conv_linear - 0.5) <= 0.01
    assert layer_flops(masked, x) == layer_flops(dense, x)
    assert masked.training and all(m.training for m in masked.modules())
    assert prune.is_pruned(masked) is not remove_hooks
    assert all(torch.equal(before[k], v) for k, v in masked.state_dict().items())


def test_counting_shows_no_fvcore_warnings(caplog: pytest.LogCaptureFixture) -> None:
    masked = mask_all(hand_net(8), 0.5)  # weight_orig * weight_mask traces as an unsupported aten::mul
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count_flops(masked, torch.randn(1, 3, 8, 8))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fvcore")] == []
    assert [str(w.message) for w in caught] == []


def test_vit_counts_attention_matrix_products() -> None:
    ops = flops_by_operator(torchvision.models.vit_b_16(weights=None), IMAGE)
    # 12 blocks x (q @ k^T + weights @ v), each 12 heads x 197 tokens x 197 tokens x 64 dims.
    assert ops["scaled_dot_product_attention"] == 12 * 2 * 12 * 197 * 197 * 64


# Ops both counters handle: convolutions and matrix products. Attention is left out because
# FlopCounterMode has no formula for the CPU kernel (aten._scaled_dot_product_flash_attention_for_cpu);
# norms and pooling are left out because FlopCounterMode does not count them.
FVCORE_MATRIX_OPS = {"conv", "linear", "addmm", "mm", "matmul", "bmm", "einsum"}
TORCH_MATRIX_OPS = {"aten.convolution", "aten.addmm", "aten.mm", "aten.bmm", "aten.baddbmm"}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16"])
def test_agrees_with_torch_flop_counter(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    ours = sum(n for op, n in flops_by_operator(model, IMAGE).items() if op in FVCORE_MATRIX_OPS)
    # Grad stays enabled so that nn.MultiheadAttention takes its unfused path, which torch's counter sees.
    with FlopCounterMode(display=False) as counter:
        model(IMAGE)
    theirs = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in TORCH_MATRIX_OPS)
    assert ours == pytest.approx(theirs / 2, rel=0.02)  # torch counts 2 flops per multiply-add


def test_count_params_with_masks() -> None:
    dense = hand_net(8)
    masked = mask_all(dense, 0.5)
    weights = 8 * 3 * 9 + 4 * 8 * 9 + 64 * 10
    zeroed = 108 + 144 + 320  # half of each layer, rounded as l1_unstructured does
    assert count_params(dense) == count_params(masked) == weights
    assert count_params(dense, nonzero_only=True) == weights
    assert count_params(masked, nonzero_only=True) == weights - zeroed
    for module in masked.modules():
        if prune.is_pruned(module) and not list(module.children()):
            prune.remove(module, "weight")
    assert count_params(masked, nonzero_only=True) == weights - zeroed


def test_model_size_shrinks_with_channels() -> None:
    assert model_size_bytes(hand_net(6)) < model_size_bytes(hand_net(8))


def test_latency_reports_stats_and_leaves_model_alone() -> None:
    model = hand_net(8).train()
    threads = torch.get_num_threads()
    result = latency(model, torch.randn(1, 3, 8, 8), threads=1, batch_size=4, warmup=2, repeats=20)
    assert {"p50_ms", "p90_ms", "mean_ms", "repeats", "batch_size", "device", "threads"} <= result.keys()
    assert 0 < result["p50_ms"] <= result["p90_ms"]
    assert (result["repeats"], result["batch_size"], result["device"], result["threads"]) == (20, 4, "cpu", 1)
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert torch.get_num_threads() == threads


def test_latency_of_masked_model_after_training_step() -> None:
    model = mask_all(hand_net(8), 0.5).train()
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # leaves each weight as a non-leaf orig * mask
    assert latency(model, torch.randn(1, 3, 8, 8), warmup=1, repeats=3)["p50_ms"] > 0
    assert prune.is_pruned(model) and model.training


def test_compare_latency_names_an_unknown_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        compare_latency({"dense": hand_net(8)}, torch.randn(1, 3, 8, 8), reference="missing")


def _quarter_channels() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    dense = resnet20().eval()
    inputs = torch.randn(1, 1, 28, 28)
    return dense, prune_model(dense, inputs, method="channel", sparsity=0.75), inputs


def test_a_quarter_of_the_channels_measures_faster_than_dense() -> None:
    dense, quarter, inputs = _quarter_channels()
    result = compare_latency({"dense": dense, "copy": copy.deepcopy(dense), "quarter": quarter}, inputs,
                             reference="dense", threads=1, batch_size=8, warmup=3, repeats=30, rounds=5)
    assert result["quarter"]["ratio"] < 0.6  # a sixteenth of the FLOPs: far under dense, whatever the machine
    assert 0.75 < result["copy"]["ratio"] < 1.33  # the same network measures as the same
    assert len(result["quarter"]["round_p50_ms"]) == 5


def _with_trained_norms(model: nn.Module) -> nn.Module:
    """`model` with batch-norm statistics and affine weights away from their init, so a fold changes the weights."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    return model.eval()


def _norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def test_the_timed_copy_has_its_batch_norms_folded_and_masks_baked_and_computes_the_same() -> None:
    dense = _with_trained_norms(resnet20())
    masked = mask_all(dense, 0.5)
    inputs = torch.randn(4, 1, 28, 28)
    for model in (dense, masked):
        timed = timed_copy(model, inputs)
        assert _norms(timed) == 0 and not prune.is_pruned(timed)
        torch.testing.assert_close(timed(inputs), model.eval()(inputs), atol=1e-4, rtol=1e-4)
        assert _norms(model) == 21  # the caller's model keeps its batch norms
    assert prune.is_pruned(masked)


def test_a_batch_norm_whose_convolution_output_is_also_read_elsewhere_is_not_folded() -> None:
    class SharedOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.norm(y) + y

    model = _with_trained_norms(SharedOutput())
    inputs = torch.randn(2, 3, 8, 8)
    expected = model(inputs)
    assert fold_batch_norms(model, inputs) == 0
    assert isinstance(model.norm, nn.BatchNorm2d)
    torch.testing.assert_close(model(inputs), expected)


def test_an_early_exit_model_folds_its_heads_too_and_takes_the_same_exits() -> None:
    backbone = _with_trained_norms(resnet20())
    model = EarlyExitModel(backbone, ["layer1", "layer2"], [exit_head(16, 10), exit_head(32, 10)], [0.3, 0.3])
    _with_trained_norms(model)
    inputs = torch.randn(6, 1, 28, 28)
    timed = timed_copy(model, inputs[:2])
    assert _norms(timed) == 0
    for index in range(len(inputs)):
        one = inputs[index:index + 1]
        logits, exit_taken = model.forward_with_exit(one)
        timed_logits, timed_exit = timed.forward_with_exit(one)
        assert timed_exit == exit_taken
        torch.testing.assert_close(timed_logits, logits, atol=1e-4, rtol=1e-4)


def test_an_early_exit_model_that_takes_its_one_example_at_the_first_head_is_folded_whole() -> None:
    """Timed from one example input, a dynamic model whose first head takes it ran only the first stage; its later
    batch norms must be folded all the same, since a batch (or another input) runs them."""
    backbone = _with_trained_norms(resnet20())
    model = _with_trained_norms(EarlyExitModel(backbone, ["layer1", "layer2"], [exit_head(16, 10), exit_head(32, 10)],
                                               [0.0, 0.0]))
    inputs = torch.randn(4, 1, 28, 28)
    timed = timed_copy(model, inputs[:1])
    assert _norms(timed) == 0
    with torch.no_grad():
        torch.testing.assert_close(timed.exit_logits(inputs), model.eval().exit_logits(inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.slow(reason="a timing beside a busy process: on a shared 2-core machine its 25% tolerance was once "
                        "missed (idle 0.449, busy 0.335, a clean-clone CI run)")
def test_interleaving_holds_the_ratio_when_the_machine_is_busy() -> None:
    """A busy process beside a one-thread timing takes a core and the caches; the interleaved ratio stays. (With every
    core taken the ratio drifts: measured here, 0.39 idle against 0.19-0.31 with two spinners on two cores. Never time
    on an oversubscribed machine.)"""
    dense, quarter, inputs = _quarter_channels()

    def ratio() -> float:
        return compare_latency({"dense": dense, "quarter": quarter}, inputs, reference="dense", threads=1,
                               batch_size=8, warmup=3, repeats=40, rounds=8)["quarter"]["ratio"]

    idle = ratio()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    try:
        time.sleep(0.5)
        busy = ratio()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert abs(busy / idle - 1) < 0.25, (idle, busy)
