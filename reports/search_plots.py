"""The search, visible: Optuna's own history, importance and parallel-coordinate plots of the study, one per objective
where Optuna needs a single target, and screening's proxy against the accuracy the models reached."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from reports.correlation import rank_correlation
from reports.plots import HOVER, hover_text
from reports.records import TrialRecord

# The study's two objectives (search.study.METRIC_NAMES), by index into trial.values.
OBJECTIVES = (("cost ratio", 0), ("accuracy loss", 1))
IMPORTANCE_TREES = 16  # fANOVA's forest: 64 (Optuna's default) takes 4x as long and ranks the same knobs first here


def _target(index: int) -> Callable[[FrozenTrial], float]:
    return lambda trial: trial.values[index]


def _quietly(plot: Callable[[], go.Figure]) -> go.Figure:
    """Optuna's plot without its experimental-feature and "no feasible trials" chatter on the run's log."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return plot()
    finally:
        optuna.logging.set_verbosity(level)


def history_figures(study: optuna.Study) -> list[go.Figure]:
    """Each objective against trial number, feasible and infeasible trials apart (Optuna reads the constraints)."""
    figures = []
    for name, index in OBJECTIVES:
        figure = _quietly(lambda n=name, i=index: optuna.visualization.plot_optimization_history(
            study, target=_target(i), target_name=n))
        figure.update_layout(title=f"Optimisation history: {name}", height=420)
        figure.for_each_trace(lambda trace: trace.update(showlegend=True, name="infeasible (over budget or epsilon)"),
                              selector={"name": "Infeasible Trial"})  # Optuna draws them grey with no legend entry
        figures.append(figure)
    return figures


def importance_figures(study: optuna.Study) -> tuple[list[go.Figure], str | None]:
    """Hyper-parameter importances (fANOVA, seeded so a report rebuilds the same) for each objective, over the knobs
    every complete trial has; no figures and the reason where Optuna cannot compute them."""
    from optuna.importance import FanovaImportanceEvaluator  # it loads sklearn.ensemble: here, not at every start

    figures = []
    for name, index in OBJECTIVES:
        evaluator = FanovaImportanceEvaluator(n_trees=IMPORTANCE_TREES, seed=0)
        try:
            figure = _quietly(lambda n=name, i=index, e=evaluator: optuna.visualization.plot_param_importances(
                study, evaluator=e, target=_target(i), target_name=n))
        except (ValueError, RuntimeError) as error:
            return [], f"Importances could not be computed: {str(error).splitlines()[0]}"
        figure.update_layout(title=f"Hyper-parameter importance for {name} (fANOVA)", height=420)
        figures.append(figure)
    return figures, None


def parallel_figure(study: optuna.Study) -> go.Figure:
    """Every complete trial's knobs as a parallel-coordinate view, coloured by accuracy loss."""
    figure = _quietly(lambda: optuna.visualization.plot_parallel_coordinate(
        study, target=_target(1), target_name="accuracy loss"))
    figure.update_layout(title="Knobs of every complete trial, coloured by accuracy loss", height=480)
    return figure


def screening_figure(trials: list[TrialRecord]) -> tuple[go.Figure | None, str]:
    """Screened accuracy (pruned, batch norm recalibrated, no fine-tune) against the fine-tuned one and, where the
    final stage ran, the final one; stopped trials apart. Returns the figure (None without pairs) and a sentence."""
    pairs = [t for t in trials if t.is_complete and t.accuracy_before_finetune is not None
             and t.accuracy_after_finetune is not None]
    stopped = [t for t in trials if not t.is_complete and t.accuracy_before_finetune is not None]
    if len(pairs) < 2:
        return None, "Fewer than two trials have both a screened and a fine-tuned accuracy: no screening plot."
    finals = [t for t in pairs if t.final_epochs is not None]
    figure = go.Figure()
    traces = [(pairs, [t.accuracy_after_finetune for t in pairs], "fine-tuned in the search", "circle"),
              (finals, [t.accuracy for t in finals], "after the final fine-tune", "diamond"),
              (stopped, [t.accuracy_before_finetune for t in stopped], "stopped early (never fine-tuned; y = x)", "x")]
    for records, accuracy, name, symbol in traces:
        if records:
            figure.add_trace(go.Scatter(x=[t.accuracy_before_finetune for t in records], y=accuracy, mode="markers",
                                        name=name, marker={"symbol": symbol, "size": 9},
                                        text=[hover_text(t) for t in records], hovertemplate=HOVER))
    figure.update_layout(title="Screening: screened accuracy vs the accuracy reached",
                         xaxis_title="screened accuracy (batch norm recalibrated, no fine-tune)",
                         yaxis_title="validation accuracy", xaxis_tickformat=".0%", yaxis_tickformat=".1%",
                         template="plotly_white", height=460)
    rho = rank_correlation([t.accuracy_before_finetune for t in pairs], [t.accuracy_after_finetune for t in pairs])
    correlation = "undefined (one side is constant)" if rho is None else f"{rho:.2f}"
    return figure, (f"Spearman rank correlation of screened and fine-tuned accuracy over {len(pairs)} trials: "
                    f"{correlation}; {len(stopped)} trials were stopped on their screened accuracy alone.")
