"""OptunaSearch over the run's own study: Tune asks it for points and it records each result as the optuna backend does.

Ray's OptunaSearch already asks and tells a study in any Optuna storage, define-by-run; this subclass adds what the
study must hold besides the objectives: labels, user attributes, constraints, candidates stopped by screening
(pruned, with what they knew), failures with their reason, trials interrupted before they finished (failed, and
their point queued again), and `--timeout` (no new trials after it).

Like the optuna backend's loop, the searcher decides when the study has its `--trials`: Tune's sample count is only a
bound. So a trial that Tune gives up on after a lost worker (its retries can all fail before Ray has declared the
node dead) is queued again and runs again in this run, up to RELAUNCHES times per point.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.backends.optuna_backend import best_so_far
from search.backends.ray_trial import META_KEY, OUTCOME_KEY
from search.outcome import OBJECTIVES, TrialOutcome
from search.screening import screen_bar
from search.study import finished_count, mark_interrupted, record_outcome
from search.trial import TrialContext

log = logging.getLogger(__name__)
RELAUNCHES = 2  # times one point is queued again after Tune gave up on it for a Ray error


class StudySearch(OptunaSearch):
    """Tune searcher whose every trial is a trial of `study`, recorded with its attributes and constraints."""

    def __init__(self, study: optuna.Study, ctx: TrialContext, *, retries: int, tune_dir: str) -> None:
        self._ctx, self._retries, self._tune_dir = ctx, retries, tune_dir
        self._lost: dict[str, int] = {}  # Ray errors per point (its parameters as JSON)
        timeout = ctx.config.timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        super().__init__(space=self._define, metric=list(OBJECTIVES), mode=["min", "min"], sampler=study.sampler,
                         study_name=study.study_name, storage=study._storage)  # noqa: SLF001 - share the run's storage

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the searcher into its tuner.pkl: the trial context (the workload's model and data) stays out."""
        return {key: value for key, value in self.__dict__.items() if key != "_ctx"}

    def _define(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run: the space's point, plus what the trainable needs from the study: number, label, screening."""
        label = trial.user_attrs.get("label", "search")
        trial.set_user_attr("label", label)
        meta = {"number": trial.number, "label": label, "screen": screen_bar(self._ot_study, self._ctx.dense.accuracy)}
        return {**self._ctx.space.suggest(trial), META_KEY: meta}

    def suggest(self, trial_id: str) -> dict | None:
        """A new point; None while the running trials would complete `--trials`; FINISHED once they have, or once
        `--timeout` has passed (running trials still finish)."""
        done = finished_count(self._ot_study)
        if self._deadline is not None and time.monotonic() > self._deadline:
            log.warning("--timeout reached after %d trials; rerun with the same --out to continue", done)
            return Searcher.FINISHED
        if done >= self._ctx.config.trials:
            return Searcher.FINISHED
        if done + len(self._ot_trials) - len(self._completed_trials) >= self._ctx.config.trials:
            return None
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the result on the study trial, then tell it (complete, pruned, or failed with the reason)."""
        if trial_id in self._completed_trials:
            return
        trial = self._ot_trials[trial_id]
        config = self._ctx.config
        if error:
            self._lost_worker(trial_id)
        elif not result or OUTCOME_KEY not in result:
            self.interrupt(trial_id)
        else:
            self._tell(trial_id, TrialOutcome.from_json(json.loads(result[OUTCOME_KEY])))
        study = self._ot_study
        log.info("trial %d done, %d of %d finished; best: %s", trial.number, finished_count(study), config.trials,
                 best_so_far(study, config.budget, config.epsilon))

    def interrupt(self, trial_id: str) -> None:
        """Mark a trial stopped before it finished as interrupted and queue its point again (resume re-runs it)."""
        mark_interrupted(self._ot_study, self._ot_trials[trial_id])
        super().on_trial_complete(trial_id, None, error=True)

    def interrupt_unfinished(self) -> int:
        """Interrupt every trial this searcher started and nobody told (the driver is stopping); returns how many."""
        unfinished = [tid for tid in self._ot_trials if tid not in self._completed_trials]
        for trial_id in unfinished:
            self.interrupt(trial_id)
        return len(unfinished)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a run resumes from the Optuna study in the run folder, not from Tune's checkpoint."""

    def _lost_worker(self, trial_id: str) -> None:
        """Tune gave up on a trial for Ray errors: queue its point again, or fail it once it was lost too often."""
        trial = self._ot_trials[trial_id]
        point = json.dumps(trial.params, sort_keys=True)
        self._lost[point] = self._lost.get(point, 0) + 1
        errors = f"{self._tune_dir}/trial-{trial.number:05d}/error.txt in the run folder"
        if self._lost[point] > RELAUNCHES:
            self._tell(trial_id, TrialOutcome("failed", failure=f"Ray trial error (worker or node lost, or a Ray "
                                              f"task failed) {self._lost[point]} times, each after {self._retries} "
                                              f"retries; see {errors}"))
            return
        log.warning("trial %d: Ray gave up on it (see %s); its point runs again", trial.number, errors)
        self.interrupt(trial_id)

    def _tell(self, trial_id: str, outcome: TrialOutcome) -> None:
        """Record the outcome (search.study.record_outcome) and tell OptunaSearch in its terms: values for a
        complete trial, none for a screened one (Optuna's PRUNED), an error for a failed one."""
        config = self._ctx.config
        state = record_outcome(self._ot_trials[trial_id], outcome, config.budget, config.epsilon)
        if state == TrialState.COMPLETE:
            super().on_trial_complete(trial_id, dict(zip(OBJECTIVES, outcome.values or [])))
        else:
            super().on_trial_complete(trial_id, None, error=state == TrialState.FAIL)
