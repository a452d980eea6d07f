"""The in-process backend: an ask/tell loop over the study with a progress bar and the best pick so far."""
from __future__ import annotations

import logging
import time

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from reports import select_best
from reports.records import trial_record
from search.outcome import failed, run_point
from search.screening import screen_bar
from search.study import finished_count, mark_interrupted, record_outcome
from search.trial import TrialContext

log = logging.getLogger(__name__)


def best_so_far(study: optuna.Study, budget: float, epsilon: float) -> str:
    """A short text of the current pick (reports' selection rule), for the progress bar."""
    best = select_best([trial_record(t) for t in study.get_trials(deepcopy=False)], budget, epsilon)
    if best is None:
        return "none feasible yet"
    return f"#{best.number} {best.method} cost {best.cost_ratio:.2f} acc {best.accuracy:.4f}"


def run_optuna(study: optuna.Study, ctx: TrialContext, *, show_progress: bool = True) -> None:
    """Run trials until `--trials` have finished (counting earlier runs) or `--timeout` passes.

    Each trial's outcome (search.outcome: complete, screened, failed) goes to the study's recorder; Ctrl-C marks
    the running trial interrupted (it is queued again on resume) and re-raises.
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
                screen = screen_bar(study, ctx.dense.accuracy)
                outcome = run_point(ctx, ctx.space.suggest(trial), trial.number, label, screen)
            except KeyboardInterrupt:
                mark_interrupted(study, trial)
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as error:  # noqa: BLE001 - a point the space cannot suggest fails that trial only
                outcome = failed(error)
            state = record_outcome(trial, outcome, config.budget, config.epsilon)
            study.tell(trial, outcome.values, state=state)
            done += 1
            bar.update(1)
            bar.set_postfix_str(f"best: {best_so_far(study, config.budget, config.epsilon)}")
    finally:
        bar.close()
