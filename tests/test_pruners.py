"""Behaviour of pruners on real small models: masks, channels, blocks, groups, and argument checks."""
from __future__ import annotations

import io
import logging

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torch.nn.utils import prune as torch_prune

from pruners import (
    PrunableGroup,
    available_methods,
    bake,
    criteria_for,
    default_methods,
    faster_methods,
    get_method,
    output_layers,
    prunable_groups,
    prune,
)
from pruners.graph import IndexExplosion, bound_index_mappings, forward
from pruners.groups import groups_of

X = torch.randn(4, 3, 32, 32)


class Block(nn.Module):
    """A CIFAR-style basic block: conv-bn-relu-conv-bn plus the input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    """Stem, three residual blocks, pooled linear classifier."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(width) for _ in range(3)])
        self.head = nn.Sequential(nn.Conv2d(width, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet().eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).float().mean())


def roundtrip(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def sgd_steps(model: nn.Module, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), torch.arange(4)).backward()
        opt.step()
    model.eval()


def test_registry_lists_methods_and_criteria() -> None:
    assert set(available_methods()) == {"magnitude", "global_magnitude", "channel", "layer", "nm", "dynamic"}
    assert set(criteria_for("channel")) == {"l1", "l2", "bn_scale", "taylor", "activation", "fpgm", "random"}


def test_dynamic_prunes_its_backbone_like_channel_and_stays_opt_in() -> None:
    """Its static part is channel pruning (the exits come after recovery, in search.dynamic); sparsity 0 keeps the
    backbone whole, for dynamic pruning alone."""
    assert get_method("dynamic").dynamic and "dynamic" not in faster_methods()
    assert set(get_method("dynamic").options) >= set(get_method("channel").options) | {"exits", "exit_target"}
    torch.manual_seed(0)
    model = tiny().eval()
    as_channel = prune(model, X, "channel", 0.5, "l1")
    as_dynamic = prune(model, X, "dynamic", 0.5, "l1", exits=2, exit_target=0.4)
    assert torch.equal(as_dynamic(X), as_channel(X))
    whole = prune(model, X, "dynamic", 0.0, "l1", exits=1)
    assert sum(p.numel() for p in whole.parameters()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="exits=0"):
        prune(model, X, "dynamic", 0.5, "l1", exits=0)


def test_output_layers_found_from_graph() -> None:
    assert output_layers(tiny(), X) == ["fc"]
    squeeze = torchvision.models.squeezenet1_1(weights=None)
    assert output_layers(squeeze, torch.randn(1, 3, 64, 64)) == ["classifier.1"]


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_magnitude_zeroes_the_fraction_in_each_layer(ratio: float) -> None:
    pruned = prune(tiny(), X, "magnitude", ratio)
    for name, m in pruned.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name != "fc":
            assert abs(zero_fraction(m.weight) - ratio) < 0.01, name
    assert zero_fraction(pruned.fc.weight) == 0.0


def test_magnitude_dict_is_per_layer() -> None:
    pruned = prune(tiny(), X, "magnitude", {"blocks.0.conv1": 0.5})
    assert abs(zero_fraction(pruned.blocks[0].conv1.weight) - 0.5) < 0.01
    assert zero_fraction(pruned.blocks[1].conv1.weight) == 0.0


def test_global_magnitude_hits_overall_sparsity_and_caps_layers() -> None:
    pruned = prune(tiny(), X, "global_magnitude", 0.6, max_layer_sparsity=0.8)
    layers = [m for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "fc"]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert abs(zeros / total - 0.6) < 0.01
    assert all(zero_fraction(m.weight) <= 0.8 + 1e-6 for m in layers)


def test_nm_keeps_at_most_n_of_every_m() -> None:
    pruned = prune(tiny(), X, "nm", 0.5, n=2, m=4)
    weight = pruned.blocks[0].conv1.weight
    groups = weight.movedim(1, -1).reshape(-1, 4)
    assert int((groups != 0).sum(1).max()) <= 2
    assert abs(zero_fraction(weight) - 0.5) < 1e-6
    assert zero_fraction(pruned.stem[0].weight) == 0.0  # 3 input channels: not a multiple of 4, skipped


@pytest.mark.parametrize("method", ["magnitude", "global_magnitude", "nm"])
def test_masks_survive_training_and_bake_to_plain_weights(method: str) -> None:
    pruned = prune(tiny(), X, method, 0.5)
    before = {n: m.weight == 0 for n, m in pruned.named_modules()
              if torch_prune.is_pruned(m) and hasattr(m, "weight_mask")}
    assert before
    sgd_steps(pruned)
    modules = dict(pruned.named_modules())
    for name, was_zero in before.items():
        assert bool((modules[name].weight[was_zero] == 0).all()), name
    expected = pruned(X)
    baked = bake(pruned)
    assert baked is pruned
    for name in before:
        m = modules[name]
        assert isinstance(m.weight, nn.Parameter) and not hasattr(m, "weight_mask") and not m._forward_pre_hooks
        assert bool((m.weight[before[name]] == 0).all())
    loaded = roundtrip(baked)
    torch.testing.assert_close(loaded(X), expected)


def test_bake_passes_unmasked_model_through() -> None:
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert bake(model) is model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("method", ["magnitude", "global_magnitude", "channel", "layer", "nm"])
def test_sparsity_zero_keeps_outputs_and_input_model_untouched(method: str) -> None:
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(X)
    pruned = prune(model, X, method, 0.0)
    assert pruned is not model
    torch.testing.assert_close(pruned(X), expected)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not model.training


@pytest.mark.parametrize("method", ["magnitude", "global_magnitude", "channel", "layer", "nm"])
def test_pruning_leaves_input_model_untouched(method: str) -> None:
    model = tiny().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, X, method, 0.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert model.training and pruned.training
    assert not any(torch_prune.is_pruned(m) for m in model.modules())


def kill_channels(model: nn.Module, groups: list[PrunableGroup], fraction: float) -> None:
    """Zero the weights into and out of as many channels as torch-pruning removes per group: dead channels."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for group in groups:
            dead = slice(0, group.channels - int(group.channels * (1 - fraction)))
            for name in group.out_layers:
                modules[name].weight[dead] = 0
            for name in group.in_layers:
                modules[name].weight[:, dead] = 0


def test_channel_index_bookkeeping_across_residuals() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    kill_channels(model, prunable_groups(model, X), 0.05)
    expected = model(X)
    pruned = prune(model, X, "channel", 0.05)
    assert params(pruned) < params(model)
    assert pruned.conv1.out_channels == 60
    torch.testing.assert_close(pruned(X), expected, atol=1e-4, rtol=1e-4)


def test_channel_half_fewer_params_same_output_shape(resnet18: nn.Module) -> None:
    pruned = prune(resnet18, X, "channel", 0.5)
    assert params(pruned) < 0.4 * params(resnet18)
    assert pruned(X).shape == resnet18(X).shape
    assert pruned.fc.out_features == 1000
    assert roundtrip(pruned)(X).shape == (4, 1000)


def test_channel_round_to_gives_multiples(resnet18: nn.Module) -> None:
    pruned = prune(resnet18, X, "channel", 0.3, round_to=8)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths


@pytest.mark.parametrize("round_to", [8, 16])
def test_channel_round_to_prunes_more_as_sparsity_rises(round_to: int) -> None:
    """Torch-Pruning leaves a group whole when rounding its kept width reaches zero; the pruner caps the ratio
    so at least round_to channels stay, and more sparsity never means fewer channels removed."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    widths = [params(prune(model, X, "channel", s, round_to=round_to)) for s in (0.5, 0.9, 0.99)]
    assert widths[0] > widths[1] >= widths[2]
    smallest = prune(model, X, "channel", 0.99, round_to=round_to)
    assert min(m.out_channels for m in smallest.modules() if isinstance(m, nn.Conv2d)) == round_to


def test_channel_global_pruning_l2(resnet18: nn.Module) -> None:
    pruned = prune(resnet18, X, "channel", 0.5, criterion="l2", global_pruning=True)
    assert params(pruned) < params(resnet18)
    assert pruned(X).shape == (4, 1000)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor", "activation", "fpgm", "random"])
def test_channel_every_criterion_runs(criterion: str) -> None:
    model = tiny()
    calibration = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    pruned = prune(model, X, "channel", 0.5, criterion=criterion, calibration=calibration)
    assert params(pruned) < params(model)
    assert pruned(X).shape == (4, 10)
    assert all(p.grad is None for p in pruned.parameters())
    assert not any("_importance" in m.__dict__ for m in pruned.modules())
    roundtrip(pruned)


def test_channel_dict_sets_group_ratio_from_any_member() -> None:
    model = tiny()
    groups = {g.name: g for g in prunable_groups(model, X)}
    residual = next(g for g in groups.values() if "blocks.0.conv2" in g.out_layers)
    pruned = prune(model, X, "channel", {"blocks.1.conv2": 0.5, "blocks.0.conv2": 0.25, "blocks.2.conv1": 0.5})
    assert residual.channels == 16
    assert pruned.stem[0].out_channels == 8
    assert pruned.blocks[2].conv1.out_channels == 8
    assert pruned.blocks[0].conv1.out_channels == 16


def test_prunable_groups_couple_residual_stage(resnet18: nn.Module) -> None:
    groups = prunable_groups(resnet18, X)
    stage1 = next(g for g in groups if "conv1" in g.out_layers)
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stage1.out_layers)
    assert {"layer1.0.conv1", "layer1.1.conv1"} <= set(stage1.in_layers)
    assert stage1.channels == 64
    assert not any("fc" in g.out_layers for g in groups)
    inner = next(g for g in groups if g.out_layers == ("layer1.0.conv1",))
    assert inner.in_layers == ("layer1.0.conv2",)


def test_group_knobs_expanded_to_a_channel_dict(resnet18: nn.Module) -> None:
    groups = prunable_groups(resnet18, X)
    pruned = prune(resnet18, X, "channel", {layer: 0.25 for g in groups for layer in g.out_layers})
    modules = dict(pruned.named_modules())
    for g in groups:
        assert modules[g.name].out_channels == int(g.channels * 0.75), g.name


def test_channel_prunes_parts_of_a_model_torch_pruning_cannot_trace_whole(caplog: pytest.LogCaptureFixture) -> None:
    model = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    groups = prunable_groups(model, x)
    assert any("stage2.1.branch2.0" in g.out_layers for g in groups)
    with caplog.at_level(logging.WARNING, logger="pruners"):
        pruned = prune(model, x, "channel", 0.5)
    assert "pruning its parts separately" in caplog.text
    assert pruned.stage2[1].branch2[0].out_channels == model.stage2[1].branch2[0].out_channels // 2
    assert pruned.stage2[1].branch2[5].out_channels == model.stage2[1].branch2[5].out_channels
    assert pruned(x).shape == (1, 1000)


def test_index_budget_stops_runaway_mappings() -> None:
    model = torchvision.models.alexnet(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, forward_fn=forward, verbose=False)
    bound_index_mappings(graph, budget=1000)
    with pytest.raises(IndexExplosion):
        groups_of(graph, ["classifier.6"])


def test_layer_removes_requested_blocks(resnet18: nn.Module) -> None:
    pruned = prune(resnet18, X, "layer", 0.5)
    removed = [n for n, m in pruned.named_modules() if isinstance(m, nn.Identity)]
    assert len(removed) == 3  # half of resnet18's 5 blocks without downsample, rounded up
    assert pruned(X).shape == (4, 1000)
    three = prune(tiny(), X, "layer", 0.0, blocks=3, criterion="activation")
    assert all(isinstance(b, nn.Identity) for b in three.blocks)
    assert three(X).shape == (4, 10)


def test_channel_with_blocks_removes_depth_then_width() -> None:
    model = tiny().eval()
    both = prune(model, X, "channel", {"blocks.0.conv1": 0.5, "blocks.1.conv1": 0.5, "blocks.2.conv1": 0.5},
                 blocks=2, criterion="l1")
    assert sum(isinstance(b, nn.Identity) for b in both.blocks) == 2
    kept = [b for b in both.blocks if not isinstance(b, nn.Identity)]
    assert len(kept) == 1 and kept[0].conv1.out_channels < model.blocks[0].conv1.out_channels
    assert both(X).shape == model(X).shape
    assert not any(isinstance(b, nn.Identity) for b in model.blocks)  # the input model is untouched


def test_a_block_order_removes_its_first_blocks_whatever_the_criterion_ranks_first() -> None:
    model = tiny().eval()
    by_l1 = prune(model, X, "layer", 0.0, blocks=1, criterion="l1")
    first = next(i for i, b in enumerate(by_l1.blocks) if isinstance(b, nn.Identity))
    order = [f"blocks.{i}" for i in (*(i for i in range(3) if i != first), first)]  # l1's pick removed last
    for method, sparsity in (("layer", 0.0), ("channel", {"blocks.0.conv1": 0.25})):
        pruned = prune(model, X, method, sparsity, blocks=2, criterion="l1", block_order=order)
        removed = [f"blocks.{i}" for i, b in enumerate(pruned.blocks) if isinstance(b, nn.Identity)]
        assert removed == sorted(order[:2]) and pruned(X).shape == model(X).shape, method
    with pytest.raises(ValueError, match="block_order=.*must name each removable block"):
        prune(model, X, "layer", 0.0, blocks=1, block_order=order[:2])


def test_method_traits_say_which_methods_run_faster_on_dense_kernels() -> None:
    assert set(faster_methods()) == {"channel", "layer"} and default_methods() == ["channel"]
    for name in ("magnitude", "global_magnitude", "nm"):
        assert get_method(name).masked and get_method(name).sparse_runtime
    assert get_method("nm").knob == "pattern" and get_method("layer").knob == "scalar"
    assert set(get_method("channel").calibrated) == {"taylor", "activation"}
    assert "random" not in get_method("channel").searched_criteria


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"method": "bogus"}, "bogus"),
        ({"blocks": 7}, "blocks=7"),
        ({"criterion": "bogus"}, "bogus"),
        ({"sparsity": 1.0}, "1.0"),
        ({"sparsity": -0.1}, "-0.1"),
        ({"sparsity": {"no.such.layer": 0.5}}, "no.such.layer"),
        ({"sparsity": {"blocks.0.bn1": 0.5}}, "blocks.0.bn1"),
        ({"round_to": 0}, "round_to=0"),
        ({"wobble": 1}, "wobble"),
        ({"criterion": "taylor"}, "calibration"),
        ({"method": "nm", "n": 4, "m": 4}, "n=4"),
        ({"method": "layer", "blocks": 9}, "blocks=9"),
        ({"method": "global_magnitude", "max_layer_sparsity": 0.0}, "max_layer_sparsity=0.0"),
    ],
)
def test_bad_input_names_the_offender(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        prune(tiny(), X, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("method", "criterion"),
    [("magnitude", "l1"), ("global_magnitude", "l1"), ("nm", "l1"), ("layer", "activation"),
     ("channel", "l1"), ("channel", "taylor"), ("channel", "activation")],
)
def test_prunes_a_cuda_model(method: str, criterion: str) -> None:
    model = torchvision.models.resnet18(weights=None).eval().cuda()
    x = X.cuda()
    options = {"calibration": (x, torch.arange(4, device="cuda"))} if criterion != "l1" else {}
    pruned = prune(model, x, method, 0.5, criterion=criterion, **options)
    assert all(p.is_cuda for p in pruned.parameters())
    assert pruned(x).shape == (4, 1000)
    assert bake(pruned)(x).shape == (4, 1000)
