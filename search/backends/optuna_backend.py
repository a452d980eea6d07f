"""The in-process backend: an ask/tell loop over the study with a progress bar and the best pick so far."""
from __future__ import annotations

import logging
import math
import time
import traceback

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from reports import select_best
from reports.records import trial_record
from search.recover import ScreenedOut
from search.screening import screening_bar
from search.study import INTERRUPTED, finished_count
from search.trial import TrialContext, evaluate_point

log = logging.getLogger(__name__)


def record(trial: optuna.Trial, attrs: dict, budget: float, epsilon: float) -> list[float]:
    """Store a finished trial's attributes and constraints; returns its objective values."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("accuracy_loss", attrs["accuracy_loss"] - epsilon)
    trial.set_constraint("cost_ratio", attrs["cost_ratio"] - budget)
    return [attrs["cost_ratio"], attrs["accuracy_loss"]]


def record_screened(trial: optuna.Trial, attrs: dict, budget: float, epsilon: float) -> None:
    """Store a screened-out trial's attributes and its constraints from the screened accuracy. TPE ranks constrained
    trials by their violation, so a stopped candidate counts as a poor point; unconstrained, a PRUNED trial can fill
    TPE's "good" group when no complete trial is feasible, and draw the sampler back to where it was stopped."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("accuracy_loss", attrs["accuracy_loss"] - epsilon)
    trial.set_constraint("cost_ratio", attrs["fitted_ratio"] - budget)


def best_so_far(study: optuna.Study, budget: float, epsilon: float) -> str:
    """A short text of the current pick (reports' selection rule), for the progress bar."""
    best = select_best([trial_record(t) for t in study.get_trials(deepcopy=False)], budget, epsilon)
    if best is None:
        return "none feasible yet"
    return f"#{best.number} {best.method} cost {best.cost_ratio:.2f} acc {best.accuracy:.4f}"


def screen_bar(study: optuna.Study, ctx: TrialContext) -> dict | None:
    """The screening bar (search.screening) from this study's finished trials (None until enough are seen), with the
    front in the run's own cost metric: a candidate's fitted ratio is in that metric too."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pairs = [(t.user_attrs["accuracy_before_finetune"], t.user_attrs["accuracy_after_finetune"])
             for t in complete if t.user_attrs.get("accuracy_after_finetune") is not None]
    points = [(t.user_attrs["cost_ratio"], t.user_attrs["accuracy"], t.user_attrs["accuracy_before_finetune"])
              for t in complete if t.user_attrs.get("accuracy_after_finetune") is not None]
    return screening_bar(pairs, points, ctx.dense.accuracy)


def run_optuna(study: optuna.Study, ctx: TrialContext, *, show_progress: bool = True) -> None:
    """Run trials until `--trials` have finished (counting earlier runs) or `--timeout` passes.

    A candidate screened out (search.screening) is stopped early, with its screened accuracy recorded;
    a trial that raises or goes NaN is recorded as failed with its reason; Ctrl-C marks the running
    trial interrupted (it is queued again on resume) and re-raises.
    """
    config = ctx.config
    started = time.monotonic()
    done = finished_count(study)
    bar = tqdm(total=config.trials, initial=done, desc="trials", unit="trial", disable=not show_progress)
    try:
        while done < config.trials:
            if config.timeout is not None and time.monotonic() - started > config.timeout:
                log.warning("--timeout %.0f s reached after %d trials; rerun with the same --out to continue",
                            config.timeout, done)
                break
            trial = study.ask()
            label = trial.user_attrs.get("label", "search")
            trial.set_user_attr("label", label)
            try:
                params = ctx.space.suggest(trial)
                attrs = evaluate_point(ctx, params, trial.number, label, screen=screen_bar(study, ctx))
                values = record(trial, attrs, config.budget, config.epsilon)
                if not all(math.isfinite(v) for v in values):
                    raise FloatingPointError(f"objective values {values} are not finite")
                study.tell(trial, values)
            except ScreenedOut as stop:
                record_screened(trial, stop.attrs, config.budget, config.epsilon)
                study.tell(trial, state=TrialState.PRUNED)
            except KeyboardInterrupt:
                trial.set_user_attr("failure", INTERRUPTED)
                study.tell(trial, state=TrialState.FAIL)
                if trial.params:
                    study.enqueue_trial(trial.params, user_attrs={"label": label})
                raise
            except Exception as error:  # noqa: BLE001 - any failure of one trial is recorded, the search goes on
                reason = f"{type(error).__name__}: {error}"
                log.warning("trial %d failed: %s", trial.number, reason)
                log.debug("%s", traceback.format_exc())
                trial.set_user_attr("failure", reason[:2000])
                study.tell(trial, state=TrialState.FAIL)
            done += 1
            bar.update(1)
            bar.set_postfix_str(f"best: {best_so_far(study, config.budget, config.epsilon)}")
    finally:
        bar.close()
