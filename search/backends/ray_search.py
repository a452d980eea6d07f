"""OptunaSearch over the run's own study: Tune asks it for points and it records each result as the optuna backend does.

Ray's OptunaSearch already asks and tells a study in any Optuna storage, define-by-run; this subclass adds what the
study must hold besides the objectives: labels, user attributes, constraints, failures with their reason, trials
interrupted before they finished (failed, and their point queued again), and `--timeout` (no new trials after it).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.backends.optuna_backend import best_so_far, record
from search.backends.ray_trial import ATTRS_KEY, FAILURE_KEY, META_KEY, OBJECTIVES
from search.study import INTERRUPTED, finished_count
from spaces import SearchSpace

log = logging.getLogger(__name__)


class StudySearch(OptunaSearch):
    """Tune searcher whose every trial is a trial of `study`, recorded with its attributes and constraints."""

    def __init__(self, study: optuna.Study, space: SearchSpace, *, trials: int, budget: float, epsilon: float,
                 timeout: float | None, retries: int, tune_dir: str) -> None:
        self._search_space = space
        self._target, self._budget, self._epsilon = trials, budget, epsilon
        self._retries, self._tune_dir = retries, tune_dir
        self._deadline = None if timeout is None else time.monotonic() + timeout
        super().__init__(space=self._define, metric=list(OBJECTIVES), mode=["min", "min"], sampler=study.sampler,
                         study_name=study.study_name, storage=study._storage)  # noqa: SLF001 - share the run's storage

    def _define(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run: the space's point, plus the study trial's number and label for the trainable."""
        label = trial.user_attrs.get("label", "search")
        trial.set_user_attr("label", label)
        return {**self._search_space.suggest(trial), META_KEY: {"number": trial.number, "label": label}}

    def suggest(self, trial_id: str) -> dict | None:
        """A new point, or FINISHED once `--timeout` has passed (running trials still finish)."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            log.warning("--timeout reached after %d trials; rerun with the same --out to continue",
                        finished_count(self._ot_study))
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the result on the study trial, then tell it (complete, or failed with the reason)."""
        if trial_id in self._completed_trials:
            return
        trial = self._ot_trials[trial_id]
        if error:
            self._fail(trial_id, f"Ray trial error (worker or node lost, or a Ray task failed) after {self._retries} "
                                 f"retries; see {self._tune_dir}/trial-{trial.number:05d}/error.txt in the run folder")
        elif not result or (ATTRS_KEY not in result and FAILURE_KEY not in result):
            self.interrupt(trial_id)
        elif FAILURE_KEY in result:
            log.debug("trial %d: %s", trial.number, result.get("traceback", ""))
            self._fail(trial_id, result[FAILURE_KEY])
        else:
            record(trial, json.loads(result[ATTRS_KEY]), self._budget, self._epsilon)
            super().on_trial_complete(trial_id, {key: result[key] for key in OBJECTIVES})
        study = self._ot_study
        log.info("trial %d done, %d of %d finished; best: %s", trial.number, finished_count(study), self._target,
                 best_so_far(study, self._budget, self._epsilon))

    def interrupt(self, trial_id: str) -> None:
        """Mark a trial stopped before it finished as interrupted and queue its point again (resume re-runs it)."""
        trial = self._ot_trials[trial_id]
        trial.set_user_attr("failure", INTERRUPTED)
        super().on_trial_complete(trial_id, None, error=True)
        if trial.params:
            self._ot_study.enqueue_trial(trial.params, user_attrs={"label": trial.user_attrs.get("label", "search")})

    def interrupt_unfinished(self) -> int:
        """Interrupt every trial this searcher started and nobody told (the driver is stopping); returns how many."""
        unfinished = [tid for tid in self._ot_trials if tid not in self._completed_trials]
        for trial_id in unfinished:
            self.interrupt(trial_id)
        return len(unfinished)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a run resumes from the Optuna study in the run folder, not from Tune's checkpoint."""

    def _fail(self, trial_id: str, reason: str) -> None:
        trial = self._ot_trials[trial_id]
        log.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr("failure", reason[:2000])
        super().on_trial_complete(trial_id, None, error=True)
