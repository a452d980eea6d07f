"""Least-squares reconstruction after channel pruning: exact where the math allows it, and a real gain on a trained
network before any fine-tuning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruners import prune
from search.training import evaluate
from search.workloads import Workload


def test_a_linear_stack_is_reproduced_exactly_after_half_its_hidden_units_go() -> None:
    """4 inputs through 16 hidden units (no nonlinearity) to 3 outputs: 8 hidden units still span the map, so the
    refit output layer reproduces the dense outputs; plain pruning does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 3)).eval()
    inputs = torch.randn(256, 4)
    calibration = (inputs, torch.zeros(256, dtype=torch.long))
    plain = prune(model, inputs[:1], method="channel", sparsity=0.5, criterion="l2")
    refit = prune(model, inputs[:1], method="channel", sparsity=0.5, criterion="l2", calibration=calibration,
                  reconstruct=True)
    assert refit[0].out_features == plain[0].out_features == 8
    probe = torch.randn(64, 4)
    with torch.no_grad():
        dense, before, after = model(probe), plain(probe), refit(probe)
    assert not torch.allclose(before, dense, atol=1e-2)
    assert torch.allclose(after, dense, atol=2e-3)  # up to the small ridge term


def test_reconstruction_needs_calibration_inputs() -> None:
    model = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="reconstruct=True needs calibration"):
        prune(model, torch.randn(1, 4), method="channel", sparsity=0.5, reconstruct=True)


def test_reconstruction_lifts_a_pruned_cnn_before_any_fine_tune(digits: Workload) -> None:
    batch = next(iter(digits.calibration))
    options = {"method": "channel", "sparsity": 0.5, "criterion": "l2", "global_pruning": True, "calibration": batch}
    plain = prune(digits.model, digits.example_inputs, **options)
    refit = prune(digits.model, digits.example_inputs, **options, reconstruct=True)
    assert [p.shape for p in refit.parameters()] == [p.shape for p in plain.parameters()]
    assert evaluate(refit, digits.val) > evaluate(plain, digits.val) + 0.1
