"""`python -m reports.compare RUN_A RUN_B ...`: the Pareto fronts of several runs (other budgets, cost metrics,
methods) overlaid in one self-contained HTML page, read from each run's Optuna study."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import plotly.graph_objects as go
from plotly.colors import qualitative

from reports import formatting as fmt
from reports.atomic import write_text
from reports.build import storage_for
from reports.content import Section, Table, none_met_sentence
from reports.html import render_html
from reports.plots import HOVER, hover_text
from reports.records import ReportError, RunInfo, TrialRecord, load_records
from reports.selection import TOLERANCE, pareto_front, select_best, sizes_count, within_budget

COLORS = qualitative.Plotly
SHARED_COLOR = "#555"  # a budget or threshold line that holds for several runs
MIXED_AXIS = "cost ratio (each run's metric)"
FRONT_HEADERS = ["trial", "label", "method", "val acc", "loss", "cost ratio", "FLOPs ratio", "latency ratio", "note"]


@dataclass(frozen=True)
class ComparedRun:
    """One run folder read back: its short name, its run-level info, trials, Pareto front and pick."""

    name: str
    info: RunInfo
    trials: list[TrialRecord]
    front: list[TrialRecord]
    best: TrialRecord | None

    @property
    def label(self) -> str:
        """The run in legends and titles: folder, workload, cost metric and budget, so runs tell apart."""
        return f"{self.name}: {self.info.workload}, {self.info.cost_metric} ≤ {self.info.budget:g}"


def run_names(run_dirs: list[Path]) -> list[str]:
    """Each folder's own name, or the path as given where two runs share a name."""
    names = [d.resolve().name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs)]


def read_run(run_dir: Path, name: str) -> ComparedRun:
    """The run in run_dir; ReportError naming the folder and the fix where it holds no run."""
    try:
        records = load_records(storage_for(run_dir, None))
    except ReportError as error:
        raise ReportError(f"{run_dir} is not a run folder ({error}); pass folders that "
                          "`python -m search.run --out FOLDER` wrote") from error
    info, trials = records.info, records.trials
    front = pareto_front(trials, by_size=sizes_count(info.config))
    return ComparedRun(name, info, trials, front, select_best(trials, info.budget, info.epsilon))


def flops_front(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials not dominated in (FLOPs ratio, accuracy), cheapest first: a run searched on another cost, put on
    the axis every run shares."""
    on_front = {r.number for r in pareto_front([replace(t, cost_ratio=t.flops_ratio) for t in trials])}
    return sorted((t for t in trials if t.number in on_front), key=lambda t: (t.flops_ratio, -t.accuracy, t.number))


def threshold(run: ComparedRun) -> float | None:
    """Dense validation accuracy minus epsilon: the least accuracy the run accepts."""
    dense = run.info.dense.get("accuracy")
    return None if dense is None else dense - run.info.epsilon


def shared_lines(runs: list[ComparedRun], value_of: Callable[[ComparedRun], float | None]
                 ) -> list[tuple[float, str, str]]:
    """(value, names, colour) per distinct value, so runs that share a budget or threshold share one labelled line."""
    groups: dict[float, list[int]] = {}
    for index, run in enumerate(runs):
        value = value_of(run)
        if value is not None:
            groups.setdefault(value, []).append(index)
    return [(value, ", ".join(runs[i].name for i in members),
             COLORS[members[0] % len(COLORS)] if len(members) == 1 else SHARED_COLOR)
            for value, members in groups.items()]


def front_trace(records: list[TrialRecord], x: list[float | None], name: str, color: str) -> go.Scatter:
    """One run's front as a line of points, each with the report's hover box."""
    return go.Scatter(x=x, y=[r.accuracy for r in records], text=[hover_text(r) for r in records],
                      hovertemplate=HOVER, mode="lines+markers", name=name, legendgroup=name,
                      marker={"color": color, "size": 9}, line={"color": color})


def add_thresholds(figure: go.Figure, runs: list[ComparedRun]) -> None:
    """Each run's dense accuracy minus epsilon as a dotted line."""
    for value, names, color in shared_lines(runs, threshold):
        figure.add_hline(y=value, line_dash="dot", line_color=color, annotation_position="bottom left",
                         annotation_text=f"dense − epsilon {fmt.percent(value)} ({names})")


def cost_axis(runs: list[ComparedRun]) -> str:
    """The x axis of the cost figure: the shared metric, or each run's own where the runs minimise different costs."""
    metrics = {run.info.cost_metric for run in runs}
    return f"cost ratio ({metrics.pop()}, pruned / dense)" if len(metrics) == 1 else MIXED_AXIS


def layout(figure: go.Figure, title: str, xaxis_title: str) -> go.Figure:
    """The look both figures share: accuracy as percent, the legend under the plot (run labels are long)."""
    figure.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title="validation accuracy",
                         yaxis_tickformat=".1%", template="plotly_white", height=600,
                         legend={"orientation": "h", "yanchor": "top", "y": -0.15})
    return figure


def cost_figure(runs: list[ComparedRun]) -> go.Figure:
    """Every run's front in its own cost ratio, its pick starred, its budget dashed, dense minus epsilon dotted."""
    figure = go.Figure()
    for index, run in enumerate(runs):
        color = COLORS[index % len(COLORS)]
        figure.add_trace(front_trace(run.front, [r.cost_ratio for r in run.front], run.label, color))
        if run.best is not None:
            figure.add_trace(go.Scatter(
                x=[run.best.cost_ratio], y=[run.best.accuracy], text=[hover_text(run.best)], hovertemplate=HOVER,
                mode="markers", name=f"{run.name}: pick", legendgroup=run.label,
                marker={"color": color, "size": 18, "symbol": "star", "line": {"color": "black", "width": 1}}))
    for value, names, color in shared_lines(runs, lambda run: run.info.budget):
        figure.add_vline(x=value, line_dash="dash", line_color=color, annotation_text=f"budget {value:g} ({names})")
    add_thresholds(figure, runs)
    return layout(figure, "Pareto fronts: cost ratio vs validation accuracy", cost_axis(runs))


def flops_figure(runs: list[ComparedRun]) -> go.Figure:
    """Every run's trials ranked again on FLOPs alone: fronts of different cost metrics on one axis."""
    figure = go.Figure()
    for index, run in enumerate(runs):
        front = flops_front(run.trials)
        figure.add_trace(front_trace(front, [r.flops_ratio for r in front], run.label, COLORS[index % len(COLORS)]))
    add_thresholds(figure, runs)
    return layout(figure, "Fronts in FLOPs: FLOPs ratio vs validation accuracy", "FLOPs ratio (pruned / dense)")


def overview_section(runs: list[ComparedRun]) -> Section:
    """Both figures, and what their axes mean for these runs."""
    paragraphs = [f"The Pareto fronts of {len(runs)} runs: each run's complete trials not dominated in (cost ratio, "
                  "validation accuracy), its pick starred, its budget dashed, dense accuracy minus epsilon dotted. "
                  "Hover a point for its trial and every cost ratio."]
    metrics = sorted({run.info.cost_metric for run in runs})
    if len(metrics) > 1:
        paragraphs.append(f"These runs minimise different costs ({', '.join(metrics)}): the first figure's x axis is "
                          "each run's own cost ratio, so its fronts do not compare point by point; the second one "
                          "does.")
    paragraphs.append("The second figure ranks each run's trials again on FLOPs ratio alone: its front in FLOPs.")
    return Section("Fronts", paragraphs, figures=[cost_figure(runs), flops_figure(runs)])


def front_note(record: TrialRecord, run: ComparedRun) -> str:
    """Why a front model is or is not the pick: "pick", "over budget", "loss > epsilon"."""
    notes = ["pick"] if run.best is not None and record.number == run.best.number else []
    if not within_budget(record, run.info.budget):
        notes.append("over budget")
    if record.accuracy_loss is not None and record.accuracy_loss > run.info.epsilon + TOLERANCE:
        notes.append("loss > epsilon")
    return "; ".join(notes)


def run_section(run: ComparedRun, run_dir: Path) -> Section:
    """One run: where it lies, its pick (or why none) and its front as a table."""
    best, info = run.best, run.info
    pick = (f"Pick: {fmt.trial_name(best)}, cost ratio {fmt.ratio(best.cost_ratio)} (budget {info.budget:g}), "
            f"validation accuracy {fmt.percent(best.accuracy)} (loss {fmt.points(best.accuracy_loss)}, epsilon "
            f"{fmt.points(info.epsilon)})." if best is not None else none_met_sentence(info, run.trials))
    complete = sum(t.is_complete for t in run.trials)
    paragraphs = [f"{run_dir}: {info.workload}, {info.cost_metric} ratio ≤ {info.budget:g}, epsilon "
                  f"{fmt.points(info.epsilon)}. Pareto front: {len(run.front)} of {complete} complete trials.", pick]
    rows = [[str(r.number), r.label or "search", fmt.model_kind(r), fmt.percent(r.accuracy),
             fmt.points(r.accuracy_loss), fmt.ratio(r.cost_ratio), fmt.ratio(r.flops_ratio), fmt.ratio(r.latency_ratio),
             front_note(r, run)] for r in run.front]
    return Section(run.label, paragraphs, Table(FRONT_HEADERS, rows))


def compare_page(run_dirs: list[Path]) -> str:
    """The whole HTML page for these run folders; ReportError naming the first folder that holds no run."""
    runs = [read_run(run_dir, name) for run_dir, name in zip(run_dirs, run_names(run_dirs))]
    sections = [overview_section(runs), *(run_section(run, d) for run, d in zip(runs, run_dirs))]
    return render_html(f"Pareto fronts of {len(runs)} runs compared", sections)


def main(argv: list[str] | None = None) -> int:
    """Write the comparison page and print its path; exit 2 with one line for a folder that is not a run."""
    parser = argparse.ArgumentParser(prog="python -m reports.compare", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (each holds study.db)")
    parser.add_argument("--out", type=Path, default=Path("compare.html"),
                        help="the HTML page to write (default: compare.html in the current folder)")
    args = parser.parse_args(argv)
    try:
        page = compare_page(args.run_dirs)
    except ReportError as error:
        print(f"python -m reports.compare: error: {error}", file=sys.stderr)
        return 2
    write_text(args.out, page)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
