"""What the exit mechanism costs at batch 1: an early-exit ResNet-20 run as segments (dynamic/segments.py) against the
same model on forward hooks that raise, each exit path forced, timed interleaved with dense (search.measure, batch
norms folded as every model is timed). Untrained heads: the mechanism's time, not the model's accuracy. Timings are
ratios measured side by side: run it alone.

    python benchmarks/exit_segments.py [--threads 2] [--repeats 300]
"""
from __future__ import annotations

import argparse

import torch

from dynamic import EarlyExitModel
from dynamic.exits import as_linear_head, exit_head
from dynamic.segments import Segment
from search.measure import compare_latency
from search.workloads.models import resnet20

NOT_TAKEN = 0.99  # a threshold an untrained head's confidence does not reach: consulted, never taken


class HookedExits(EarlyExitModel):
    """The early-exit model as it ran before segments: heads on forward hooks, a confident one raising."""

    def _segments_for(self) -> list[Segment] | None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = resnet20().eval()
    heads = [as_linear_head(exit_head(16, 10).eval()), as_linear_head(exit_head(32, 10).eval())]
    example = torch.randn(1, 1, 28, 28)
    print("| path taken | segments | hooks | saved |")
    print("| --- | --- | --- | --- |")
    for path in range(3):
        thresholds = [0.0 if path == index else NOT_TAKEN for index in range(2)]
        models = {"dense": dense,
                  "segments": EarlyExitModel(dense, ["layer1", "layer2"], heads, thresholds, "pool-linear"),
                  "hooks": HookedExits(dense, ["layer1", "layer2"], heads, thresholds, "pool-linear")}
        times = compare_latency(models, example, reference="dense", threads=args.threads, repeats=args.repeats)
        name = ("first exit", "second exit", "no exit (both heads consulted)")[path]
        segments, hooks = times["segments"]["ratio"], times["hooks"]["ratio"]
        print(f"| {name} | {segments:.3f} | {hooks:.3f} | {hooks - segments:.3f} of dense |", flush=True)


if __name__ == "__main__":
    main()
