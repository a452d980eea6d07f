"""Screening: the threshold learns from the run's own fine-tuning gains; a hopeless candidate stops before fine-tuning."""
from __future__ import annotations

import pytest

from pruners import prune
from search.recover import ScreenedOut, recover
from search.screening import MARGIN, screening_threshold


def test_no_screening_until_enough_trials_are_seen() -> None:
    assert screening_threshold([(0.5, 0.9)] * 3, dense_accuracy=0.93, epsilon=0.01) is None


def test_threshold_allows_for_the_largest_gain_seen() -> None:
    pairs = [(0.80, 0.90), (0.85, 0.88), (0.90, 0.91), (0.70, 0.75)]
    assert screening_threshold(pairs, 0.93, 0.01) == pytest.approx(0.93 - 0.01 - 0.10 - MARGIN)


def test_when_recalibration_leaves_everything_near_chance_nothing_is_stopped() -> None:
    pairs = [(0.10, 0.92), (0.12, 0.89), (0.11, 0.91), (0.10, 0.85)]
    assert screening_threshold(pairs, 0.93, 0.01) < 0.10  # a candidate at chance may still recover: none stopped


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
