"""The space: one knob per coupled channel group, budget-aware levels, JSON policies that prune() accepts."""
from __future__ import annotations

import json

import optuna
import pytest
import torch

from pruners import needs_calibration, prune
from search.baselines import baseline_points
from search.measure import count_flops, layer_flops
from search.workloads.models import resnet20
from spaces import Policy, SearchSpace


@pytest.fixture(scope="module")
def resnet_space() -> tuple[torch.nn.Module, torch.Tensor, SearchSpace]:
    model, x = resnet20().eval(), torch.randn(1, 1, 28, 28)
    space = SearchSpace.build(model, x, layer_flops(model, x), count_flops(model, x),
                              ("magnitude", "global_magnitude", "channel", "layer", "nm"), 0.5, 0.01)
    return model, x, space


def test_coupled_residual_layers_share_one_knob(resnet_space) -> None:
    _, _, space = resnet_space
    owners = {layer: g.name for g in space.groups for layer in g.out_layers}
    # In a ResNet stage every block's second conv adds into the same residual stream: one group.
    assert owners["layer1.0.conv2"] == owners["layer1.1.conv2"] == owners["layer1.2.conv2"] == owners["conv1"]
    assert owners["layer2.0.conv2"] == owners["layer2.0.downsample.0"] == owners["layer2.2.conv2"]
    assert owners["layer1.0.conv1"] != owners["layer1.1.conv1"]
    assert "fc" not in owners  # the output layer is never pruned
    assert len(space.groups) == 12  # 9 inner convs + 3 residual streams


@pytest.mark.parametrize("method", ["magnitude", "channel"])
def test_initial_level_predicts_the_measured_ratio(resnet_space, method: str) -> None:
    model, x, space = resnet_space
    params = {"method": method, "lr_scale": 1.0, "target": 0.4, "criterion": "l1", "round_to": 1,
              "ranking": "per_group",
              **{f"a:{g.name}": 0.3 + 0.05 * i for i, g in enumerate(space.groups)}}
    level = space.initial_level(params, 0.4)
    assert space.predicted_ratio(params, level) == pytest.approx(0.4, abs=0.01)
    pruned = prune(model, x, **space.policy(params, level).prune_kwargs())
    measured = count_flops(pruned, x) / count_flops(model, x)
    assert measured == pytest.approx(0.4, abs=0.04)


def test_sampled_policies_round_trip_json_and_prune(resnet_space) -> None:
    model, x, space = resnet_space
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    methods = set()
    for _ in range(12):
        trial = study.ask()
        params = space.suggest(trial)
        methods.add(params["method"])
        if params["method"] != "nm":
            assert space.target_range()[0] <= params["target"] <= 0.5
        policy = space.policy(params, 0.3)
        again = Policy.from_json(json.loads(json.dumps(policy.to_json())))
        assert again == policy
        needs_data = needs_calibration(again.method, again.criterion, again.options)
        calibration = {"calibration": (x.repeat(4, 1, 1, 1), torch.arange(4))} if needs_data else {}
        assert prune(model, x, **again.prune_kwargs(), **calibration)(x).shape == (1, 10)
        study.tell(trial, [0.5, 0.0])
    assert len(methods) >= 3


def test_nm_patterns_fit_the_budget(resnet_space) -> None:
    _, _, space = resnet_space
    assert "2:4" not in space.nm_patterns()  # 2:4 keeps half the conv FLOPs plus the unpruned rest: over 0.5
    assert "1:4" in space.nm_patterns()


def test_space_definition_is_json(resnet_space) -> None:
    described = json.loads(json.dumps(resnet_space[2].describe()))
    assert described["methods"] == ["magnitude", "global_magnitude", "channel", "layer", "nm"]
    assert len(described["groups"]) == 12


def test_uniform_magnitude_is_a_baseline_only_when_masked_methods_are_searched(resnet_space) -> None:
    model, x, space = resnet_space
    assert "uniform_magnitude" in baseline_points(space)
    structured = SearchSpace.build(model, x, layer_flops(model, x), count_flops(model, x), ("channel", "layer"), 0.5,
                                   0.01)
    assert set(baseline_points(structured)) == {"uniform_l1", "tp_global"}


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_depth_removes_blocks_without_overshooting_the_target(resnet_space, target: float) -> None:
    model, x, space = resnet_space
    assert space.blocks == 7  # ResNet-20: the blocks that keep their input's shape
    counts = [space.removed_blocks({"method": "channel", "depth": d, "target": target}) for d in (0.0, 0.5, 0.999)]
    assert counts[0] == 0 and counts == sorted(counts) and counts[-1] >= 1
    deepest = prune(model, x, method="channel", sparsity=0.0, blocks=counts[-1])
    assert count_flops(deepest, x) / count_flops(model, x) >= target - space.block_share / 2 - 0.01


@pytest.mark.parametrize("target", [0.24, 0.5])
def test_a_fitted_point_lands_within_one_percent_under_its_target(resnet_space, target: float) -> None:
    """At a budget of 0.25 an absolute slack of 0.02 left this point at 0.221: 8% of the FLOPs unused; 3% left the
    benchmark's pick at 0.5 at 0.471 against Torch-Pruning's 0.498."""
    from search.fit import fit_to_target
    model, x, space = resnet_space
    dense = count_flops(model, x)
    params = {"method": "channel", "lr_scale": 1.0, "target": target, "criterion": "l2", "round_to": 1,
              "ranking": "per_group", "allocation": "shaped", "stream_share": 0.743, "depth_tilt": 0.46, "depth": 0.3}
    fitted = fit_to_target(model, x, space, params, target, lambda m: count_flops(m, x) / dense)
    assert target * 0.99 <= fitted.ratio <= target


def test_distillation_temperature_is_searched_only_where_distillation_is_on(resnet_space) -> None:
    from spaces.space import DISTILL_TEMPERATURE
    _, _, space = resnet_space
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        params = space.suggest(study.ask())
        policy = space.policy(params, 0.3)
        assert ("temperature" in params) == (params["distill"] > 0)
        assert policy.distill_temperature in DISTILL_TEMPERATURE
        if params["distill"] > 0:
            seen.add(policy.distill_temperature)
    assert len(seen) >= 2  # the temperature really varies


def test_a_dynamic_point_that_thins_no_channels_only_removes_blocks() -> None:
    """`thin` False: the backbone keeps every width and loses the blocks its share of the cut allows; its exits make
    the rest (search.dynamic), so the fit takes that backbone as it is, whatever its ratio."""
    from search.fit import fit_to_target
    model, x = resnet20().eval(), torch.randn(1, 1, 28, 28)
    dense = count_flops(model, x)
    space = SearchSpace.build(model, x, layer_flops(model, x), dense, ("dynamic",), 0.5, 0.01)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = [space.suggest(study.ask()) for _ in range(20)]
    assert {p["thin"] for p in points} == {True, False}
    whole = [p for p in points if not p["thin"]]
    assert all("criterion" not in p and "allocation" not in p and "depth" not in p for p in whole)
    params = {"method": "dynamic", "lr_scale": 1.0, "distill": 0.0, "target": 0.5, "thin": False, "exits": 2,
              "exit_share": 0.5}
    blocks = space.removed_blocks(params)
    assert blocks == round((1 - 0.5 ** 0.5) / space.block_share) >= 1
    fitted = fit_to_target(model, x, space, params, space.backbone_target(params, 0.5),
                           lambda m: count_flops(m, x) / dense)
    assert fitted.policy.sparsity == 0.0 and fitted.policy.options["blocks"] == blocks
    widths = {n: m.out_channels for n, m in fitted.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths and all(widths[n] == m.out_channels for n, m in model.named_modules() if n in widths)
    assert fitted.ratio == pytest.approx(1 - blocks * space.block_share, abs=0.02)
