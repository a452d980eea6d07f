"""The sensitivity map (measured once per run, reused on resume, steering the `sensitivity` allocation) and successive
halving before the final stage, on digits-cnn."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from pruners import prune, removable_blocks
from reports import load_records
from reports.content import _sensitivity_section
from reports.records import SENSITIVITY_ATTR, RunInfo
from search import sensitivity
from search.config import parse_config
from search.data import TensorLoader
from search.measure import count_flops, layer_flops
from search.pipeline import prepare, run_backend
from search.promotion import PROMOTION_ATTR, successive_halving
from search.recover import SCREEN_SAMPLES
from search.study import storage_url
from search.training import count_correct, leading_batches, recalibrate_batchnorm, train
from search.workloads import Workload
from search.workloads.digits import load_digits_tensors
from search.workloads.models import resnet20
from spaces import SearchSpace

QUICK = ["--workload", "digits-cnn", "--budget", "0.5", "--threads", "1", "--finetune-epochs", "0.3",
         "--final-epochs", "0"]


def test_the_map_is_measured_once_and_reused_on_resume(digits: Workload, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config([*QUICK, "--trials", "1", "--out", str(tmp_path / "run")])
    study, ctx = prepare(config, digits)
    stored = study.user_attrs[SENSITIVITY_ATTR]
    groups = {g.name for g in ctx.space.groups}
    assert set(stored["accuracy"]) == groups and set(ctx.space.sensitivity) == groups
    for group in groups:  # pruning a group harder saves more and never costs less accuracy than nothing
        assert stored["saved"][group] == sorted(stored["saved"][group]) and stored["saved"][group][0] > 0
        assert all(0 <= a <= 1 for a in stored["accuracy"][group])
    assert "sensitivity" in ctx.space.allocations()

    def measured_again(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a resume measured the sensitivity map again")
    monkeypatch.setattr(sensitivity, "measure_sensitivity", measured_again)
    run_backend(study, ctx)
    _, resumed = prepare(config, digits)
    assert resumed.space.sensitivity == ctx.space.sensitivity


def test_under_latency_a_group_saves_what_the_target_table_predicts(digits: Workload, tmp_path: Path) -> None:
    """--cost latency: the map counts what pruning a group saves in predicted time, not in FLOPs (a group cheap in
    FLOPs can be dear in time), as the run fits its points."""
    config = parse_config([*QUICK, "--cost", "latency", "--batch-size", "64", "--trials", "1",
                           "--out", str(tmp_path / "run")])  # at batch 64, pruning digits-cnn really saves time
    study, ctx = prepare(config, digits)
    assert ctx.latency_table is not None
    stored = study.user_attrs[SENSITIVITY_ATTR]
    assert stored["cost"] == "latency"
    method, criterion = stored["method"], stored["criterion"]
    for group in ctx.space.groups:
        for ratio, saved in zip(stored["ratios"], stored["saved"][group.name]):
            model = prune(digits.model, digits.example_inputs, method=method, criterion=criterion,
                          sparsity={layer: ratio for layer in group.out_layers})
            assert saved == pytest.approx(1.0 - ctx.latency_table.predict_model_ratio(model))
    flops = sensitivity.measure_sensitivity(digits, ctx.space)
    assert flops.cost == "flops" and flops.saved != stored["saved"]


def test_the_sensitivity_allocation_prunes_efficient_groups_harder(digits: Workload, tmp_path: Path) -> None:
    _, ctx = prepare(parse_config([*QUICK, "--trials", "1", "--out", str(tmp_path / "run")]), digits)
    efficiency = ctx.space.sensitivity
    point = {"method": "channel", "allocation": "sensitivity", "target": 0.5}
    ratios = ctx.space.group_ratios({**point, "sensitivity_power": 1.0}, 0.6)
    ranked = sorted(efficiency, key=efficiency.__getitem__)
    assert [ratios[g] for g in ranked] == sorted(ratios[g] for g in ranked)
    assert ratios[ranked[-1]] == pytest.approx(0.6)
    flat = ctx.space.group_ratios({**point, "sensitivity_power": 0.0}, 0.6)
    assert set(flat.values()) == {0.6}  # power 0: uniform
    without = replace(ctx.space, sensitivity=None)
    assert "sensitivity" not in without.allocations()


def test_successive_halving_promotes_the_better_half_and_resumes(digits: Workload, tmp_path: Path) -> None:
    config = parse_config([*QUICK, "--trials", "6", "--out", str(tmp_path / "run")])
    study, ctx = prepare(config, digits)
    run_backend(study, ctx)
    trials = load_records(storage_url(ctx.run_dir), final=False).trials
    winner = successive_halving(study, ctx, trials, 4, 0.25, last_epochs=0.75)
    rungs = study.user_attrs[PROMOTION_ATTR]
    assert len(rungs) == 4 and all(list(r)[0] == "0.25" for r in rungs.values())
    finalists = {int(n): r["0.75"] for n, r in rungs.items() if "0.75" in r}  # the last rung at the final length
    assert len(finalists) == 2 and not any("0.5" in r for r in rungs.values())
    assert finalists[winner.number] == max(finalists.values())
    assert winner.cost_ratio <= config.budget + 1e-9
    assert successive_halving(study, ctx, trials, 4, 0.25, last_epochs=0.75).number == winner.number
    assert study.user_attrs[PROMOTION_ATTR] == rungs  # a rerun fine-tunes nothing again


def test_no_sensitivity_skips_the_map_and_its_allocation(digits: Workload, tmp_path: Path) -> None:
    config = parse_config([*QUICK, "--trials", "1", "--no-sensitivity", "--out", str(tmp_path / "run")])
    study, ctx = prepare(config, digits)
    assert SENSITIVITY_ATTR not in study.user_attrs and "sensitivity" not in ctx.space.allocations()


@pytest.fixture(scope="module")
def digits_resnet() -> Workload:
    """ResNet-20 trained briefly on the digits: a small network with removable residual blocks."""
    splits = load_digits_tensors(seed=0)
    train_loader = TensorLoader(*splits["train"], 64, shuffle=True, seed=0)
    torch.manual_seed(0)
    model = resnet20()
    train(model, train_loader, epochs=4, lr=0.05, device="cpu")
    return Workload("digits-resnet20", model.eval(), train_loader, TensorLoader(*splits["val"], 300),
                    TensorLoader(*splits["test"], 400), example_inputs=splits["val"][0][:1].clone(),
                    calibration=train_loader.subset(512), finetune_lr=0.02)


def test_blocks_are_removed_in_the_maps_order_most_saved_per_accuracy_lost_first(digits_resnet: Workload) -> None:
    """Each removable block is removed alone and screened after recalibration; a point that removes k blocks removes
    the map's first k, whichever blocks weight magnitude would have ranked first."""
    model, inputs = digits_resnet.model, digits_resnet.example_inputs
    space = SearchSpace.build(model, inputs, layer_flops(model, inputs), count_flops(model, inputs), ("channel",),
                              0.5, 0.02)
    found = sensitivity.measure_sensitivity(digits_resnet, space)
    blocks = removable_blocks(model, inputs)
    assert set(found.block_accuracy) == set(blocks) == set(found.block_saved) and space.blocks == len(blocks)
    head, _ = leading_batches(digits_resnet.val, SCREEN_SAMPLES)
    block = blocks[-1]
    alone = prune(model, inputs, method="layer", sparsity=0.0, blocks=1,
                  block_order=[block, *(b for b in blocks if b != block)])
    assert found.block_saved[block] == pytest.approx(1 - count_flops(alone, inputs) / count_flops(model, inputs))
    recalibrate_batchnorm(alone, digits_resnet.calibration)
    kept, total = count_correct(alone, head, "cpu")
    assert found.block_accuracy[block] == pytest.approx(kept / total)
    order = found.block_order()
    efficiency = [found.block_saved[b] / (max(found.dense_accuracy - found.block_accuracy[b], 0) +
                                          sensitivity.LOSS_FLOOR) for b in order]
    assert efficiency == sorted(efficiency, reverse=True)
    ordered = replace(space, block_order=tuple(order))
    point = {"method": "channel", "allocation": "shaped", "stream_share": 1.0, "depth_tilt": 0.0, "target": 0.5,
             "depth": 1.0}
    policy = ordered.policy(point, 0.1)
    count = policy.options["blocks"]
    assert count >= 1 and policy.options["block_order"] == order
    pruned = prune(model, inputs, **policy.prune_kwargs())
    identities = {name for name, m in pruned.named_modules() if isinstance(m, nn.Identity) and name in blocks}
    assert identities == set(order[:count])
    assert "block_order" not in space.policy(point, 0.1).options  # no map: the pruner's l1 ranking
    info = RunInfo("digits-resnet20", "flops", 0.5, 0.01, list(inputs.shape), {}, {}, {}, ordered.describe(),
                   sensitivity=found.to_json())
    said = _sensitivity_section(info).paragraphs[-1]
    assert "removes the first k in this order" in said
    assert [said.index(f"{b} (") for b in order] == sorted(said.index(f"{b} (") for b in order)
