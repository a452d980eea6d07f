"""What the report says, as format-neutral sections; html.py and markdown.py only decide how it looks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from dynamic.runtime import LOSSES
from reports import formatting as fmt
from reports.best import BestFiles
from reports.plots import cost_accuracy_figure, exit_cost_figure, flops_latency_figure, replay_figure
from reports.png import front_png, policy_png
from reports.policy_plots import pareto_heatmap_figure, policy_bar_figure
from reports.records import RunInfo, TrialRecord
from reports.search_plots import history_figures, importance_figures, parallel_figure, screening_figure
from reports.selection import closest_to_epsilon, within_budget

REASON_CHARS = 160
LOAD_SNIPPET = """from pathlib import Path
import torch
from search.model_files import load_pruned

# tensors only, nothing unpickled: rebuilt on the dense model the run searched (your workload's model), with a dynamic
# pick's exits (best/model.exits.pt) or an int8 pick's quantised graph (best/model.int8.pt)
model = load_pruned(Path("."), "best/model.pt", dense_model)
# or the whole pruned nn.Module, a pickle: only from a folder you trust
model = torch.load("best/model.pt", weights_only=False)

# files that need none of this package: python -m search.export . --format all writes export/trial-NNNNN.*
import onnxruntime  # float or int8 (onnxruntime QDQ)
logits = onnxruntime.InferenceSession("export/trial-NNNNN.onnx").run(None, {"input": x.numpy()})[0]
logits = torch.export.load("export/trial-NNNNN.pt2").module()(x)  # float models
state = torch.load("export/trial-NNNNN.state_dict.pt", weights_only=True)  # + trial-NNNNN.policy.json; loaded by
# search.export.load_state_dict_export(path, workload, policy) into the policy's architecture"""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    """A static picture of a figure for report.md (report.html has the interactive one): its file name under
    report-plots/, its alt text, and how to draw it (PNG bytes), called only when the report is written."""

    name: str
    alt: str
    draw: Callable[[], bytes]


@dataclass
class Section:
    """A titled block: paragraphs of plain text, then an optional table, code block, figures and images."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    code: str | None = None
    code_language: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)


@dataclass
class ReportInputs:
    """Everything a report is made from, already read and selected."""

    info: RunInfo
    trials: list[TrialRecord]
    front: list[TrialRecord]
    best: TrialRecord | None
    best_files: BestFiles
    replay: dict[str, Any] | None = None  # python -m search.replay's result for this run, if it was run
    study: optuna.Study | None = None  # for Optuna's own plots of the search; None leaves them out


def _reasons(texts: list[str]) -> str:
    """E.g. '3 × "out of memory"; 1 × "shape mismatch"', most common first."""
    lines = [(t.strip().splitlines() or [""])[0][:REASON_CHARS] for t in texts]
    return "; ".join(f'{n} × "{reason}"' for reason, n in Counter(lines).most_common())


def _run_section(inputs: ReportInputs) -> Section:
    info, trials = inputs.info, inputs.trials
    dense_accuracy = info.dense.get("accuracy")
    threshold = None if dense_accuracy is None else dense_accuracy - info.epsilon
    states = Counter(t.state for t in trials)
    latency = info.latency_setup
    rows = [
        ["workload", info.workload],
        ["cost metric", info.cost_metric],
        ["budget", f"{info.cost_metric} ratio ≤ {info.budget:g}"],
        ["epsilon", f"{info.epsilon:g} ({fmt.points(info.epsilon)}): "
                    f"validation accuracy ≥ {fmt.percent(threshold)}"],
        ["input shape", str(info.input_shape)],
        ["latency setup", ", ".join(f"{k} {v}" for k, v in latency.items()) or fmt.MISSING],
        ["trials", f"{states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} stopped early, "
                   f"{states[TrialState.FAIL]} failed"],
    ]
    in_flight = states[TrialState.RUNNING] + states[TrialState.WAITING]
    if in_flight:
        rows.append(["in flight", f"{in_flight} trials still running or waiting"])
    failures = [t.failure or "no reason recorded" for t in trials if t.state == TrialState.FAIL]
    if failures:
        rows.append(["failure reasons", _reasons(failures)])
    stopped = [t.stopped_reason or "no reason recorded" for t in trials if t.state == TrialState.PRUNED]
    if stopped:
        rows.append(["stopped early because", _reasons(stopped)])
    paragraphs = ["\"Stopped early\" is Optuna's early stop of a hopeless trial (Optuna calls it pruning); "
                  "it has nothing to do with pruning weights."] if stopped else []
    rows.append(["latency table", _table_text(info, trials)])
    for step, reason in info.final_errors.items():
        rows.append([f"final stage: {step}", f"failed ({reason}); the figures here are the search's"])
    return Section("Run", paragraphs, Table(["", "value"], rows))


def prediction_errors(trials: list[TrialRecord]) -> list[float]:
    """|predicted - measured| / measured latency ratio of every complete trial that has both."""
    return [abs(t.predicted_latency_ratio - t.latency_ratio) / t.latency_ratio for t in trials
            if t.is_complete and t.predicted_latency_ratio is not None and t.latency_ratio]


def _table_text(info: RunInfo, trials: list[TrialRecord]) -> str:
    """The latency table in one line: what it modelled, where, and its median prediction error in this run."""
    table = info.latency_table
    if not table:
        return "none: the per-layer latency table could not model this network"
    errors = sorted(prediction_errors(trials))
    median = f"{100 * errors[len(errors) // 2]:.1f}%" if errors else fmt.MISSING
    return (f"{table.get('layers')} layers in {table.get('signatures')} shapes on {table.get('device')}, batch "
            f"{table.get('batch_size')}, {table.get('threads')} threads, explaining "
            f"{100 * table.get('coverage', 0):.0f}% "
            f"of the dense time; median |predicted - measured| / measured latency ratio {median} over "
            f"{len(errors)} trials")


def _signed_points(pick: float | None, dense: float | None) -> str:
    return fmt.MISSING if pick is None or dense is None else f"{100 * (pick - dense):+.2f} pts"


def _quotient(pick: float | None, dense: Any) -> float | None:
    return None if pick is None or not dense else pick / float(dense)


def _stored_or_quotient(stored: float | None, pick: float | None, dense: Any) -> str:
    """The ratio the search stored (measured interleaved), else pick / dense from absolute values."""
    return fmt.ratio(stored if stored is not None else _quotient(pick, dense))


def _dense_pick_table(info: RunInfo, best: TrialRecord | None) -> Table:
    dense = info.dense
    rows = [
        ["validation accuracy", fmt.percent(dense.get("accuracy"))],
        ["test accuracy", fmt.percent(dense.get("test_accuracy"))],
        [fmt.flops_name(best.method if best else None), fmt.count(dense.get("flops"))],
        ["params", fmt.count(dense.get("params"))],
        ["size", fmt.size(dense.get("size_bytes"))],
        ["size, masked weights packed", fmt.size(dense.get("compressed_bytes"))],
        ["latency p50", fmt.millis(dense.get("latency_ms"))],
    ]
    if best is None:
        return Table(["", "dense"], rows)
    if best.dense_latency_ms is not None:  # the dense time taken interleaved with the pick, so the two compare
        rows[-1][1] = fmt.millis(best.dense_latency_ms)
    picked = [
        (fmt.percent(best.accuracy), _signed_points(best.accuracy, dense.get("accuracy"))),
        (fmt.percent(best.test_accuracy), _signed_points(best.test_accuracy, dense.get("test_accuracy"))),
        (fmt.count(best.flops), _stored_or_quotient(best.flops_ratio, best.flops, dense.get("flops"))),
        (fmt.count(best.params), _stored_or_quotient(best.params_ratio, best.params, dense.get("params"))),
        (fmt.size(best.size_bytes), _stored_or_quotient(None, best.size_bytes, dense.get("size_bytes"))),
        (fmt.size(best.compressed_bytes), _stored_or_quotient(best.compressed_ratio, None, None)),
        (fmt.millis(best.latency_ms),
         _stored_or_quotient(best.latency_ratio, best.latency_ms, dense.get("latency_ms"))),
    ]
    return Table(
        ["", "dense", f"pick (trial {best.number})", "pick vs dense"],
        [row + list(pick) for row, pick in zip(rows, picked)],
    )


def none_met_sentence(info: RunInfo, trials: list[TrialRecord]) -> str:
    """The plain statement that no trial met epsilon, naming the in-budget trial that came closest."""
    budget = f"{info.cost_metric} ratio ≤ {info.budget:g}"
    closest = closest_to_epsilon(trials, info.budget)
    if closest is None:
        return f"None met epsilon: no complete trial came within the budget ({budget}), so there is no pick."
    return (
        f"None met epsilon: no complete trial within the budget ({budget}) lost at most "
        f"{fmt.points(info.epsilon)} of validation accuracy. Closest: {fmt.trial_name(closest)}, "
        f"loss {fmt.points(closest.accuracy_loss)} at cost ratio {fmt.ratio(closest.cost_ratio)}."
    )


def _pick_section(inputs: ReportInputs) -> Section:
    info, best = inputs.info, inputs.best
    if best is None:
        paragraphs = [none_met_sentence(info, inputs.trials),
                      "No best/ folder was written; a stale one from an earlier report was removed."]
        return Section("Pick", paragraphs, _dense_pick_table(info, None))
    paragraphs = [
        f"Pick: {fmt.trial_name(best)}, the least {info.cost_metric} among trials within the budget "
        f"that lose at most epsilon: cost ratio {fmt.ratio(best.cost_ratio)} (budget {info.budget:g}), "
        f"validation accuracy {fmt.percent(best.accuracy)} (loss {fmt.points(best.accuracy_loss)}, "
        f"epsilon {fmt.points(info.epsilon)}), test accuracy {fmt.percent(best.test_accuracy)}."
    ]
    if best.latency_ratio_p10 is not None:
        paragraphs.append(f"Its latency ratio was re-measured after the search with many more rounds: "
                          f"{fmt.ratio(best.latency_ratio)} (p10-p90 over rounds {fmt.ratio(best.latency_ratio_p10)}"
                          f"-{fmt.ratio(best.latency_ratio_p90)}); a model whose re-measured ratio misses the budget "
                          "is not the pick.")
    flag = fmt.latency_flag(best)
    if flag:
        paragraphs.append(f"Note: the pick is {flag}.")
    if inputs.best_files == BestFiles.WRITTEN:
        paragraphs.append("Saved as best/model.pt, with its policy in best/policy.json.")
    else:
        paragraphs.append(f"Its model file ({best.model_path or 'no model_path recorded'}) is missing, "
                          "so best/ holds only policy.json.")
    return Section("Pick", paragraphs, _dense_pick_table(info, best))


def _pareto_notes(record: TrialRecord, inputs: ReportInputs) -> str:
    info = inputs.info
    notes = []
    if inputs.best is not None and record.number == inputs.best.number:
        notes.append("pick")
    if not within_budget(record, info.budget):
        notes.append("over budget")
    if record.accuracy_loss is not None and record.accuracy_loss > info.epsilon:
        notes.append("loss > epsilon")
    flag = fmt.latency_flag(record)
    if flag:
        notes.append(flag)
    return "; ".join(notes)


def _flops_ratio(record: TrialRecord) -> str:
    """The FLOPs ratio, marked "(nonzero)" for a masked model: its zeros are skipped only by sparse kernels."""
    text = fmt.ratio(record.flops_ratio)
    return f"{text} (nonzero)" if fmt.is_masked(record.method) and record.flops_ratio is not None else text


def _batch_ratio(record: TrialRecord, batch: str) -> str:
    entry = (record.latency_by_batch or {}).get(batch) or {}
    return fmt.ratio(entry.get("latency_ratio"))


def _pareto_section(inputs: ReportInputs) -> Section:
    batch = str(inputs.info.latency_setup.get("batch_size", 1))
    other = sorted({b for r in inputs.front for b in (r.latency_by_batch or {}) if b != batch}, key=int)
    headers = ["trial", "label", "method", "val acc", "test acc", "loss", "cost ratio", "FLOPs ratio",
               "predicted latency ratio", f"latency ratio (batch {batch})",
               *(f"latency ratio (batch {b})" for b in other), "params ratio", "size ratio",
               "packed size ratio", "note"]
    rows = [
        [str(r.number), r.label or "search", fmt.model_kind(r), fmt.percent(r.accuracy),
         fmt.percent(r.test_accuracy), fmt.points(r.accuracy_loss), fmt.ratio(r.cost_ratio),
         _flops_ratio(r), fmt.ratio(r.predicted_latency_ratio), fmt.ratio(r.latency_ratio),
         *(_batch_ratio(r, b) for b in other), fmt.ratio(r.params_ratio), fmt.ratio(r.size_ratio),
         fmt.ratio(r.compressed_ratio), _pareto_notes(r, inputs)]
        for r in inputs.front
    ]
    if not rows:
        return Section("Pareto front", ["No trial has completed, so there is no Pareto front yet."])
    paragraphs = [
        f"{len(rows)} complete trials are not dominated in (cost ratio, validation accuracy); cheapest first. "
        "Test accuracy is measured only for these models. FLOPs, predicted and measured latency ratios sit side by "
        "side because fewer FLOPs do not always mean less time; latency is timed interleaved with dense at the "
        f"search's batch size ({batch}) and, for these models, at {', '.join(other) or 'no other'} too. A masked "
        "model's FLOPs are nonzero FLOPs: dense kernels still compute its zeros. Size is the whole saved module; "
        "packed size is its weights with masked zeros packed as a bitmask (the form of model.weights.pt), what it "
        "ships at."
    ]
    finals = [r for r in inputs.front if r.final_epochs is not None]
    if finals:
        headers.insert(4, "val acc in search")
        for row, record in zip(rows, inputs.front):
            row.insert(4, fmt.percent(record.search_accuracy))
        paragraphs.append(f"{len(finals)} of them had the final fine-tune ({finals[0].final_epochs:g} epochs, "
                          "--final-epochs): their accuracy, costs and model file come from it, and the pick is made "
                          "on them; the search-time validation accuracy stands beside it.")
    return Section("Pareto front", paragraphs, Table(headers, rows))


def _plots_section(inputs: ReportInputs) -> Section:
    figures = [cost_accuracy_figure(inputs.info, inputs.trials, inputs.front, inputs.best)]
    paragraphs = ["Hover a point for its trial, method and ratios. The dashed line is the budget, "
                  "the dotted one dense accuracy minus epsilon."]
    latency = flops_latency_figure(inputs.trials, inputs.front)
    if latency is None:
        paragraphs.append("No trial has both a FLOPs ratio and a latency ratio, so there is no latency plot.")
    else:
        figures.append(latency)
        paragraphs.append("Below the y = x line a model is faster than its FLOPs suggest; above it, slower.")
    info, trials, front, best = inputs.info, inputs.trials, inputs.front, inputs.best
    image = Image("front.png", "cost ratio vs validation accuracy", lambda: front_png(info, trials, front, best))
    return Section("Plots", paragraphs, figures=figures, images=[image])


def _policy_section(inputs: ReportInputs) -> Section | None:
    """What the pick kept of each layer, and every Pareto model's per-layer sparsity (from the trials' layer rows)."""
    best = inputs.best
    bar = None if best is None else policy_bar_figure(best)
    heatmap = pareto_heatmap_figure(inputs.front)
    if bar is None and heatmap is None:
        return None
    paragraphs = ["Measured on each model: output channels physically kept (a removed block keeps none) and weights "
                  "left nonzero (a masked layer keeps its channels but zeroes weights), as shares of dense, layers in "
                  "network order."]
    figures, images = [], []
    if bar is not None:
        figures.append(bar)
        images.append(Image("policy.png", "the pick's kept share of dense per layer", lambda: policy_png(best)))
    if heatmap is not None:
        figures.append(heatmap)
        paragraphs.append("The heat map gives each Pareto model's sparsity per layer (1 - nonzero weights / dense "
                          "weights), cheapest first; hover a cell for the method, criterion and recovery recipe.")
    return Section("Policy", paragraphs, figures=figures, images=images)


def _search_section(inputs: ReportInputs) -> Section | None:
    """The search over time, which knobs mattered, and screening's proxy against the accuracy reached."""
    if inputs.study is None:
        return None
    states = Counter(t.state for t in inputs.trials)
    paragraphs = [f"History and importances use the {states[TrialState.COMPLETE]} complete trials; the "
                  f"{states[TrialState.PRUNED]} stopped early and {states[TrialState.FAIL]} failed ones have no "
                  "objective values and are counted apart (Run above). A trial is feasible when it lies within the "
                  "budget and loses at most epsilon."]
    figures = history_figures(inputs.study)
    importances, reason = importance_figures(inputs.study)
    figures += importances
    if reason:
        paragraphs.append(reason)
    if states[TrialState.COMPLETE]:
        figures.append(parallel_figure(inputs.study))
    screening, sentence = screening_figure(inputs.trials)
    paragraphs.append(sentence)
    if screening is not None:
        figures.append(screening)
    return Section("Search", paragraphs, figures=figures)


def _range_text(value: Any) -> str:
    """A knob's range or choices in a few words."""
    if isinstance(value, dict):
        if "low" in value and "high" in value:
            return f"{value['low']:g} to {value['high']:g}"
        if "choices" in value:
            return ", ".join(str(c) for c in value["choices"])
        return "; ".join(f"{k}: {_range_text(v)}" for k, v in value.items() if k != "meaning")
    if isinstance(value, list):
        return ", ".join(_range_text(v) for v in value) or "none"
    return str(value)


def _space_section(info: RunInfo) -> Section:
    """The searched space as a table (knob, range or choices, meaning); the channel groups summarised in a line."""
    space = info.space
    meanings = space.get("meanings") or {}
    skipped = {"groups", "group_depth", "group_sensitivity", "meanings", "allocation"}
    rows = [[knob, _range_text(value), value.get("meaning", "") if isinstance(value, dict) else meanings.get(knob, "")]
            for knob, value in space.items() if knob not in skipped]
    for name, formula in (space.get("allocation") or {}).items():
        rows.append([f"allocation: {name}", formula, meanings.get("allocation", "")])
    groups = space.get("groups") or []
    paragraphs = [f"{len(groups)} channel groups (coupled layers pruned together): "
                  + ", ".join(f"{g['name']} ({g['channels']} channels)" for g in groups)] if groups else []
    return Section("Searched space", paragraphs, Table(["knob", "range or choices", "meaning"], rows))


SAVED_COST = {"flops": "FLOPs", "latency": "predicted latency", "params": "parameters", "size": "bytes"}  # map's cost


def _sensitivity_section(info: RunInfo) -> Section | None:
    """The run's sensitivity map: each group pruned alone, its accuracy after batch-norm recalibration per ratio."""
    found = info.sensitivity
    if not found:
        return None
    ratios = found["ratios"]
    dense = found["dense_accuracy"]
    efficiency = info.space.get("group_sensitivity") or {}
    cost = SAVED_COST[found.get("cost", "flops")]
    rows = [[group, *(f"{fmt.percent(a)} ({fmt.points(a - dense)})" for a in accuracy),
             f"{100 * sum(found['saved'][group]) / len(ratios):.1f}%", f"{efficiency.get(group, 0.0):.2f}"]
            for group, accuracy in sorted(found["accuracy"].items(), key=lambda item: -efficiency.get(item[0], 0.0))]
    paragraphs = [
        f"Each channel group pruned alone ({found['method']}, {found['criterion']}) at each ratio, batch norm "
        f"recalibrated, screened on the first validation samples (dense: {fmt.percent(dense)}); measured once, in "
        f"{found['seconds']:.0f} s. Efficiency is the {cost} saved per accuracy lost: the `sensitivity` allocation "
        "prunes a group in proportion to it (to a searched power), most efficient first below."]
    order = info.space.get("depth", {}).get("order")
    if found.get("block_accuracy") and isinstance(order, list):
        blocks = ", ".join(f"{b} ({fmt.percent(found['block_accuracy'][b])}, "
                           f"{fmt.points(found['block_accuracy'][b] - dense)}, saves "
                           f"{100 * found['block_saved'][b]:.1f}%)" for b in order)
        paragraphs.append(f"Each removable block removed alone, screened the same way; a point that removes k blocks "
                          f"removes the first k in this order (most {cost} saved per accuracy lost first): {blocks}.")
    table = Table(["group", *(f"at {r:g}" for r in ratios), f"{cost} saved (mean)", "efficiency"], rows)
    return Section("Sensitivity map", paragraphs, table)


CHECK_NAMES = {"sample_rate": "sample rate", "unsure_checks": "unsure checks", "alarm_checks": "alarm checks",
               "max_scale": "max scale"}  # a fitted runtime setting's keys as the report names them


def _checks_text(entry: dict, named: bool = False) -> str:
    """A fitted runtime setting as "0.03 / 0.1 / 0.1 / 3", or `named` ("sample rate 0.03, ..."); checks fitted before
    max_scale joined the grid have three."""
    keys = [key for key in CHECK_NAMES if key in entry]
    if named:
        return ", ".join(f"{CHECK_NAMES[key]} {entry[key]:g}" for key in keys)
    return " / ".join(f"{entry[key]:g}" for key in keys)


def _dynamic_section(inputs: ReportInputs) -> Section | None:
    """A dynamic pick: where its inputs leave and what each path costs, and the runtime on a replayed stream."""
    best = inputs.best
    if best is None or not best.exit_counts or not best.exit_flops:
        return None
    dense_flops = (best.flops or 0) / (best.flops_ratio or 1.0)
    total = max(sum(best.exit_counts), 1)
    rows = [[f"exit {k + 1}" if k < len(best.exit_counts) - 1 else "no exit (whole backbone)",
             fmt.ratio(f / dense_flops), f"{100 * c / total:.1f}%"]
            for k, (f, c) in enumerate(zip(best.exit_flops, best.exit_counts))]
    paragraphs = [f"The pick adapts to each input: it leaves at the first exit whose head is confident enough. Its "
                  f"FLOPs ratio {fmt.ratio(best.flops_ratio)} is the mean over the validation split; its latency ratio "
                  f"{fmt.ratio(best.latency_ratio)} the mean of batch-1 timings over a stream of validation inputs, "
                  "interleaved with dense. best/runtime.json holds the settings of the runtime that adapts its "
                  "thresholds online (dynamic.runtime.DynamicRuntime.load); `python -m search.replay RUN_DIR` "
                  "replays a stream through it."]
    fitted = best.runtime_checks
    if fitted:
        tried = "; ".join(f"{_checks_text(t)}: clean {t.get('clean_cost', 0):.3f}, worst "
                          f"{t.get('worst_loss', 0):.4f}" for t in fitted.get("tried", []))
        legend = " / ".join(CHECK_NAMES[key] for key in CHECK_NAMES if key in fitted["settings"])
        paragraphs.append(f"The runtime's checks were fitted on a validation stream of {fitted.get('length', '?')} "
                          f"inputs, clean then noisy (search.stream_replay.fit_checks): kept "
                          f"{_checks_text(fitted['settings'], named=True)}, the cheapest on the clean part whose worst "
                          f"window stayed within {fitted.get('hold', 0):g} of epsilon (else the lowest worst window). "
                          f"Tried ({legend}): {tried}.")
    figures = [exit_cost_figure(best)]
    replay = inputs.replay
    if replay:
        stream = replay["stream"]
        loss = replay["settings"].get("loss", "disagreement")  # replays from before the accuracy loss: disagreement
        clean = "" if replay.get("clean_cost") is None else f", {replay['clean_cost']:.3f} on the clean part"
        at_budget = ("" if replay.get("static_pick_cost") is None
                     else f"; a static model at the budget {replay['static_pick_cost']:g}")
        paragraphs.append(f"Replayed: {stream['length']} test inputs, the first {stream['clean']} clean, then noise "
                          f"growing to {stream['noise']:g}: mean cost {replay['mean_cost']:.3f} of dense{clean} "
                          f"(static backbone {replay['static_cost']:.3f}{at_budget}); worst loss over windows of "
                          f"{replay['settings']['window']} inputs after the first {stream.get('warmup', 0)} "
                          f"({LOSSES[loss]}): "
                          f"{replay['worst_loss']:.4f} against epsilon {replay['settings']['epsilon']:.4f}.")
        figures.append(replay_figure(replay["windows"], replay["settings"]["epsilon"], replay["static_cost"], loss,
                                     replay.get("static_pick_cost")))  # replays before it was written: none
    return Section("Dynamic pick", paragraphs, Table(["path", "FLOPs ratio", "inputs"], rows), figures=figures)


def _load_section(inputs: ReportInputs) -> Section:
    if inputs.best_files != BestFiles.WRITTEN:
        return Section("Loading a model", [
            "There is no pick to load. Any trial's saved model lies at its model_path (trials.csv), relative to the "
            "run folder, with its tensors beside it (model.weights.pt for model.pt): rebuild it as below."
        ], code=LOAD_SNIPPET.replace("best/", "trials/NNNNN/"), code_language="python")
    return Section(
        "Loading the pick",
        ["From the run folder: best/model.weights.pt holds only tensors and shapes, loaded with weights_only=True and "
         "rebuilt on the dense model (load_pruned); best/model.pt holds the whole pruned nn.Module, a pickle that can "
         "run code: load it only from a folder you trust. search.export writes files that run without this package: "
         "ONNX (onnxruntime), PT2 (torch.export; float models) and a state_dict with its policy."],
        code=LOAD_SNIPPET,
        code_language="python",
    )


def build_sections(inputs: ReportInputs) -> list[Section]:
    """The report's sections in reading order."""
    return [
        _run_section(inputs),
        _pick_section(inputs),
        _pareto_section(inputs),
        _plots_section(inputs),
        *filter(None, [_policy_section(inputs), _search_section(inputs)]),
        Section("Configuration", code=json.dumps(inputs.info.config, indent=2), code_language="json"),
        _space_section(inputs.info),
        *filter(None, [_dynamic_section(inputs), _sensitivity_section(inputs.info)]),
        _load_section(inputs),
    ]


def report_title(info: RunInfo) -> str:
    return f"Pruning-policy search: {info.workload}"
