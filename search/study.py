"""The Optuna study in the run folder: the single source of truth of a run, created once and resumed after.

Two objectives, both minimised: [cost ratio, accuracy loss]; constraints via trial.set_constraint.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from reports.records import TEST_ACCURACY_ATTR
from search.config import RunConfig

log = logging.getLogger(__name__)
STUDY_NAME = "search"
INTERRUPTED = "interrupted before it finished"
# A resumed run must be the same search: these study attributes may not change between runs in one folder.
FIXED_ATTRS = ("workload", "cost_metric", "budget", "epsilon")


class ResumeError(ValueError):
    """The run folder holds a different search than the command asks for."""


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{run_dir.resolve() / 'study.db'}"


def make_sampler(config: RunConfig) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped for the conditional space), NSGA-II or random; always seeded."""
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=max(4, min(20, config.trials // 3)))
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True,
                                      n_startup_trials=max(4, min(10, config.trials // 3)))


def open_study(config: RunConfig, run_dir: Path) -> optuna.Study:
    """Create the study, or load it to resume; a run folder holding another search is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage_url(run_dir), study_name=STUDY_NAME, load_if_exists=True,
                                directions=["minimize", "minimize"], sampler=make_sampler(config))
    expected = {"workload": config.workload, "cost_metric": config.cost, "budget": config.budget,
                "epsilon": config.epsilon}
    for key in FIXED_ATTRS:
        if key in study.user_attrs and study.user_attrs[key] != expected[key]:
            raise ResumeError(f"--out {run_dir} holds a run with {key} {study.user_attrs[key]!r}, not {expected[key]!r}; "
                              "use a new --out or the same settings")
    return study


def record_run_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Store the run's description (workload, budget, dense metrics, space, config) on the study."""
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials left running by a killed process are marked failed and their parameters queued again."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "failure", INTERRUPTED)  # noqa: SLF001 - no public API for another process's trial
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"label": trial.user_attrs.get("label", "search")})
        count += 1
    if count:
        log.warning("resuming: %d trial(s) interrupted by the last run are queued again", count)
    return count


def finished_count(study: optuna.Study) -> int:
    """Trials that ran to an end (complete, stopped early, or failed on their own): the ones counted toward --trials."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.user_attrs.get("failure") != INTERRUPTED))


def record_by_trial(study: optuna.Study, attr: str, entries: dict[int, Any]) -> None:
    """Merge entries keyed by trial number into a study attribute: what is learnt about a trial after it finished
    (Optuna freezes a finished trial's own attributes), which reports merge back into its record."""
    stored = dict(study.user_attrs.get(attr) or {})
    stored.update({str(number): entry for number, entry in entries.items()})
    study.set_user_attr(attr, stored)


def record_test_accuracy(study: optuna.Study, accuracies: dict[int, float]) -> None:
    """Store test accuracies by trial number in the study attribute reports read."""
    record_by_trial(study, TEST_ACCURACY_ATTR, accuracies)
