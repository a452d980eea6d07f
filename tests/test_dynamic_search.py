"""`--methods dynamic` end to end on digits-cnn: the search picks an early-exit model within budget, saves it with
its runtime, the report shows where inputs leave, and `search.replay` serves a stream through the saved runtime."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamic import EarlyExitModel
from dynamic.runtime import DynamicRuntime
from reports import write_report
from reports.plots import replay_figure
from reports.terminal import summary_lines
from search.config import ConfigError, parse_config
from search.dynamic import (
    exit_confidences,
    exit_cost_ratios,
    expected_cost,
    fit_measured_latency,
    fit_threshold,
    threshold_for,
)
from search.fit import TOLERANCE
from search.model_files import load_pruned
from search.pipeline import finish, prepare, run_backend
from search.replay import main as replay_main
from search.stream_replay import CHECK_GRID
from search.training import evaluate
from search.workloads import Workload

DYNAMIC = ["--workload", "digits-cnn", "--budget", "0.5", "--threads", "1", "--finetune-epochs", "0.5",
           "--final-epochs", "0", "--methods", "dynamic", "--no-sensitivity", "--trials", "3"]


@pytest.fixture(scope="module")
def dynamic_run(digits: Workload, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = parse_config([*DYNAMIC, "--out", str(tmp_path_factory.mktemp("dynamic") / "run")])
    study, ctx = prepare(config, digits)
    run_backend(study, ctx)
    finish(study, ctx)
    return config.out


def test_the_dynamic_pick_is_within_budget_and_reloads_as_it_was_measured(dynamic_run: Path,
                                                                          digits: Workload) -> None:
    best = json.loads((dynamic_run / "pareto.json").read_text())["best"]
    assert best is not None and best["method"] == "dynamic"
    dense = json.loads((dynamic_run / "pareto.json").read_text())["dense"]
    assert best["flops_ratio"] <= 0.5 + 1e-9 and dense["accuracy"] - best["accuracy"] <= 0.01 + 1e-9
    assert len(best["exit_counts"]) == len(best["exit_flops"]) and sum(best["exit_counts"]) > 0
    assert best["exit_flops"] == sorted(best["exit_flops"])  # a later exit runs more of the backbone
    model = load_pruned(dynamic_run, "best/model.pt", digits.model)
    assert isinstance(model, EarlyExitModel) and (dynamic_run / "best" / "model.exits.pt").is_file()
    assert evaluate(model, digits.val) == pytest.approx(best["accuracy"])
    runtime = DynamicRuntime.load(dynamic_run / "best" / "runtime.json", model, digits.model)
    assert runtime.epsilon == 0.01 and len(runtime.exit_costs) == len(best["exit_flops"])
    assert runtime.exit_costs == sorted(runtime.exit_costs) and runtime.dense_cost == 1.0
    saved = json.loads((dynamic_run / "best" / "runtime.json").read_text())
    assert {k: saved.get(k) for k in CHECK_GRID[0]} in CHECK_GRID  # the checks fitted for the pick on validation
    report = (dynamic_run / "report.md").read_text()
    assert "## Dynamic pick" in report and "best/runtime.json" in report
    assert "checks were fitted on a validation stream" in report
    assert f"max scale {saved['max_scale']:g}, the cheapest" in report  # the ceiling kept with the checks
    pareto = json.loads((dynamic_run / "pareto.json").read_text())
    assert any(line.startswith("latency mean, stream") for line in summary_lines(pareto, "report.html"))


def test_replay_serves_a_shifting_stream_and_the_report_plots_it(dynamic_run: Path) -> None:
    assert replay_main([str(dynamic_run), "--length", "600", "--clean", "300", "--window", "100"]) == 0
    replayed = json.loads((dynamic_run / "replay" / "replay.json").read_text())
    assert [w["inputs"] for w in replayed["windows"]] == [100] * 6
    assert replayed["windows"][0]["noise"] == 0.0 and replayed["windows"][-1]["noise"] == pytest.approx(1.0)
    clean = replayed["windows"][:3]  # the windows before the noise starts
    assert replayed["clean_cost"] == pytest.approx(sum(w["cost"] for w in clean) / 300)
    assert replayed["worst_loss"] >= max(w["disagreement_all"] for w in replayed["windows"][2:])
    assert (dynamic_run / "replay" / "replay.html").is_file()
    assert replayed["static_pick_cost"] == 0.5  # what a static model at the run's FLOPs budget costs on every input
    write_report(dynamic_run)
    report = (dynamic_run / "report.md").read_text()
    assert "Replayed: 600 test inputs" in report and "a static model at the budget 0.5" in report
    figure = replay_figure(replayed["windows"], 0.01, replayed["static_cost"], "disagreement", 0.5)
    noise = next(trace for trace in figure.data if trace.name.startswith("noise"))
    assert noise.yaxis != next(trace for trace in figure.data if trace.name == "over every input").yaxis
    assert any(shape.y0 == 0.5 for shape in figure.layout.shapes)


def test_replay_refuses_what_it_cannot_replay(dynamic_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    assert replay_main([str(tmp_path / "nowhere")]) == 2
    assert "holds no study.db" in capsys.readouterr().err
    assert replay_main([str(dynamic_run), "--trial", "999"]) == 2
    assert "--trial 999" in capsys.readouterr().err
    best = json.loads((dynamic_run / "pareto.json").read_text())["best"]
    assert replay_main([str(dynamic_run), "--trial", str(best["trial"]), "--length", "50", "--window", "50"]) == 0
    assert replay_main([str(dynamic_run), "--max-scale", "0"]) == 2
    assert "--max-scale 0.0" in capsys.readouterr().err
    assert replay_main([str(dynamic_run), "--margin", "0"]) == 2
    assert "margin 0.0 must be in (0, 1]" in capsys.readouterr().err


def test_replay_lets_the_runtime_loosen_as_far_as_max_scale_says(dynamic_run: Path) -> None:
    for max_scale in (1.0, 3.0):
        assert replay_main([str(dynamic_run), "--length", "50", "--window", "50", "--max-scale", str(max_scale)]) == 0
        replayed = json.loads((dynamic_run / "replay" / "replay.json").read_text())
        assert replayed["settings"]["max_scale"] == max_scale
        assert max(w["scale"] for w in replayed["windows"]) <= max_scale


def test_replay_fits_the_checks_on_validation_and_a_flag_that_sets_one_wins(dynamic_run: Path) -> None:
    assert replay_main([str(dynamic_run), "--length", "100", "--window", "50", "--fit-checks",
                        "--sample-rate", "0.2"]) == 0
    replayed = json.loads((dynamic_run / "replay" / "replay.json").read_text())
    fitted, used = replayed["fitted_checks"]["settings"], replayed["settings"]
    assert len(replayed["fitted_checks"]["tried"]) == len(CHECK_GRID)
    assert used["sample_rate"] == 0.2 and all(used[k] == fitted[k] for k in ("unsure_checks", "alarm_checks",
                                                                            "max_scale"))


def test_the_threshold_fitted_to_a_target_lands_at_or_under_it(digits: Workload) -> None:
    from search.dynamic import attach_exits, evaluate_dynamic, train_heads
    torch.manual_seed(0)
    exits = train_heads(attach_exits(digits.model, digits.example_inputs), digits.train, epochs=3, lr=0.05,
                        teacher=digits.model)
    costs = exit_cost_ratios(exits, digits, "flops")
    for target in (0.5, 0.7):
        threshold = fit_threshold(exits, digits.val, costs, target)
        mean = evaluate_dynamic(exits, digits.val, costs, torch.full((len(exits.exits),), threshold)).mean_cost
        looser = evaluate_dynamic(exits, digits.val, costs, torch.full((len(exits.exits),), threshold + 0.02))
        assert mean <= target + 1e-9 and looser.mean_cost > target - 0.05


@pytest.mark.parametrize("bias", [1.08, 0.92])
def test_under_latency_cost_the_threshold_is_refitted_until_the_measured_cost_lands_within_the_target(
        digits: Workload, bias: float) -> None:
    """A measurement `bias` times the forced-path prediction (fashion-resnet20's stream measured 8% off it both ways)
    takes a threshold fitted to the prediction over the target (1.08) or leaves a tenth of it unused (0.92); the
    measured refit lands 1-3% under it. The measurement here is the expected cost of the model's own
    exits, priced `bias` times dearer, so the test does not time anything."""
    from search.dynamic import attach_exits, train_heads
    torch.manual_seed(0)
    exits = train_heads(attach_exits(digits.model, digits.example_inputs), digits.train, epochs=3, lr=0.05,
                        teacher=digits.model)
    costs = exit_cost_ratios(exits, digits, "flops")
    confidence = exit_confidences(exits, digits.val)

    def measure() -> float:
        return expected_cost(confidence, [c * bias for c in costs], float(exits.thresholds[0]))

    for target in (0.5, 0.7):
        exits.thresholds.fill_(threshold_for(confidence, costs, target))
        naive = measure()
        assert naive > target if bias > 1 else naive < target * (1 - 2 * TOLERANCE)
        measured = fit_measured_latency(exits, confidence, costs, target, measure)
        assert measured == pytest.approx(measure())
        assert target * (1 - 3 * TOLERANCE) <= measured <= target * (1 - TOLERANCE)


def test_dynamic_with_params_cost_is_refused() -> None:
    with pytest.raises(ConfigError, match="--cost params"):
        parse_config(["--methods", "dynamic", "--cost", "params"])
