"""Screening: the threshold learns from the run's own fine-tuning gains; a hopeless candidate stops before
fine-tuning."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from pruners import prune
from search.outcome import TrialOutcome
from search.recover import ScreenedOut, recover
from search.screening import MARGIN, RANK_MARGIN, screening_bar, stop_below
from search.study import record_outcome

DENSE = 0.92

# (cost ratio, accuracy, screened accuracy) of finished trials; (0.40, 0.84, 0.5) is dominated by (0.30, 0.85, 0.4)
FINISHED = [(0.50, 0.90, 0.6), (0.30, 0.85, 0.4), (0.40, 0.84, 0.5), (0.25, 0.80, 0.3)]


def test_no_screening_until_enough_trials_are_seen() -> None:
    bar = screening_bar([(0.5, 0.9)] * 3, FINISHED, DENSE)
    assert bar is None and stop_below(bar, 0.5) is None


def test_bar_keeps_the_largest_gain_and_the_front() -> None:
    bar = screening_bar([(0.80, 0.90), (0.85, 0.88), (0.90, 0.91), (0.70, 0.75)], FINISHED, DENSE)
    assert bar["largest_gain"] == pytest.approx(0.10)
    assert bar["front"] == [[0.25, 0.80, 0.3], [0.30, 0.85, 0.4], [0.50, 0.90, 0.6]]
    assert bar["rank_floor"] == pytest.approx(0.46)


def test_a_candidate_is_stopped_only_below_what_dominates_it_at_its_cost() -> None:
    bar = screening_bar([(0.80, 0.90)] * 4, FINISHED, 0.7)
    # at cost 0.45 the front at no higher cost is (0.25, 0.80, 0.3) and (0.30, 0.85, 0.4)
    assert stop_below(bar, 0.45) == pytest.approx(max(0.85 - 0.10 - MARGIN, 0.4 - RANK_MARGIN))
    assert stop_below(bar, 0.60) == pytest.approx(max(0.90 - 0.10 - MARGIN, 0.6 - RANK_MARGIN))
    assert stop_below(bar, 0.20) is None  # cheaper than every finished trial: it could only extend the front


def test_when_recalibration_leaves_everything_near_chance_ranking_stops_nothing() -> None:
    near_chance = [(0.50, 0.83, 0.20), (0.30, 0.72, 0.38)]  # as seen: the better screen ended the worse
    bar = screening_bar([(0.20, 0.83), (0.38, 0.72), (0.11, 0.70), (0.15, 0.74)], near_chance, DENSE)
    assert stop_below(bar, 0.6) == pytest.approx(0.83 - (0.83 - 0.20) - MARGIN)  # only the largest-gain rule
    assert stop_below(bar, 0.6) < 0.38 - RANK_MARGIN


def test_recover_stops_a_hopeless_candidate_before_finetuning(digits) -> None:
    model = prune(digits.model, digits.example_inputs, method="channel", sparsity=0.5)
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("weight", "bias"))}
    with pytest.raises(ScreenedOut) as stopped:
        recover(model, digits, epochs=1.0, lr=0.01, stop_below=1.01)
    assert 0 <= stopped.value.accuracy <= 1
    assert all((model.state_dict()[k] == v).all() for k, v in weights.items())  # no gradient step taken


def test_recover_keeps_the_better_of_recalibrated_and_finetuned(digits) -> None:
    model = prune(digits.model, digits.example_inputs, method="channel", sparsity=0.5)
    recovery = recover(model, digits, epochs=0.5, lr=0.02, stop_below=0.0)
    assert recovery.accuracy == max(recovery.accuracy_before_finetune, recovery.accuracy_after_finetune)


def test_a_screened_trial_is_pruned_with_constraints_from_its_screened_accuracy() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    attrs = {"accuracy": 0.30, "accuracy_before_finetune": 0.30, "accuracy_loss": 0.62, "fitted_ratio": 0.24,
             "stopped_reason": "screened"}
    state = record_outcome(trial, TrialOutcome("screened", attrs), budget=0.25, epsilon=0.01)
    study.tell(trial, state=state)
    frozen = study.trials[0]
    assert frozen.state == TrialState.PRUNED and frozen.user_attrs["accuracy_before_finetune"] == 0.30
    assert frozen.constraints == pytest.approx({"accuracy_loss": 0.62 - 0.01, "cost_ratio": 0.24 - 0.25})
