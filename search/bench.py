"""`python -m search.bench`: the searched policy against the baselines a user would pick by hand, per budget.

Arms at each FLOPs budget (--budgets), one dense model:
- search: TPE over the structured methods that really run faster (channel, with block removal);
- search_own: the same study, its own trials only (the warm-start baselines left out);
- search_all: TPE over every method (masked ones included), reported beside it;
- random_search: random sampling over the same space as `search`, the same number of trials;
- uniform_l1, tp_global, uniform_magnitude: the hand-picked baselines (the studies' warm-start trials).
At each latency budget (--latency-budgets): search and search_own against uniform_l1 and tp_global, every one
fitted to the same measured latency; with `--arms ...,dynamic`, also `dynamic` (the search over the dynamic methods:
a channel-pruned backbone with early exits, priced by its mean measured batch-1 latency) against `search`, the best
static channel-pruned model the search found.
Fair by construction: every arm has one candidate, and every candidate gets the same final fine-tune (--final-epochs,
the product's recipe, re-pruned from its policy) under each of --seeds seeds; rows give the mean and the spread, and
the verdict calls a difference a win only beyond the spread. A baseline's candidate is its warm-start trial; a search
arm's is the winner of successive halving over its --promote most accurate trials within budget (search.promotion:
selection only, the final fine-tune starts again from the dense model), paid for in the arm's wall time. An arm with
no trial within budget offers its cheapest, marked over budget.
Writes DIR/bench.json and DIR/bench.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import optuna

from pruners import available_methods, faster_methods, get_method
from reports import TrialRecord, load_records
from reports.atomic import write_text
from reports.correlation import rank_correlation
from reports.selection import TOLERANCE
from search.baselines import BASELINE_LABEL
from search.config import MIN_BUDGET, ConfigError, RunConfig, parse_config
from search.finalize import FinalModel, refinetune
from search.pipeline import USER_ERRORS, prepare, run_backend
from search.promotion import successive_halving
from search.reference import DenseReference, measure_dense
from search.run import configure_logging
from search.study import storage_url
from search.trial import TrialContext
from search.workloads import Workload, build_workload

log = logging.getLogger("search.bench")
STRUCTURED = tuple(faster_methods())
EVERY_METHOD = tuple(m for m in available_methods() if get_method(m).knob != "pattern")
DYNAMIC = tuple(m for m in available_methods() if get_method(m).dynamic)
SEARCH_ARMS = {"search": (STRUCTURED, "tpe"), "search_all": (EVERY_METHOD, "tpe"),
               "random_search": (STRUCTURED, "random"), "dynamic": (DYNAMIC, "tpe")}
SEARCH_ARMS_BY_COST = {"flops": ("search", "search_all", "random_search"),  # the searches run at each budget kind
                       "latency": ("search", "dynamic")}  # the structured search, and dynamic if asked for
BASELINES = ("uniform_l1", "tp_global", "uniform_magnitude")
STRUCTURED_BASELINES = ("uniform_l1", "tp_global")
ARMS = ("search", "search_own", "search_all", "random_search", *BASELINES, "dynamic")
DEFAULT_ARMS = tuple(a for a in ARMS if a != "dynamic")  # dynamic runs only when asked for: a search more per budget
BENCH_TARGET_FLOOR = 1.0  # the benchmark asks for the most accurate model at each budget: aim every trial at it


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, RunConfig]:
    parser = argparse.ArgumentParser(prog="python -m search.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.25,0.5,0.75", help="comma-separated budgets (cost ratios)")
    parser.add_argument("--latency-budgets", default="",
                        help="comma-separated latency budgets: the structured search against the structured baselines "
                             "fitted to the same measured latency (default: none)")
    parser.add_argument("--final-epochs", type=float, default=1.0, help="fine-tuning of every final model, in epochs")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"comma-separated arms to report, among {','.join(ARMS)} (default: all but dynamic, "
                             "which runs at latency budgets only)")
    parser.add_argument("--promote", type=int, default=4,
                        help="successive halving over each search arm's N best trials within budget before its final "
                             "fine-tune (1: the most accurate goes on as it is)")
    parser.add_argument("--promote-epochs", type=float, default=0.5,
                        help="fine-tuning of the first promotion rung, in epochs (doubled per rung)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds each arm's final fine-tune is repeated under (mean and spread reported)")
    args, rest = parser.parse_known_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown or not args.arms:
        raise ConfigError(f"--arms {','.join(unknown) or '(empty)'}: choose among {','.join(ARMS)}")
    args.budgets = _budgets("--budgets", args.budgets)
    args.latency_budgets = _budgets("--latency-budgets", args.latency_budgets) if args.latency_budgets else []
    if not args.budgets and not args.latency_budgets:
        raise ConfigError("--budgets and --latency-budgets are both empty: give at least one budget")
    if not args.final_epochs > 0:
        raise ConfigError(f"--final-epochs {args.final_epochs} must be above 0: every final model is fine-tuned")
    if args.promote < 1 or not args.promote_epochs > 0:
        raise ConfigError(f"--promote {args.promote} must be 1 or more and --promote-epochs {args.promote_epochs} "
                          "above 0")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds} must be 1 or more")
    if not any(a == "--target-floor" or a.startswith("--target-floor=") for a in rest):
        rest = [*rest, "--target-floor", str(BENCH_TARGET_FLOOR)]
    return args, parse_config(rest)


def _budgets(flag: str, text: str) -> list[float]:
    try:
        budgets = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of numbers") from None
    if any(not MIN_BUDGET <= b <= 1 for b in budgets):
        raise ConfigError(f"{flag} {text}: every budget must be in [{MIN_BUDGET:g}, 1]")
    return budgets


def own_trials(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The search's own trials: the warm-start baselines left out."""
    return [t for t in trials if not (t.label or "").startswith(BASELINE_LABEL)]


def arm_candidate(trials: list[TrialRecord], budget: float) -> TrialRecord | None:
    """An arm's one candidate: its complete trial with the best validation accuracy at or under the budget, else
    (no trial landed within it: measured latency can miss a fitted target) its cheapest, which the row marks over
    budget."""
    complete = [t for t in trials if t.is_complete and t.cost_ratio is not None and t.policy]
    fitting = [t for t in complete if t.cost_ratio <= budget + TOLERANCE]
    if fitting:
        return max(fitting, key=lambda t: (t.accuracy, -t.cost_ratio))
    return min(complete, key=lambda t: (t.cost_ratio, -t.accuracy), default=None)


def searched_candidate(study: optuna.Study, ctx: TrialContext, trials: list[TrialRecord],
                       args: argparse.Namespace) -> TrialRecord | None:
    """A search arm's candidate: the winner of successive halving over its --promote best trials within budget
    (search.promotion; its last rung as long as the final fine-tune), else its most accurate (arm_candidate)."""
    if args.promote > 1:
        winner = successive_halving(study, ctx, trials, args.promote, args.promote_epochs, args.final_epochs)
        if winner is not None:
            return winner
    return arm_candidate(trials, ctx.config.budget)


def bench_points(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(cost metric, budget) of every row block: the FLOPs budgets, then the latency budgets."""
    return [("flops", b) for b in args.budgets] + [("latency", b) for b in args.latency_budgets]


def run_bench(args: argparse.Namespace, base: RunConfig) -> dict[str, Any]:
    """Search every arm at every budget, then give each arm's one candidate the same final fine-tune over --seeds
    seeds; returns bench.json's dict."""
    workload = build_workload(base.workload, seed=base.seed, cache_dir=base.cache_dir, data_dir=base.data_dir,
                              device=base.device)
    dense = measure_dense(workload, device=base.device, threads=base.threads, batch_size=base.batch_size)
    results: dict[str, dict[str, Any]] = {}
    searched: list[TrialRecord] = []
    by_budget: dict[str, dict[str, float | None]] = {}
    for cost, budget in bench_points(args):
        key = f"{budget:g}" if cost == "flops" else f"latency-{budget:g}"
        candidates: dict[str, tuple[TrialRecord | None, float, RunConfig]] = {}
        at_budget: list[TrialRecord] = []
        for arm, (methods, sampler) in SEARCH_ARMS.items():
            if arm not in SEARCH_ARMS_BY_COST[cost]:
                continue
            wanted = arm in args.arms or (arm == "search_all" and "uniform_magnitude" in args.arms)
            if arm != "search" and not wanted:
                continue  # the search always runs: it is what the benchmark measures
            config = replace(base, cost=cost, budget=budget, methods=methods, sampler=sampler,
                             out=base.out / key / arm)
            started = time.perf_counter()
            study, ctx = prepare(config, workload, dense)
            run_backend(study, ctx)
            trials = load_records(storage_url(config.out), final=False).trials
            at_budget += trials
            picks = {arm: searched_candidate(study, ctx, trials, args)}
            if arm == "search":
                picks["search_own"] = searched_candidate(study, ctx, own_trials(trials), args)
            seconds = time.perf_counter() - started  # the search, its sensitivity map and every promotion rung
            candidates.update({name: (pick, seconds, config) for name, pick in picks.items()})
            for name in STRUCTURED_BASELINES if cost == "latency" else BASELINES:  # the same point in every study
                pick = next((t for t in trials if t.label == f"{BASELINE_LABEL}{name}" and t.policy), None)
                if pick is not None and name not in candidates:
                    candidates[name] = (pick, 0.0, config)
        candidates = {arm: c for arm, c in candidates.items() if arm in args.arms}
        row = final_rows(candidates, workload, dense, budget, args)
        for arm, result in row.items():
            log.info("%s %g %-17s %s", cost, budget, arm, result)
        results[key] = row
        searched += at_budget
        by_budget[key] = _screening(at_budget)
    return {"workload": base.workload, "trials": base.trials, "finetune_epochs": base.finetune_epochs,
            "final_epochs": args.final_epochs, "seeds": args.seeds, "finalists": 1, "dense": dense.to_json(),
            "budgets": results, "screening": {**_screening(searched), "by_budget": by_budget}}


def final_rows(candidates: dict[str, tuple[TrialRecord | None, float, RunConfig]], workload: Workload,
               dense: DenseReference, budget: float, args: argparse.Namespace) -> dict[str, dict | None]:
    """Every arm's candidate re-pruned and fine-tuned --final-epochs under each of --seeds seeds, the same recipe for
    all; a candidate two arms share (the search's pick is often its own trial) is fine-tuned once for both."""
    done: dict[tuple[str, int], tuple[list[FinalModel], float]] = {}
    row: dict[str, dict | None] = {}
    for arm, (pick, search_seconds, config) in candidates.items():
        if pick is None or pick.policy is None:
            row[arm] = None
            continue
        which = (str(config.out), pick.number)
        if which not in done:
            started = time.perf_counter()
            runs = [refinetune(pick, workload, dense, replace(config, final_epochs=args.final_epochs,
                                                              seed=config.seed + s))
                    for s in range(args.seeds)]
            done[which] = (runs, time.perf_counter() - started)
        runs, final_seconds = done[which]
        prune_seconds = search_seconds or (pick.seconds or 0.0)  # a baseline pays its own trial: prune and fit
        row[arm] = arm_row(pick, runs, prune_seconds + final_seconds, budget, config.cost)
    return row


def arm_row(pick: TrialRecord, runs: list[FinalModel], seconds: float, budget: float, cost: str) -> dict[str, Any]:
    """One arm's result: means over the seeds' final fine-tunes, each seed's test accuracy, the spread, the costs
    (FLOPs from the model, latency ratio the median of the runs' interleaved timings), over_budget where the final
    model's cost misses the budget."""
    tests = [run.test_accuracy for run in runs]
    cost_ratio = statistics.median(run.measured.ratio(cost) for run in runs)
    return {"accuracy": statistics.fmean(run.accuracy for run in runs), "test_accuracy": statistics.fmean(tests),
            "flops_ratio": runs[0].measured.flops_ratio,
            "latency_ratio": statistics.median(run.measured.latency_ratio for run in runs),
            "seconds": seconds, "trial": pick.number, "method": pick.method, "label": pick.label,
            "test_accuracy_runs": tests, "test_accuracy_mean": statistics.fmean(tests),
            "test_accuracy_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0, "final_finetunes": len(runs),
            "cost_ratio": cost_ratio, "over_budget": cost_ratio > budget + TOLERANCE}


def _screening(trials: list[TrialRecord]) -> dict[str, float | None]:
    """How well the screened (BN-recalibrated) accuracy ranks the fine-tuned one, and what a screen costs. The
    fine-tuned accuracy, not the kept one (the better of the two): where fine-tuning hurt, the kept accuracy is the
    screened one itself and would count as a perfect pair."""
    pairs = [(t.accuracy_before_finetune, t.accuracy_after_finetune) for t in trials
             if t.is_complete and t.accuracy_before_finetune is not None and t.accuracy_after_finetune is not None]
    seconds = [t.screen_seconds for t in trials if t.screen_seconds is not None]
    rho = rank_correlation(*zip(*pairs)) if len(pairs) >= 3 else None
    return {"spearman": rho, "pairs": len(pairs),
            "seconds_per_candidate": sum(seconds) / len(seconds) if seconds else None}


def bench_markdown(bench: dict[str, Any]) -> str:
    """bench.md: one table per budget (mean and spread of test accuracy over the seeds, FLOPs and latency ratios,
    the wall time paid, over-budget rows marked), the verdict of the search against the best structured baseline,
    and how well screening ranked."""
    lines = [f"# Benchmark: {bench['workload']}", "",
             f"{bench['trials']} trials per search, {bench['finetune_epochs']} fine-tune epochs per trial. Every arm's "
             f"one candidate (its most accurate within the budget) gets the same final fine-tune of "
             f"{bench['final_epochs']} epochs under {bench['seeds']} seeds. Dense: validation "
             f"{100 * bench['dense']['accuracy']:.2f}%, test {100 * bench['dense']['test_accuracy']:.2f}%.", ""]
    for budget, row in bench["budgets"].items():
        lines += [f"## Budget {budget}", "",
                  "| arm | method | val acc | test acc (mean ± sd) | runs | FLOPs ratio | latency ratio | seconds | |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for arm, r in row.items():
            if r is None:
                lines.append(f"| {arm} | no complete trial | | | | | | | |")
                continue
            runs = ", ".join(f"{100 * t:.2f}" for t in r["test_accuracy_runs"])
            note = "over budget" if r["over_budget"] else ""
            lines.append(f"| {arm} | {r['method']} | {100 * r['accuracy']:.2f}% | {100 * r['test_accuracy_mean']:.2f}"
                         f"% ± {100 * r['test_accuracy_sd']:.2f} | {runs} | {r['flops_ratio']:.3f} | "
                         f"{r['latency_ratio']:.3f} | {r['seconds']:.0f} | {note} |")
        lines += ["", verdict(row), *([dynamic_verdict(row)] if "dynamic" in row else []), ""]
    s = bench["screening"]
    rho = "n/a" if s["spearman"] is None else f"{s['spearman']:.3f}"
    cost = "n/a" if s["seconds_per_candidate"] is None else f"{s['seconds_per_candidate']:.2f} s"
    lines += [f"Screening: Spearman {rho} between BN-recalibrated and fine-tuned validation accuracy over "
              f"{s['pairs']} trials; {cost} per candidate (fitting the point to its target, pruning, batch-norm "
              "recalibration, the screening samples)."]
    for budget, at in s.get("by_budget", {}).items():
        rho = "n/a" if at["spearman"] is None else f"{at['spearman']:.3f}"
        lines.append(f"- budget {budget}: Spearman {rho} over {at['pairs']} trials")
    lines.append("")
    return "\n".join(lines)


def verdict(row: dict[str, dict | None]) -> str:
    """search_own against the best structured baseline within budget, by mean test accuracy."""
    return compared(row, "search_own", STRUCTURED_BASELINES)


def dynamic_verdict(row: dict[str, dict | None]) -> str:
    """dynamic against the structured search's pick: the best static channel-pruned model at the same budget."""
    return compared(row, "dynamic", ("search",))


def compared(row: dict[str, dict | None], arm: str, against: tuple[str, ...]) -> str:
    """`arm` against the best of `against` within budget, by mean test accuracy: a win or a loss only beyond the two
    arms' spreads added (their standard deviations over the seeds), else a tie."""
    if arm not in row or not any(name in row for name in against):
        return f"Verdict: {arm} against {', '.join(against)}: not benchmarked here (add them to --arms)."
    own = row.get(arm)
    others = [(name, row[name]) for name in against if row.get(name) and not row[name]["over_budget"]]
    if own is None or own["over_budget"] or not others:
        return f"Verdict: {arm} against {', '.join(against)}: nothing to compare (no model within budget on one side)."
    name, best = max(others, key=lambda item: item[1]["test_accuracy_mean"])
    gap = own["test_accuracy_mean"] - best["test_accuracy_mean"]
    if own["final_finetunes"] < 2:
        return f"Verdict: {arm} {100 * gap:+.2f} pt against {name}, one seed: no spread to judge it by."
    spread = own["test_accuracy_sd"] + best["test_accuracy_sd"]
    word = "win" if gap > spread else "loss" if gap < -spread else "tie (within the spread)"
    return f"Verdict: {arm} {100 * gap:+.2f} pt against {name}, spread {100 * spread:.2f} pt: {word}."


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        args, base = parse_args(argv)
        bench = run_bench(args, base)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_text(base.out / "bench.json", json.dumps(bench, indent=2))
    write_text(base.out / "bench.md", bench_markdown(bench))
    print(bench_markdown(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
