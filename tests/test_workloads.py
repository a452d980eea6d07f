"""Workloads: data splits, the dense cache, user workloads by module:function, and the shared training loops."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from search.data import TensorLoader, flip_and_shift, split_train_val
from search.recover import recover
from search.training import evaluate, recalibrate_batchnorm
from search.workloads import Workload, WorkloadError, build_workload
from search.workloads.base import check_workload
from search.workloads.fashion import DEBIAN_DIR, load_fashion_mnist


def test_digits_splits_are_disjoint_and_dense_model_is_cached(digits: Workload, cache_dir: Path) -> None:
    sizes = [sum(len(y) for _, y in loader) for loader in (digits.train, digits.val, digits.test)]
    assert sizes == [1097, 300, 400]
    assert digits.notes["dense_metrics"]["accuracy"] >= 0.95
    assert evaluate(digits.model, digits.val) == pytest.approx(digits.notes["dense_metrics"]["accuracy"])
    again = build_workload("digits-cnn", seed=0, cache_dir=cache_dir, data_dir=None, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(digits.model.state_dict().values(), again.model.state_dict().values()))


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist (make test does it)")
def test_fashion_mnist_reads_the_debian_package(tmp_path: Path) -> None:
    splits = load_fashion_mnist(None, tmp_path)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    assert len(test_y) == 10000
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert sorted(train_y.unique().tolist()) == list(range(10))
    assert abs(train_x.mean().item()) < 0.05 and abs(train_x.std().item() - 1) < 0.05  # normalised
    (tx, _), (vx, _) = split_train_val(train_x, train_y, 5000, seed=0)
    assert (len(tx), len(vx)) == (55000, 5000)


def test_data_dir_without_the_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="no Fashion-MNIST idx files"):
        load_fashion_mnist(tmp_path, tmp_path)


def test_user_workload_by_module_function(digits: Workload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_workload.py").write_text(
        "from search.workloads import build_workload\n"
        "from pathlib import Path\n"
        f"def build():\n    return build_workload('digits-cnn', seed=0, cache_dir=Path({str(tmp_path)!r}), "
        "data_dir=None, device='cpu')\n"
        "def wrong():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    workload = build_workload("my_workload:build", seed=0, cache_dir=tmp_path, data_dir=None, device="cpu")
    assert isinstance(workload, Workload) and workload.name == "digits-cnn"
    with pytest.raises(WorkloadError, match="returned int"):
        build_workload("my_workload:wrong", seed=0, cache_dir=tmp_path, data_dir=None, device="cpu")


def test_flip_and_shift_keeps_shape_and_moves_pixels() -> None:
    batch = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    augmented = flip_and_shift(2)(batch, torch.Generator().manual_seed(3))
    assert augmented.shape == batch.shape and not torch.equal(augmented, batch)
    assert set(augmented.unique().tolist()) <= set(batch.unique().tolist()) | {0.0}


def test_tensor_loader_reshuffles_but_covers_every_sample() -> None:
    loader = TensorLoader(torch.arange(10).float()[:, None], torch.arange(10), batch_size=4, shuffle=True)
    first, second = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10)) and not torch.equal(first, second)


def test_recalibrate_batchnorm_resets_statistics_without_touching_weights(digits: Workload) -> None:
    model = copy.deepcopy(digits.model)
    norm = model[1]
    norm.running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    recalibrate_batchnorm(model, digits.calibration)
    assert norm.running_mean.abs().max() < 5.0 and not model.training
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    assert evaluate(model, digits.val) >= digits.notes["dense_metrics"]["accuracy"] - 0.02


@pytest.mark.parametrize("cycle", [True, False])
def test_recovery_cycles_momentum_or_holds_it_as_the_workload_says(digits: Workload, cycle: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """fashion-resnet20 recovers with momentum held at 0.9 (0.36 point more at 0.25 of the FLOPs after 1 epoch);
    digits-cnn keeps torch's one-cycle default, momentum cycled 0.95 -> 0.85 -> 0.95 against the learning rate."""
    seen: list[float] = []
    step = torch.optim.SGD.step

    def recording(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["momentum"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    workload = dataclasses.replace(digits, finetune_cycle_momentum=cycle)
    recover(copy.deepcopy(digits.model), workload, epochs=0.5, lr=0.05)
    if cycle:
        assert min(seen) == pytest.approx(0.85, abs=0.01) and max(seen) == pytest.approx(0.95, abs=0.01)
    else:
        assert set(seen) == {0.9}


def test_a_workload_whose_momentum_setting_is_not_a_bool_is_refused(digits: Workload) -> None:
    with pytest.raises(WorkloadError, match="finetune_cycle_momentum 'no' must be True or False"):
        check_workload("mine", dataclasses.replace(digits, finetune_cycle_momentum="no"))
