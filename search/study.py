"""The Optuna study in the run folder: the single source of truth of a run, created once and resumed after.

Two objectives, both minimised: [cost ratio, accuracy loss]; constraints via trial.set_constraint.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from reports.records import FINAL_ERRORS_ATTR, TEST_ACCURACY_ATTR
from search.config import RunConfig
from search.outcome import TrialOutcome

log = logging.getLogger(__name__)
STUDY_NAME = "search"
INTERRUPTED = "interrupted before it finished"
METRIC_NAMES = ("cost ratio", "accuracy loss")  # the two objectives, as optuna-dashboard and plots name them
# A resumed run must be the same search: these settings may not change between runs in one folder, or the new
# trials would be measured against another dense model, split, fidelity, space or timing setup than the old ones.
FIXED_SETTINGS = ("workload", "cost", "budget", "epsilon", "seed", "finetune_epochs", "methods", "target_floor",
                  "data_dir", "device", "batch_size", "threads", "quantize")


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
    """Create the study, or load it to resume; a run folder holding another search, or no readable study, is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        create_tables_whole(run_dir / "study.db")
        study = optuna.create_study(storage=storage_url(run_dir), study_name=STUDY_NAME, load_if_exists=True,
                                    directions=["minimize", "minimize"], sampler=make_sampler(config))
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, KeyError) as error:
        raise ResumeError(f"--out {run_dir}: study.db is not a readable study of this tool "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
                          "use a new --out, or move study.db away") from None
    check_same_search(study.user_attrs.get("config"), config.to_json(), run_dir)
    if study.metric_names != list(METRIC_NAMES):
        study.set_metric_names(list(METRIC_NAMES))
    return study


def create_tables_whole(path: Path) -> None:
    """Give a new study.db Optuna's tables under another name, then move it into place. Optuna creates its tables
    without a lock: a reader opening the file meanwhile (optuna-dashboard, a script watching the run) creates them
    too, and one of the two fails ("table studies already exists", a UNIQUE alembic_version), so no one may see the
    file half-made."""
    if path.exists():
        return
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)  # left by a run killed while creating it
    optuna.storages.RDBStorage(f"sqlite:///{partial.resolve()}").engine.dispose()
    partial.replace(path)


def check_same_search(stored: dict | None, asked: dict, run_dir: Path) -> None:
    """Refuse a resume whose settings differ from the stored run's in one of FIXED_SETTINGS, naming the first."""
    if stored is None:
        return
    for key in FIXED_SETTINGS:
        if key in stored and stored[key] != asked[key]:
            flag = "--" + key.replace("_", "-")
            raise ResumeError(f"--out {run_dir} holds a run with {flag} {_shown(stored[key])}, "
                              f"not {_shown(asked[key])}; "
                              f"give the same {flag} to resume, or a new --out")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "(default)" if value is None else str(value)


def record_run_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Store the run's description (workload, budget, dense metrics, space, config) on the study."""
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def record_outcome(trial: optuna.Trial, outcome: TrialOutcome, budget: float, epsilon: float) -> TrialState:
    """Store how a trial ended on its study trial (attributes, constraints, or the failure); returns the state to
    tell the study, with outcome.values for a complete one.

    A screened trial's constraints come from its screened accuracy and fitted ratio: TPE ranks constrained trials
    by their violation, so a stopped candidate counts as a poor point; unconstrained, a PRUNED trial could fill TPE's
    "good" group when no complete trial is feasible, and draw the sampler back to where it was stopped.
    """
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    if outcome.kind == "failed":
        log.warning("trial %d failed: %s", trial.number, outcome.failure)
        log.debug("%s", outcome.traceback)
        trial.set_user_attr("failure", outcome.failure)
        return TrialState.FAIL
    cost = outcome.attrs["cost_ratio"] if outcome.kind == "complete" else outcome.attrs["fitted_ratio"]
    trial.set_constraint("accuracy_loss", outcome.attrs["accuracy_loss"] - epsilon)
    trial.set_constraint("cost_ratio", cost - budget)
    return TrialState.COMPLETE if outcome.kind == "complete" else TrialState.PRUNED


def mark_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial stopped before it finished (Ctrl-C, a lost worker): its failure says so and its point is queued
    again, so a resumed run runs it; the caller then tells the study it failed."""
    trial.set_user_attr("failure", INTERRUPTED)
    _queue_again(study, trial.params, trial.user_attrs.get("label", "search"))


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials left running by a killed process are marked failed and their parameters queued again."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "failure", INTERRUPTED)  # noqa: SLF001 - no public API for another process's trial
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        _queue_again(study, trial.params, trial.user_attrs.get("label", "search"))
        count += 1
    if count:
        log.warning("resuming: %d trial(s) interrupted by the last run are queued again", count)
    return count


def _queue_again(study: optuna.Study, params: dict[str, Any], label: str) -> None:
    if params:
        study.enqueue_trial(params, user_attrs={"label": label})


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


def record_final_error(study: optuna.Study, step: str, reason: str) -> None:
    """Store why a step of the final stage failed, by step name; the report and the summary say it."""
    stored = dict(study.user_attrs.get(FINAL_ERRORS_ATTR) or {})
    stored[step] = reason
    study.set_user_attr(FINAL_ERRORS_ATTR, stored)


def record_test_accuracy(study: optuna.Study, accuracies: dict[int, float]) -> None:
    """Store test accuracies by trial number in the study attribute reports read."""
    record_by_trial(study, TEST_ACCURACY_ATTR, accuracies)
