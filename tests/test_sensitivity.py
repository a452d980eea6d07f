"""The sensitivity map (measured once per run, reused on resume, steering the `sensitivity` allocation) and successive
halving before the final stage, on digits-cnn."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pruners import prune
from reports import load_records
from reports.records import SENSITIVITY_ATTR
from search import sensitivity
from search.config import parse_config
from search.pipeline import prepare, run_backend
from search.promotion import PROMOTION_ATTR, successive_halving
from search.study import storage_url
from search.workloads import Workload

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
