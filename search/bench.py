"""`python -m search.bench`: the searched policy against the baselines a user would pick by hand, per budget.

Arms at each budget, one dense model, the same final fine-tune for every final model:
- search: TPE over the structured methods that really run faster (channel, layer);
- search_all: TPE over every method (masked ones included), reported beside it;
- random_search: random sampling over the same space as `search`, the same number of trials;
- uniform_l1, tp_global, uniform_magnitude: the hand-picked baselines (the studies' warm-start trials).
A search arm's final model comes from the product's own final stage (search --final-epochs): its --finalists most
accurate Pareto models within the budget are re-pruned and fine-tuned for --final-epochs, and the most accurate of
them by validation accuracy is its pick. A baseline is its warm-start trial, re-pruned and fine-tuned the same way.
Writes DIR/bench.json and DIR/bench.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from typing import Any

from scipy.stats import spearmanr

from pruners import available_methods, faster_methods, get_method
from reports import TrialRecord, load_records
from search.config import ConfigError, RunConfig, parse_config
from search.finalize import refinetune
from search.reference import measure_dense
from search.run import configure_logging, finish, prepare, run_backend
from search.study import storage_url
from search.workloads import WorkloadError, build_workload

log = logging.getLogger("search.bench")
STRUCTURED = tuple(faster_methods())
EVERY_METHOD = tuple(m for m in available_methods() if get_method(m).knob != "pattern")
SEARCH_ARMS = {"search": (STRUCTURED, "tpe"), "search_all": (EVERY_METHOD, "tpe"), "random_search": (STRUCTURED, "random")}
BASELINES = ("uniform_l1", "tp_global", "uniform_magnitude")
BENCH_TARGET_FLOOR = 0.9  # the benchmark asks for the most accurate model at each budget: aim trials near it


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, RunConfig]:
    parser = argparse.ArgumentParser(prog="python -m search.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.25,0.5,0.75", help="comma-separated budgets (cost ratios)")
    parser.add_argument("--final-epochs", type=float, default=1.0, help="fine-tuning of every final model, in epochs")
    parser.add_argument("--finalists", type=int, default=2,
                        help="models per search arm given the final fine-tune (its most accurate within the budget)")
    args, rest = parser.parse_known_args(argv)
    try:
        budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        raise ConfigError(f"--budgets {args.budgets!r} is not a comma-separated list of numbers") from None
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise ConfigError(f"--budgets {args.budgets}: every budget must be in (0, 1]")
    if not args.final_epochs > 0:
        raise ConfigError(f"--final-epochs {args.final_epochs} must be above 0: every final model is fine-tuned")
    if args.finalists < 1:
        raise ConfigError(f"--finalists {args.finalists} must be 1 or more")
    args.budgets = budgets
    if not any(a == "--target-floor" or a.startswith("--target-floor=") for a in rest):
        rest = [*rest, "--target-floor", str(BENCH_TARGET_FLOOR)]
    return args, parse_config(rest)


def most_accurate_within(trials: list[TrialRecord], budget: float, label: str | None = None) -> TrialRecord | None:
    """The complete trial with the best validation accuracy at or under the budget (optionally of one label)."""
    fitting = [t for t in trials if t.is_complete and t.cost_ratio is not None and t.cost_ratio <= budget + 1e-9
               and (label is None or t.label == label)]
    return max(fitting, key=lambda t: (t.accuracy, -t.cost_ratio), default=None)


def run_bench(args: argparse.Namespace, base: RunConfig) -> dict[str, Any]:
    """Run every arm at every budget; returns bench.json's dict."""
    workload = build_workload(base.workload, seed=base.seed, cache_dir=base.cache_dir, data_dir=base.data_dir,
                              device=base.device)
    dense = measure_dense(workload, device=base.device, threads=base.threads, batch_size=base.batch_size)
    results: dict[str, dict[str, Any]] = {}
    searched: list[TrialRecord] = []
    by_budget: dict[str, dict[str, float | None]] = {}
    for budget in args.budgets:
        row: dict[str, Any] = {}
        at_budget: list[TrialRecord] = []
        for arm, (methods, sampler) in SEARCH_ARMS.items():
            config = replace(base, budget=budget, methods=methods, sampler=sampler, final_epochs=args.final_epochs,
                             out=base.out / f"budget-{budget:g}" / arm)
            started = time.perf_counter()
            study, ctx = prepare(config, workload, dense)
            run_backend(study, ctx)
            finish(study, ctx, show=False, finalists=args.finalists, most_accurate=True)
            trials = load_records(storage_url(config.out)).trials
            at_budget += load_records(storage_url(config.out), final=False).trials
            finalized = [t for t in trials if t.final_epochs is not None]
            row[arm] = _record_row(most_accurate_within(finalized, budget), time.perf_counter() - started)
            if arm == "search_all":
                for name in BASELINES:
                    row[name] = _baseline_row(most_accurate_within(trials, 1.0, f"baseline:{name}"), workload, dense,
                                              config)
        for arm, result in row.items():
            log.info("budget %g %-17s %s", budget, arm, result)
        results[f"{budget:g}"] = row
        searched += at_budget
        by_budget[f"{budget:g}"] = _screening(at_budget)
    return {"workload": base.workload, "trials": base.trials, "finetune_epochs": base.finetune_epochs,
            "final_epochs": args.final_epochs, "finalists": args.finalists, "dense": dense.to_json(),
            "budgets": results, "screening": {**_screening(searched), "by_budget": by_budget}}


def _record_row(pick: TrialRecord | None, seconds: float) -> dict | None:
    """A search arm's result: its pick after the final fine-tune, and the wall time of the whole arm."""
    if pick is None:
        return None
    return {"accuracy": pick.accuracy, "test_accuracy": pick.test_accuracy, "flops_ratio": pick.flops_ratio,
            "latency_ratio": pick.latency_ratio, "seconds": seconds, "trial": pick.number, "method": pick.method}


def _baseline_row(pick: TrialRecord | None, workload, dense, config: RunConfig) -> dict | None:  # noqa: ANN001
    """A baseline's warm-start trial, re-pruned and given the same final fine-tune as the search arms' finalists."""
    if pick is None or pick.policy is None:
        return None
    started = time.perf_counter()
    final = refinetune(pick, workload, dense, config)
    return {"accuracy": final.accuracy, "test_accuracy": final.test_accuracy, "flops_ratio": final.flops_ratio,
            "latency_ratio": final.latency_ratio, "seconds": (pick.seconds or 0.0) + time.perf_counter() - started,
            "trial": pick.number, "method": pick.method}


def _screening(trials: list[TrialRecord]) -> dict[str, float | None]:
    """How well the screened (BN-recalibrated) accuracy ranks the fine-tuned one, and what a screen costs."""
    pairs = [(t.accuracy_before_finetune, t.accuracy) for t in trials
             if t.is_complete and t.accuracy_before_finetune is not None and t.accuracy_after_finetune is not None]
    seconds = [t.screen_seconds for t in trials if t.screen_seconds is not None]
    rho = float(spearmanr(*zip(*pairs)).statistic) if len(pairs) >= 3 else None
    return {"spearman": rho, "pairs": len(pairs),
            "seconds_per_candidate": sum(seconds) / len(seconds) if seconds else None}


def bench_markdown(bench: dict[str, Any]) -> str:
    """bench.md: one table per budget, test accuracy, FLOPs and latency ratios side by side, and the wall time paid."""
    lines = [f"# Benchmark: {bench['workload']}", "",
             f"{bench['trials']} trials per search, {bench['finetune_epochs']} fine-tune epochs per trial, "
             f"{bench['final_epochs']} final epochs for every final model ({bench['finalists']} finalists per search "
             "arm, its most accurate within the budget). Dense: validation "
             f"{100 * bench['dense']['accuracy']:.2f}%, test {100 * bench['dense']['test_accuracy']:.2f}%.", ""]
    for budget, row in bench["budgets"].items():
        lines += [f"## Budget {budget}", "", "| arm | method | val acc | test acc | FLOPs ratio | latency ratio | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for arm, r in row.items():
            if r is None:
                lines.append(f"| {arm} | none within budget | | | | | |")
                continue
            lines.append(f"| {arm} | {r['method']} | {100 * r['accuracy']:.2f}% | {100 * r['test_accuracy']:.2f}% | "
                         f"{r['flops_ratio']:.3f} | {r['latency_ratio']:.3f} | {r['seconds']:.0f} |")
        lines.append("")
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


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        args, base = parse_args(argv)
        bench = run_bench(args, base)
    except (ConfigError, WorkloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    base.out.mkdir(parents=True, exist_ok=True)
    (base.out / "bench.json").write_text(json.dumps(bench, indent=2))
    (base.out / "bench.md").write_text(bench_markdown(bench))
    print(bench_markdown(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
