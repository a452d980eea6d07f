"""Channel pruning across torchvision's classification models, against the table in pruners/COVERAGE.md.

Models under FAST_PARAMS parameters always run; the whole list runs only with PRUNE_SLOW=1.
Every model listed in COVERAGE.md is expected to fail (strict xfail, with its reason); all others pass.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from pruners import prune

COVERAGE = Path(__file__).resolve().parents[1] / "pruners" / "COVERAGE.md"
FAST_PARAMS = 3_000_000
SIZES = (64, 96, 224, 299)


def expected_failures() -> dict[str, str]:
    """model -> reason, from the table under '## Expected failures' in COVERAGE.md."""
    section = COVERAGE.read_text().split("## Expected failures", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`?([\w.]+)`?\s*\|\s*(.+?)\s*\|\s*$", section, flags=re.M)
    return {model: reason for model, reason in rows if model != "model"}


def num_params(name: str) -> int:
    """Parameter count from torchvision's weights metadata (no download)."""
    return next(iter(get_model_weights(name))).meta["num_params"]


def cases() -> list:
    failing = expected_failures()
    params = []
    for name in torchvision.models.list_models(module=torchvision.models):
        marks = []
        if num_params(name) >= FAST_PARAMS:
            marks.append(pytest.mark.slow(reason="the whole list"))
        if name in failing:
            marks.append(pytest.mark.xfail(reason=failing[name], strict=True))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def smallest_input(model: nn.Module) -> torch.Tensor:
    """The smallest square input among SIZES that the dense model accepts (ViT needs 224, Inception 75+)."""
    for size in SIZES:
        x = torch.randn(1, 3, size, size)
        try:
            with torch.no_grad():
                model(x)
            return x
        except (RuntimeError, ValueError, AssertionError):
            continue
    raise AssertionError(f"no input size in {SIZES} works")


def test_coverage_table_names_real_models() -> None:
    listed = set(torchvision.models.list_models(module=torchvision.models))
    assert set(expected_failures()) <= listed


@pytest.mark.parametrize("name", cases())
def test_channel_prunes_torchvision_model(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = smallest_input(model)
    with torch.no_grad():
        expected = model(x).shape
    pruned = prune(model, x, "channel", 0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    buffer = io.BytesIO()
    torch.save(pruned, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert loaded(x).shape == expected
