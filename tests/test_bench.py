"""The benchmark on digits-cnn writes bench.json and bench.md: every arm at a FLOPs budget and (PRUNE_SLOW=1) at a
latency budget, the dynamic arm there too, the same final stage for each; and its screening statistic."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from reports import TrialRecord, load_records
from reports.search_plots import screening_figure
from search.bench import _screening, arm_candidate, own_trials, verdict
from search.promotion import PROMOTION_ATTR, promotion_candidates
from search.study import storage_url
from tests.conftest import ROOT, reachable_latency_budget

ARMS = {"search", "search_own", "search_all", "random_search", "uniform_l1", "tp_global", "uniform_magnitude"}
LATENCY_ARMS = {"search", "search_own", "uniform_l1", "tp_global", "dynamic"}
ROW_KEYS = {"accuracy", "test_accuracy", "flops_ratio", "latency_ratio", "seconds", "test_accuracy_runs",
            "test_accuracy_mean", "test_accuracy_sd", "final_finetunes", "over_budget"}
SEEDS = 2


def run_bench(cache_dir: Path, out: Path, budgets: list[str], arms: set[str]) -> dict:
    """`python -m search.bench` on digits-cnn at BUDGETS (its flags) with a short recipe; bench.json."""
    result = subprocess.run([sys.executable, "-m", "search.bench", "--workload", "digits-cnn", *budgets,
                             "--seeds", str(SEEDS), "--arms", ",".join(arms), "--trials", "3", "--threads", "1",
                             "--finetune-epochs", "0.5", "--final-epochs", "0.5", "--promote", "2",
                             "--promote-epochs", "0.25", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "PRUNE_SEARCH_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["seeds"] == SEEDS
    return bench


def check_budget(bench: dict, out: Path, budget: str, arms: set[str]) -> None:
    """Every arm of BUDGET got SEEDS final fine-tunes, its mean and over-budget mark agree with its runs, and the
    search's arms went through successive halving wherever two trials fitted the budget."""
    row = bench["budgets"][budget]
    assert set(row) == arms
    limit = float(budget.removeprefix("latency-"))
    for arm, r in row.items():
        assert r is not None and ROW_KEYS <= set(r), (budget, arm)
        assert r["final_finetunes"] == SEEDS and len(r["test_accuracy_runs"]) == SEEDS, (budget, arm)
        assert r["test_accuracy_mean"] == statistics.fmean(r["test_accuracy_runs"])
        assert r["over_budget"] == (r["cost_ratio"] > limit + 1e-9)
        if arm != "uniform_magnitude" and not budget.startswith("latency"):
            assert not r["over_budget"] and r["flops_ratio"] <= limit + 1e-9, (budget, arm)
    assert row["search_own"]["label"] == "search"  # its own trials only: never a warm start
    storage = storage_url(out / budget / "search")
    promoted = optuna.load_study(study_name="search", storage=storage).user_attrs.get(PROMOTION_ATTR, {})
    # successive halving ran before the final stage wherever two trials were within budget: always at a FLOPs
    # budget (the fitted baselines are); at a latency one, measured times can put all but one over it
    fitting = promotion_candidates(load_records(storage, final=False).trials, limit, 2)
    assert len(fitting) == 2 or budget.startswith("latency"), budget
    assert len(promoted) >= len(fitting) if len(fitting) == 2 else not promoted, budget


def test_bench_on_digits_gives_every_arm_the_same_final_stage(cache_dir: Path, digits, tmp_path: Path) -> None:
    bench = run_bench(cache_dir, tmp_path / "bench", ["--budgets", "0.5"], ARMS)
    assert set(bench["budgets"]) == {"0.5"}
    check_budget(bench, tmp_path / "bench", "0.5", ARMS)
    screening = bench["screening"]
    assert screening["pairs"] >= 3 and screening["seconds_per_candidate"] > 0
    assert screening["spearman"] is not None and -1 <= screening["spearman"] <= 1
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    assert "## Budget 0.5" in markdown and "Verdict: search_own" in markdown


@pytest.mark.slow(reason="a benchmark at a latency budget, the dynamic arm's search with it, about a minute")
def test_bench_at_a_latency_budget_fits_every_arm_to_it_and_runs_the_dynamic_arm(cache_dir: Path, digits,
                                                                                  tmp_path: Path) -> None:
    latency_budget = reachable_latency_budget(digits, cache_dir)
    budget = f"latency-{latency_budget:g}"
    bench = run_bench(cache_dir, tmp_path / "bench", ["--budgets", "", "--latency-budgets", f"{latency_budget:g}"],
                      LATENCY_ARMS)
    assert set(bench["budgets"]) == {budget}
    check_budget(bench, tmp_path / "bench", budget, LATENCY_ARMS)
    assert "Verdict: dynamic" in (tmp_path / "bench" / "bench.md").read_text()
    assert bench["budgets"][budget]["dynamic"]["method"] == "dynamic"  # a model with early exits


def test_screening_rank_correlation_uses_the_fine_tuned_accuracy() -> None:
    """Fine-tuning hurt every model here, most where screening scored best: the kept accuracy (the better of the two)
    would rank like the screened one, the fine-tuned one ranks the other way round."""
    before, after = [0.50, 0.60, 0.70, 0.80], [0.45, 0.44, 0.43, 0.42]
    trials = [TrialRecord(number=n, state=TrialState.COMPLETE, cost_ratio=0.5, accuracy=max(b, a),
                          accuracy_before_finetune=b, accuracy_after_finetune=a, screen_seconds=1.0)
              for n, (b, a) in enumerate(zip(before, after))]
    assert _screening(trials)["spearman"] == -1.0


def test_screening_with_one_constant_side_has_no_correlation_and_says_nothing_on_stderr() -> None:
    """Every screened accuracy alike (the hook's two-trial smoke run): scipy warned on the terminal and gave NaN,
    which bench.json cannot hold as JSON; the correlation is now None, quietly, in the benchmark and the report."""
    trials = [TrialRecord(number=n, state=TrialState.COMPLETE, cost_ratio=0.5, accuracy=a,
                          accuracy_before_finetune=0.5, accuracy_after_finetune=a, screen_seconds=1.0)
              for n, a in enumerate([0.8, 0.9, 0.85])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _screening(trials)["spearman"] is None
        assert "undefined (one side is constant)" in screening_figure(trials)[1]


def test_an_arm_with_no_trial_within_budget_takes_its_cheapest_marked_over() -> None:
    """Measured latency can miss a fitted target: the arm still gets a candidate (its cheapest, over budget), so every
    arm gets the same final stage; own trials never fall back on a warm start."""
    def trial(number: int, cost: float, accuracy: float, label: str = "search") -> TrialRecord:
        return TrialRecord(number=number, state=TrialState.COMPLETE, cost_ratio=cost, accuracy=accuracy, label=label,
                           policy={"method": "channel"})
    trials = [trial(0, 0.75, 0.9, "baseline:tp_global"), trial(1, 0.9, 0.95), trial(2, 0.85, 0.93)]
    assert arm_candidate(trials, 0.8).number == 0
    assert arm_candidate(own_trials(trials), 0.8).number == 2
    assert arm_candidate(own_trials(trials), 0.95).number == 1


def test_a_verdict_against_arms_left_out_of_the_run_says_so() -> None:
    """`--arms search,search_own,dynamic` runs no baseline: the verdict says they were not benchmarked, not that no
    model of theirs was within budget; a baseline that ran and missed the budget still reads as before."""
    ran = {"search_own": {"over_budget": False, "test_accuracy_mean": 0.9, "test_accuracy_sd": 0.001,
                          "final_finetunes": 3}}
    assert "not benchmarked here" in verdict(ran)
    assert "no model within budget" in verdict({**ran, "tp_global": None})
