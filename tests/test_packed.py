"""Masked weights packed as nonzeros + bitmask, and per-layer profiles, on ResNet-20 (the default workload's net)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruners import bake, prune
from search.measure import compressed_size_bytes, count_params, layer_profile
from search.model_files import READABLE_FORMATS, load_pruned, rebuild, save_pruned, weights_of
from search.packed import pack_state, unpack_state
from search.workloads.models import resnet20
from tests.conftest import ROOT  # noqa: F401 - the repository on sys.path

INPUTS = torch.randn(2, 1, 28, 28)


@pytest.fixture(scope="module")
def masked() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    dense = resnet20().eval()
    return dense, bake(prune(dense, INPUTS[:1], method="global_magnitude", sparsity=0.75)).eval()


def test_a_masked_model_ships_at_its_nonzero_share(masked: tuple, tmp_path: Path) -> None:
    """The packed size ratio is within 0.1 of the nonzero-parameter ratio (saved dense, it would be 1.0), and the
    weights file, packed, reloads the same model."""
    dense, pruned = masked
    nonzero_ratio = count_params(pruned, nonzero_only=True) / count_params(dense)
    packed_ratio = compressed_size_bytes(pruned) / compressed_size_bytes(dense)
    assert nonzero_ratio < 0.35 and abs(packed_ratio - nonzero_ratio) <= 0.1
    save_pruned(pruned, tmp_path / "model.pt")
    assert (tmp_path / "model.weights.pt").stat().st_size < 0.4 * (tmp_path / "model.pt").stat().st_size
    loaded = load_pruned(tmp_path, "model.pt", dense)
    with torch.no_grad():
        assert torch.equal(loaded(INPUTS), pruned(INPUTS))


def test_packing_round_trips_every_tensor_and_reads_the_old_format(masked: tuple) -> None:
    _, pruned = masked
    state = pruned.state_dict()
    unpacked = unpack_state(pack_state(state))
    assert list(unpacked) == list(state)
    assert all(torch.equal(unpacked[k], v) and unpacked[k].dtype == v.dtype for k, v in state.items())
    old = {**weights_of(pruned), "format": READABLE_FORMATS[0], "state_dict": state}  # a file from before packing
    assert torch.equal(rebuild(resnet20(), old)(INPUTS), pruned(INPUTS))


def test_layer_profile_measures_removed_blocks_thinned_channels_and_masks(masked: tuple) -> None:
    dense, pruned = masked
    thinned = bake(prune(dense, INPUTS[:1], method="channel", sparsity=0.5, blocks=2)).eval()
    rows = layer_profile(thinned, dense)
    assert [row[0] for row in rows] == [n for n, m in dense.named_modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                           torch.nn.Linear))]
    modules = dict(thinned.named_modules())
    removed = [row for row in rows if not isinstance(modules.get(row[0]), (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(removed) == 4 and all(row[1] == row[3] == 0 for row in removed)  # two blocks, two convs each
    assert any(0 < kept < units for _, kept, units, _, _ in rows)
    masked_rows = layer_profile(pruned, dense)
    assert all(kept == units for _, kept, units, _, _ in masked_rows)
    weighted = [m for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [row[3] for row in masked_rows] == [int(torch.count_nonzero(m.weight)) for m in weighted]
    assert sum(row[3] for row in masked_rows) < 0.3 * sum(row[4] for row in masked_rows)
