"""Early exits and the runtime controller on digits-cnn: exact when no head takes an input, cheaper as thresholds
relax, and a stream that turns noisy stays within its loss budget."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dynamic import NEVER, EarlyExitModel
from dynamic.runtime import ALL_TO_DENSE, DynamicRuntime
from pruners import prune
from search.dynamic import attach_exits, evaluate_dynamic, exit_costs, exit_feature_shapes, train_heads
from search.measure import count_flops
from search.stream_replay import CHECK_GRID, fit_checks, mean_cost, noisy_stream, replay, worst_window
from search.training import train
from search.workloads import Workload


@pytest.fixture(scope="module")
def exits(digits: Workload) -> EarlyExitModel:
    torch.manual_seed(0)
    model = attach_exits(digits.model, digits.example_inputs)
    return train_heads(model, digits.train, epochs=10, lr=0.05, teacher=digits.model)


def test_heads_that_never_take_an_input_give_the_static_model(exits: EarlyExitModel, digits: Workload) -> None:
    inputs, _ = next(iter(digits.val))
    exits.thresholds.fill_(NEVER)
    with torch.no_grad():
        static = digits.model(inputs)
        assert torch.equal(exits(inputs), static)
        logits, taken = exits.forward_with_exit(inputs[:1])
    assert torch.allclose(logits, static[:1], atol=1e-5) and taken == len(exits.exits)


def test_one_input_at_a_time_exits_where_the_batch_decision_says(exits: EarlyExitModel, digits: Workload) -> None:
    inputs, _ = next(iter(digits.val))
    exits.thresholds.fill_(0.9)
    with torch.no_grad():
        batch = exits(inputs[:40])
        alone = torch.cat([exits.forward_with_exit(inputs[i:i + 1])[0] for i in range(40)])
    assert torch.allclose(batch, alone, atol=1e-5)


def test_trained_heads_run_as_linear_layers_with_the_same_logits_and_exits(exits: EarlyExitModel,
                                                                          digits: Workload) -> None:
    """A head's convolution reads a fixed 4x4 map, so with its norm it is one linear layer: same logits, same exits."""
    inputs, _ = next(iter(digits.val))
    linear = copy.deepcopy(exits)
    linear.thresholds.fill_(0.9)
    exits.thresholds.fill_(0.9)
    assert linear.run_heads_as_linear().head_layout == "pool-linear"
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in linear.heads.modules())
    with torch.no_grad():
        for own, swapped in zip(exits.exit_logits(inputs), linear.exit_logits(inputs)):
            assert torch.allclose(own, swapped, atol=1e-5)
        assert [exits.forward_with_exit(inputs[i:i + 1])[1] for i in range(40)] == [
            linear.forward_with_exit(inputs[i:i + 1])[1] for i in range(40)]


def test_costs_rise_along_the_exits_and_fall_as_thresholds_relax(exits: EarlyExitModel, digits: Workload) -> None:
    costs = exit_costs(exits, digits.example_inputs)
    fresh = copy.deepcopy(exits)  # not yet cut into segments: its first batch-1 call cuts it while exit_costs counts
    assert fresh._segments is None and exit_costs(fresh, digits.example_inputs) == costs
    assert costs == sorted(costs) and costs[0] < costs[-1]
    heads = sum(count_flops(h, torch.zeros(shape))
                for h, shape in zip(exits.heads, exit_feature_shapes(exits, digits.example_inputs)))
    assert costs[-1] == count_flops(digits.model, digits.example_inputs) + heads
    means = [evaluate_dynamic(exits, digits.val, costs, torch.full((len(exits.exits),), t)).mean_cost
             for t in (NEVER, 0.99, 0.95, 0.9, 0.8, 0.6)]
    assert means == sorted(means, reverse=True) and means[0] == costs[-1] and means[-1] < 0.5 * costs[-1]


def test_the_runtime_holds_the_loss_budget_on_a_stream_that_turns_noisy(exits: EarlyExitModel,
                                                                        digits: Workload) -> None:
    """The loss is disagreement with the dense model (it bounds the accuracy lost against it): over every window of
    1,000 inputs after a warm-up of 200 it stays within epsilon, and the clean part costs less than the static model
    even with the dense checks paid. Heads at fixed thresholds of 0.8 disagree on 20% of the noisiest window."""
    epsilon, warmup, window = 0.03, 200, 1000
    costs = exit_costs(exits, digits.example_inputs)
    dense_cost = count_flops(digits.model, digits.example_inputs)
    runtime = DynamicRuntime(exits, digits.model, epsilon, exit_costs=costs, dense_cost=dense_cost,
                             base_thresholds=[0.9, 0.9], window=window)
    stream = noisy_stream(digits.test, 4000, clean=2000, noise=0.5)
    disagreed = []
    with torch.no_grad():
        for number, (x, label, _) in enumerate(stream):
            disagreed.append(int(runtime(x).argmax(1)) != int(digits.model(x).argmax(1)))
            runtime.observe_label(number, label)
    for start in range(warmup, len(stream) - window + 1, 100):
        assert sum(disagreed[start:start + window]) / window <= epsilon, start
    log = runtime.log()
    assert sum(w["cost"] for w in log[:2]) / 2000 < costs[-1]
    assert sum(w["labelled"] for w in log) == len(stream) and sum(w["checks"] for w in log) > 200
@pytest.fixture(scope="module")
def pruned_exits(digits: Workload) -> EarlyExitModel:
    """Exits on a channel-pruned backbone (0.68 of the FLOPs) that a noisy stream pulls far from the dense model."""
    torch.manual_seed(0)
    backbone = prune(digits.model, digits.example_inputs, method="channel", sparsity=0.3)
    train(backbone, digits.train, epochs=2, lr=0.05, teacher=digits.model)
    return train_heads(attach_exits(backbone, digits.example_inputs), digits.train, epochs=10, lr=0.05,
                       teacher=digits.model)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_runtime_holds_the_budget_where_the_pruned_backbone_alone_cannot(
        pruned_exits: EarlyExitModel, digits: Workload, seed: int) -> None:
    """Noise growing to 1.0 makes the pruned backbone disagree with dense on up to half the inputs, so switching the
    exits off is not enough: unsure answers checked more often, an alarm after a disagreement, and the fallback to the
    dense model hold epsilon over every window of 1,000 after 200, while the clean part costs less than the static
    backbone."""
    epsilon, warmup, window = 0.03, 200, 1000
    costs = exit_costs(pruned_exits, digits.example_inputs)
    dense_cost = count_flops(digits.model, digits.example_inputs)
    stream = noisy_stream(digits.test, 4000, clean=2000, noise=1.0, seed=seed)
    runtime = DynamicRuntime(pruned_exits, digits.model, epsilon, exit_costs=costs, dense_cost=dense_cost,
                             base_thresholds=[0.9, 0.9], window=window, seed=seed)
    with torch.no_grad():
        dense = [int(digits.model(x).argmax(1)) for x, _, _ in stream]
        static = [int(pruned_exits.backbone(x).argmax(1)) != d for (x, _, _), d in zip(stream, dense)]
        served = [int(runtime(x).argmax(1)) != d for (x, _, _), d in zip(stream, dense)]
    starts = range(warmup, len(stream) - window + 1, 100)
    assert max(sum(static[s:s + window]) / window for s in starts) > 5 * epsilon
    assert max(sum(served[s:s + window]) / window for s in starts) <= epsilon
    log = runtime.log()
    assert sum(w["cost"] for w in log[:2]) / 2000 < costs[-1]
    assert sum(w["fallbacks"] for w in log[:2]) < sum(w["fallbacks"] for w in log[2:])


def test_a_backbone_that_loses_far_more_than_dense_under_noise_keeps_the_most_checks(pruned_exits: EarlyExitModel,
                                                                                      digits: Workload) -> None:
    """Fewer checks catch the noisy part's disagreements too late: the fit keeps the grid's most checks, and its
    fewest let the worst validation window rise more than twofold."""
    costs = exit_costs(pruned_exits, digits.example_inputs)
    settings = {"epsilon": 0.03, "exit_costs": costs, "dense_cost": costs[-1], "base_thresholds": [0.9, 0.9]}
    fit = fit_checks(pruned_exits, digits.model, settings, digits.val)
    assert fit.settings == CHECK_GRID[0] and fit.tried[-1]["worst_loss"] > 2 * fit.tried[0]["worst_loss"]


def test_calibrated_on_validation_the_runtime_starts_within_budget(pruned_exits: EarlyExitModel,
                                                                   digits: Workload) -> None:
    """Started at its loosest scale with eager heads, the runtime breaks a tight budget over its first 100 clean
    inputs on some seed while its checks pull the scale down; calibrated on the validation split first, it starts at
    a scale that holds it from the first input."""
    epsilon, first = 0.005, 100
    costs = exit_costs(pruned_exits, digits.example_inputs)
    dense_cost = count_flops(digits.model, digits.example_inputs)

    def served(seed: int, calibrated: bool) -> float:
        runtime = DynamicRuntime(pruned_exits, digits.model, epsilon, exit_costs=costs, dense_cost=dense_cost,
                                 base_thresholds=[0.5, 0.5], scale=2.0, seed=seed)
        if calibrated:
            assert ALL_TO_DENSE <= runtime.calibrate(digits.val) < 2.0 and runtime.scale < 2.0
        stream = noisy_stream(digits.test, first, clean=first, noise=0.0, seed=seed)
        with torch.no_grad():
            return sum(int(runtime(x).argmax(1)) != int(digits.model(x).argmax(1)) for x, _, _ in stream) / first
    assert max(served(seed, calibrated=False) for seed in range(3)) > epsilon
    assert all(served(seed, calibrated=True) <= epsilon for seed in range(3))


def test_under_the_accuracy_loss_calibration_holds_accuracy_not_agreement(pruned_exits: EarlyExitModel,
                                                                          digits: Workload) -> None:
    """Calibrated under the accuracy loss, the runtime starts at the loosest scale whose accuracy lost against dense
    is within its target, not where it would disagree with dense that often (runs/dyn-fl0.5-head: calibrated on
    disagreement, the heads started off and the clean part cost more than the backbone alone). The labels here are
    ones dense always misses (its answer plus one), so no answer can lose accuracy against dense at any scale while
    the exits disagree with dense more than the target; without labels it says what it needs."""
    epsilon = 0.02
    costs = exit_costs(pruned_exits, digits.example_inputs)
    dense_cost = count_flops(digits.model, digits.example_inputs)

    def runtime(loss: str) -> DynamicRuntime:
        return DynamicRuntime(pruned_exits, digits.model, epsilon, exit_costs=costs, dense_cost=dense_cost,
                              base_thresholds=[0.5, 0.5], loss=loss)
    inputs = torch.cat([x for x, _ in digits.val])
    with torch.no_grad():
        batches = [(inputs, (digits.model(inputs).argmax(1) + 1) % 10)]
    agreeing, accurate = runtime("disagreement"), runtime("accuracy")
    assert agreeing.calibrate(batches) < 0.5 < accurate.calibrate(batches) == pytest.approx(accurate.max_scale)
    with pytest.raises(ValueError, match="needs \\(inputs, labels\\) batches"):
        runtime("accuracy").calibrate([inputs])


def test_under_the_accuracy_loss_the_runtime_holds_the_accuracy_lost_from_labels(
        pruned_exits: EarlyExitModel, digits: Workload) -> None:
    """loss="accuracy": each checked input's label, once it arrives, says whether the model's answer lost accuracy
    against dense's. The backbone alone loses more than epsilon on the noisy part; the runtime holds it (at about
    half of it on this stream)."""
    epsilon, warmup, window = 0.005, 200, 1000
    costs = exit_costs(pruned_exits, digits.example_inputs)
    dense_cost = count_flops(digits.model, digits.example_inputs)
    stream = noisy_stream(digits.test, 4000, clean=2000, noise=1.0, seed=0)
    runtime = DynamicRuntime(pruned_exits, digits.model, epsilon, exit_costs=costs, dense_cost=dense_cost,
                             base_thresholds=[0.9, 0.9], window=window, loss="accuracy")
    static, served = [], []
    with torch.no_grad():
        for number, (x, label, _) in enumerate(stream):
            dense_wrong = int(digits.model(x).argmax(1)) != label
            static.append(int(int(pruned_exits.backbone(x).argmax(1)) != label) - int(dense_wrong))
            served.append(int(int(runtime(x).argmax(1)) != label) - int(dense_wrong))
            runtime.observe_label(number, label)
    starts = range(warmup, len(stream) - window + 1, 100)
    assert max(sum(static[s:s + window]) / window for s in starts) > epsilon
    assert max(sum(served[s:s + window]) / window for s in starts) <= epsilon
    log = runtime.log()
    assert len(log) == 4 and sum(w["loss_samples"] for w in log) == sum(w["checks"] for w in log)


def test_checks_beyond_the_sample_rate_come_from_unsure_answers_and_alarms(exits: EarlyExitModel,
                                                                           digits: Workload) -> None:
    """With unsure_checks and alarm_checks at 0 the runtime checks its base rate of inputs and no more; at their
    defaults unsure answers and losses draw more checks on the same stream."""
    costs = exit_costs(exits, digits.example_inputs)
    stream = noisy_stream(digits.test, 1000, clean=500, noise=1.0)
    checked = {}
    for extra in (0.0, 0.5):
        runtime = DynamicRuntime(exits, digits.model, 0.03, exit_costs=costs, dense_cost=costs[-1], sample_rate=0.1,
                                 base_thresholds=[0.9, 0.9], unsure_checks=extra, alarm_checks=extra)
        for x, _, _ in stream:
            runtime(x)
        checked[extra] = sum(w["checks"] for w in runtime.log())
    assert 70 <= checked[0.0] <= 130 and checked[0.5] > 1.3 * checked[0.0]


def test_checks_fitted_on_validation_cost_less_and_hold_the_budget_on_the_test_stream(exits: EarlyExitModel,
                                                                                      digits: Workload) -> None:
    """Heads on the dense backbone lose no accuracy against dense however noisy the stream, so the runtime's default
    checks pay for a shift that never threatens the budget: the fit keeps fewer, and on the test split's stream
    (inputs the fit never saw) they cost less on the clean part and still hold every window."""
    costs = exit_costs(exits, digits.example_inputs)
    settings = {"epsilon": 0.03, "exit_costs": costs, "dense_cost": costs[-1], "base_thresholds": [0.9, 0.9],
                "loss": "accuracy"}
    thresholds = exits.thresholds.clone()
    fit = fit_checks(exits, digits.model, settings, digits.val)
    assert torch.equal(exits.thresholds, thresholds)  # a runtime built without base thresholds starts from these
    assert fit.settings != CHECK_GRID[0] and fit.kept["holds"]
    stream = noisy_stream(digits.test, 4000, clean=2000, noise=1.0, seed=0)
    replayed = {}
    for name, checks in (("defaults", {}), ("fitted", fit.settings)):
        runtime = DynamicRuntime(exits, digits.model, **settings, **checks)
        runtime.calibrate(digits.val)
        windows, losses = replay(runtime, stream, progress=False)
        replayed[name] = (mean_cost(windows[:2]), worst_window(losses, 1000, 200))
    assert replayed["fitted"][0] < replayed["defaults"][0] and replayed["fitted"][1] <= settings["epsilon"]


def test_a_setting_the_user_fixed_stands_in_every_setting_the_fit_tries(exits: EarlyExitModel, digits: Workload,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`replay --fit-checks --max-scale 2` must fit the checks at the ceiling it then replays with, not at the
    grid's (each grid setting carries a ceiling of its own)."""
    from search import stream_replay
    built: list[float] = []
    runtime = stream_replay.DynamicRuntime
    monkeypatch.setattr(stream_replay, "DynamicRuntime", lambda *args, **kwargs: built.append(kwargs["max_scale"])
                        or runtime(*args, **kwargs))
    costs = exit_costs(exits, digits.example_inputs)
    settings = {"epsilon": 0.03, "exit_costs": costs, "dense_cost": costs[-1], "base_thresholds": [0.9, 0.9]}
    fit = fit_checks(exits, digits.model, settings, digits.val, fixed={"max_scale": 2.0})
    assert len(built) == 2 * len(CHECK_GRID) and set(built) == {2.0}
    assert {t["max_scale"] for t in fit.tried} == {c["max_scale"] for c in CHECK_GRID}


def test_the_runtime_saves_and_loads_with_its_model(exits: EarlyExitModel, digits: Workload, tmp_path) -> None:
    costs = exit_costs(exits, digits.example_inputs)
    runtime = DynamicRuntime(exits, digits.model, 0.02, exit_costs=costs, dense_cost=costs[-1])
    for x, _, _ in noisy_stream(digits.test, 300, clean=300, noise=0.0):
        runtime(x)
    path = tmp_path / "runtime.pt"
    torch.save({"state_dict": exits.state_dict(), "runtime": runtime.settings()}, path)
    saved = torch.load(path, weights_only=True)
    fresh = attach_exits(digits.model, digits.example_inputs)
    fresh.load_state_dict(saved["state_dict"])
    again = DynamicRuntime(fresh, digits.model, **saved["runtime"])
    assert again.settings() == runtime.settings()
    assert torch.equal(fresh.thresholds, exits.thresholds)
    x = digits.example_inputs
    with torch.no_grad():
        assert torch.equal(fresh(x), exits(x))


def test_a_dynamic_model_is_re_timed_at_batch_one_over_a_stream_of_validation_inputs(
        exits: EarlyExitModel, digits: Workload, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pick's re-timing (latency_checks) once timed one input repeated, so one path of the exits: runs/dyn-lat0.6
    re-timed its dynamic pick at 0.807 of dense against 0.542 over the search's stream, and dropped it. It must see
    the stream, one pass per round; a batch runs every exit, so there one repeated input is right."""
    from search import latency_checks
    from search.config import parse_config
    from search.model_files import save_pruned
    from search.timing import stream_for
    exits.thresholds.fill_(0.9)
    save_pruned(exits, tmp_path / "model.pt")
    seen: set[float] = set()
    load = latency_checks.load_pruned

    def watched(*args: object) -> nn.Module:
        model = load(*args)
        model.register_forward_pre_hook(lambda _module, inputs: seen.add(float(inputs[0].sum())))
        return model

    monkeypatch.setattr(latency_checks, "load_pruned", watched)
    ctx = SimpleNamespace(run_dir=tmp_path, workload=digits, config=parse_config(["--workload", "digits-cnn"]))
    stats, _ = latency_checks._timed(ctx, SimpleNamespace(model_path="model.pt"), 1, repeats=50, rounds=2)
    stream = stream_for({"pruned": exits}, digits, 1)
    assert len(seen) > 100 and stats["pruned"]["repeats"] == 2 * len(stream)
    assert len(stats["pruned"]["round_ratios"]) == 2 and stats["pruned"]["headline_ms"] == stats["pruned"]["mean_ms"]
    assert stream_for({"pruned": exits}, digits, 64) is None and stream_for({"dense": digits.model}, digits, 1) is None


def test_at_batch_one_only_the_heads_that_can_take_the_input_run_and_nothing_is_hooked(exits: EarlyExitModel,
                                                                                       digits: Workload) -> None:
    """Each hook, head and tensor read is time at batch 1 that the FLOPs do not count (ResNet-20: hooks and the raise
    cost 0.007-0.029 of dense): the backbone runs as segments, with no hook on any exit point, and a head whose
    threshold no confidence reaches is not consulted."""
    hooked: list[int] = []
    consulted: list[int] = []
    watches = [point.register_forward_pre_hook(lambda module, _args: hooked.append(len(module._forward_hooks)))
               for point in exits._points]
    watches += [head.register_forward_pre_hook(lambda _module, _args, i=i: consulted.append(i))
                for i, head in enumerate(exits.heads)]
    try:
        with torch.no_grad():
            exits.thresholds.fill_(NEVER)
            exits(digits.example_inputs[:1])
            never, consulted[:] = list(consulted), []
            exits.thresholds.copy_(torch.tensor([NEVER] * (len(exits.exits) - 1) + [1.0]))
            exits(digits.example_inputs[:1])
    finally:
        for watch in watches:
            watch.remove()
    assert exits._segments is not None and hooked == [0] * 2 * len(exits.exits)
    assert never == [] and consulted == [len(exits.exits) - 1]


class _SkipAcrossExits(nn.Module):
    """Three stages where the third reads the first's output as well as the second's: no cut at the second exit
    passes one value alone, so the heads hang on hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.stage1(x)
        return self.fc(self.stage3(self.stage2(first) + first).mean((2, 3)))


def test_a_backbone_that_cannot_be_cut_at_its_exits_runs_them_on_hooks(digits: Workload) -> None:
    torch.manual_seed(0)
    backbone = _SkipAcrossExits().eval()
    model = attach_exits(backbone, digits.example_inputs).eval()
    assert model.exits == ["stage1", "stage2"]
    inputs, _ = next(iter(digits.val))
    model.thresholds.fill_(0.2)
    with torch.no_grad():
        batch = model(inputs[:40])
        alone = torch.cat([model.forward_with_exit(inputs[i:i + 1])[0] for i in range(40)])
    assert model._segmented and model._segments is None
    assert torch.allclose(batch, alone, atol=1e-5)


def test_segments_run_the_modules_the_backbone_holds_now_and_pickle_without_them(exits: EarlyExitModel,
                                                                                digits: Workload,
                                                                                tmp_path) -> None:
    """Batch norms folded for timing replace modules after the cut: the folded ones must run. A saved whole model
    (best/model.pt) and a deep copy cut their own segments."""
    from search.measure.folding import fold_batch_norms
    inputs, _ = next(iter(digits.val))
    exits.thresholds.fill_(0.9)
    with torch.no_grad():
        expected = [exits.forward_with_exit(inputs[i:i + 1]) for i in range(20)]
        folded = copy.deepcopy(exits)
        assert folded._segments is None and fold_batch_norms(folded, inputs[:1]) > 0
        calls: list[int] = []
        first = next(m for m in folded.backbone.modules() if isinstance(m, nn.Conv2d))
        first.register_forward_pre_hook(lambda _module, _args: calls.append(1))
        for i, (logits, taken) in enumerate(expected):
            again, exit_taken = folded.forward_with_exit(inputs[i:i + 1])
            assert exit_taken == taken and torch.allclose(again, logits, atol=1e-4)
        assert folded._segments is not None and len(calls) == 20
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.modules())
        torch.save(exits, tmp_path / "whole.pt")
        loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
        assert loaded._segments is None
        assert all(torch.equal(loaded.forward_with_exit(inputs[i:i + 1])[0], expected[i][0]) for i in range(20))


@pytest.mark.parametrize("setting", [{"sample_rate": 0.0}, {"max_scale": 0.0}, {"loss": "kl"}, {"margin": 1.5},
                                     {"unsure_checks": -0.1}, {"alarm_checks": 2.0}])
def test_the_runtime_refuses_settings_it_cannot_serve_with(exits: EarlyExitModel, digits: Workload,
                                                           setting: dict) -> None:
    costs = exit_costs(exits, digits.example_inputs)
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name):
        DynamicRuntime(exits, digits.model, 0.02, exit_costs=costs, dense_cost=costs[-1], **setting)
