"""Does a FLOPs cut buy a latency cut? Dense vs masked vs channel-pruned ResNet-20, timed interleaved.

Masks (unstructured, N:M) lower the FLOP count but run on the same dense kernels; channel pruning
shrinks the tensors. Timings are ratios to the dense model measured in the same process (DESIGN.md:
absolute times on a shared machine drift). Weights are untrained: latency does not depend on them.

    python benchmarks/latency_vs_flops.py [--batch-sizes 1,64] [--threads 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from pruners import bake, prune
from search.measure import compare_latency, count_flops, count_params
from search.workloads.models import resnet20

VARIANTS: dict[str, dict] = {
    "dense": {},
    "dense-copy": {},  # a second dense model: its ratio shows the noise floor of the measurement
    "magnitude-50%": {"method": "magnitude", "sparsity": 0.5},
    "magnitude-75%": {"method": "magnitude", "sparsity": 0.75},
    "nm-2:4": {"method": "nm", "sparsity": 0.5, "n": 2, "m": 4},
    "channel-30%": {"method": "channel", "sparsity": 0.3},
    "channel-50%": {"method": "channel", "sparsity": 0.5},
    "channel-50%-round8": {"method": "channel", "sparsity": 0.5, "round_to": 8},
}


def build_variants(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, nn.Module]:
    """The dense model and one pruned copy per entry of VARIANTS, masks baked in as shipped models are.

    Baking matters: live torch.nn.utils.prune hooks add a weight * mask product to every forward.
    """
    return {name: bake(prune(model, example_inputs, **spec)) if spec else copy.deepcopy(model) if name != "dense" else model
            for name, spec in VARIANTS.items()}


def main() -> None:
    """Print, per variant, its FLOPs and parameter ratios and its p50 latency ratio at each batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=60, help="= repeats: alternate models every call")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    example = torch.randn(1, 1, 28, 28)
    models = build_variants(resnet20().eval(), example)
    dense_flops = count_flops(models["dense"], example)
    dense_params = count_params(models["dense"], nonzero_only=True)
    rows = {
        name: {
            "flops_ratio": count_flops(model, example) / dense_flops,
            "params_ratio": count_params(model, nonzero_only=True) / dense_params,
        }
        for name, model in models.items()
    }
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch_size in batch_sizes:
        timed = compare_latency(
            models, example, reference="dense", device=args.device, threads=args.threads,
            batch_size=batch_size, repeats=args.repeats, rounds=args.rounds,
        )
        for name, entry in timed.items():
            rows[name][f"latency_ratio_b{batch_size}"] = entry["ratio"]
            rows[name][f"p50_ms_b{batch_size}"] = entry["p50_ms"]
    header = ["variant", "flops", "params"] + [f"latency b{b}" for b in batch_sizes]
    print(" | ".join(f"{h:>14}" for h in header))
    for name, row in rows.items():
        cells = [row["flops_ratio"], row["params_ratio"]] + [row[f"latency_ratio_b{b}"] for b in batch_sizes]
        print(" | ".join([f"{name:>14}"] + [f"{c:>13.2f}x" for c in cells]))
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "threads": args.threads, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
