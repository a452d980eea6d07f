"""How much accuracy a longer or chained final fine-tune buys a baseline's model: the headroom a search has over a
baseline when both get the same final fine-tune.

At each budget, Torch-Pruning's global group-L2 ranking fitted to that share of the dense FLOPs
(benchmarks/combinations.pruned_structure) is recovered under each schedule, from each seed, with the product's final
recipe (distillation weight search.finalize.FINAL_DISTILL, the workload's learning rate and momentum setting, batch
norms recalibrated first). A schedule is one fine-tune ("1": one epoch) or fine-tunes resumed one after another
("0.25+0.5+1+1": what successive halving that carries weights into the final stage would give). `--reconstruct`
refits the pruned layers by least squares first (pruners/reconstruct.py). Accuracy only, no timing: it may share the
machine, only more slowly.

    python -m benchmarks.finetune_headroom [--workload fashion-resnet20] [--budgets 0.25,0.5,0.75]
                                          [--schedules "1;3"] [--seeds 3] [--reconstruct]
                                          [--out bench-out/finetune-headroom.jsonl]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.combinations import TEMPERATURE, pruned_structure
from pruners import bake
from pruners.reconstruct import reconstruct
from search.finalize import FINAL_DISTILL
from search.measure import count_flops
from search.recover import recover
from search.training import evaluate
from search.workloads import Workload, build_workload
from search.workloads.cache import default_cache_dir


def parse_schedule(text: str) -> tuple[float, ...]:
    """'0.25+0.5+1' -> (0.25, 0.5, 1.0): fine-tunes run one after another on the same weights."""
    return tuple(float(part) for part in text.split("+"))


def recovered_by_schedule(structure: nn.Module, workload: Workload, schedule: tuple[float, ...],
                          seed: int) -> nn.Module:
    """A copy of `structure` fine-tuned by each step of `schedule` in turn (each a one-cycle fine-tune of its own,
    keeping the better of before and after on validation, as every recovery does), from `seed`."""
    model = copy.deepcopy(structure)
    torch.manual_seed(seed)
    for epochs in schedule:
        recover(model, workload, epochs=epochs, lr=workload.finetune_lr, distill=FINAL_DISTILL,
                temperature=TEMPERATURE)
    return bake(model.cpu().eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="fashion-resnet20")
    parser.add_argument("--budgets", default="0.25,0.5,0.75")
    parser.add_argument("--schedules", default="1;3", help="';'-separated schedules, each epochs joined by '+'")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reconstruct", action="store_true", help="refit the pruned layers before fine-tuning")
    parser.add_argument("--out", type=Path, default=Path("bench-out/finetune-headroom.jsonl"))
    args = parser.parse_args()
    workload = build_workload(args.workload, seed=0, cache_dir=default_cache_dir(), data_dir=None, device="cpu")
    dense_flops = count_flops(workload.model, workload.example_inputs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"dense test accuracy {100 * evaluate(workload.model, workload.test):.2f}%")
    print("| FLOPs | schedule | test accuracy per seed | mean ± sd | seconds per seed |")
    print("| --- | --- | --- | --- | --- |")
    for budget in (float(b) for b in args.budgets.split(",")):
        structure = pruned_structure(workload, budget)
        if args.reconstruct:
            reconstruct(structure, workload.model, next(iter(workload.calibration))[0])
        ratio = count_flops(structure, workload.example_inputs) / dense_flops
        for text in args.schedules.split(";"):
            tests, seconds = [], []
            for seed in range(args.seeds):
                started = time.perf_counter()
                model = recovered_by_schedule(structure, workload, parse_schedule(text), seed)
                seconds.append(time.perf_counter() - started)
                tests.append(evaluate(model, workload.test))
                with args.out.open("a") as out:
                    out.write(json.dumps({"workload": args.workload, "budget": budget, "flops_ratio": ratio,
                                          "schedule": text, "reconstruct": args.reconstruct, "seed": seed,
                                          "val_accuracy": evaluate(model, workload.val), "test_accuracy": tests[-1],
                                          "seconds": seconds[-1]}) + "\n")
            spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
            print(f"| {ratio:.3f} | {text} | {', '.join(f'{100 * t:.2f}' for t in tests)} | "
                  f"{100 * statistics.fmean(tests):.2f}% ± {100 * spread:.2f} | {statistics.fmean(seconds):.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
