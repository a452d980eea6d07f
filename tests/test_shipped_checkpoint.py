"""The default workload's dense model ships with the package: used only where its checksum matches, so a first run
searches at once, and trained as before where it does not (or where the user asks)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.workloads import cache
from search.workloads.models import resnet20

KEY = "fashion-resnet20-seed0"


def refuse_training(_model: torch.nn.Module) -> dict:
    raise AssertionError("trained although a usable checkpoint was there")


def test_the_shipped_checkpoint_loads_safely_with_its_accuracy(tmp_path: Path) -> None:
    model = resnet20()
    metrics = cache.cached_dense(model, KEY, tmp_path, refuse_training)  # an empty cache: the shipped file is used
    assert metrics["accuracy"] == pytest.approx(0.9274) and metrics["test_accuracy"] == pytest.approx(0.9239)
    saved = torch.load(cache.SHIPPED_DIR / f"{KEY}.pt", weights_only=True)
    assert torch.equal(model.state_dict()["fc.weight"], saved["state_dict"]["fc.weight"])


def test_a_tampered_or_declined_checkpoint_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = tmp_path / "shipped"
    tampered.mkdir()
    data = bytearray((cache.SHIPPED_DIR / f"{KEY}.pt").read_bytes())
    data[-100] ^= 0xFF
    (tampered / f"{KEY}.pt").write_bytes(bytes(data))
    monkeypatch.setattr(cache, "SHIPPED_DIR", tampered)
    assert cache.shipped_checkpoint(KEY) is None
    monkeypatch.setattr(cache, "SHIPPED_DIR", Path(cache.__file__).parent / "checkpoints")
    assert cache.shipped_checkpoint(KEY) is not None
    monkeypatch.setenv("PRUNE_SEARCH_NO_SHIPPED", "1")
    assert cache.shipped_checkpoint(KEY) is None
    assert cache.shipped_checkpoint("fashion-resnet20-seed1") is None  # another seed trains as before
