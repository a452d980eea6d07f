"""Does a FLOPs cut buy a latency cut? Dense vs masked vs channel- and block-pruned ResNet-20, timed interleaved,
beside the latency the per-layer table (search.measure.latency_table) predicts for each.

Masks (unstructured, N:M) lower the FLOP count but run on the same dense kernels; channel and block pruning
shrink the tensors. Timings are ratios to the dense model measured in the same process (DESIGN.md:
absolute times on a shared machine drift). Weights are untrained: latency does not depend on them.

    python benchmarks/latency_vs_flops.py [--batch-sizes 1,64] [--threads 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pruners import bake, prune
from search.measure import compare_latency, count_flops, count_params
from search.measure.latency_table import latency_table
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
    "channel-70%": {"method": "channel", "sparsity": 0.7},
    "layer-4-blocks": {"method": "layer", "sparsity": 0.5, "blocks": 4},
}


def build_variants(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, nn.Module]:
    """The dense model and one pruned copy per entry of VARIANTS, masks baked in as shipped models are.

    Baking matters: live torch.nn.utils.prune hooks add a weight * mask product to every forward.
    """
    return {name: bake(prune(model, example_inputs, **spec)) if spec
            else copy.deepcopy(model) if name != "dense" else model
            for name, spec in VARIANTS.items()}


def main() -> None:
    """Print, per variant, its FLOPs and parameter ratios and its predicted and measured p50 latency ratio at each
    batch size, and the table's median prediction error."""
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
    errors: dict[int, list[float]] = {}
    for batch_size in batch_sizes:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as cache:
            table = latency_table(models["dense"], example, device=args.device, threads=args.threads,
                                  batch_size=batch_size, cache_dir=Path(cache))
        print(f"batch {batch_size}: latency table built in {time.perf_counter() - started:.1f} s "
              f"({len(table.layers)} layers, {len(table.grids)} shapes, {table.coverage:.0%} of the dense time)")
        timed = compare_latency(
            models, example, reference="dense", device=args.device, threads=args.threads,
            batch_size=batch_size, repeats=args.repeats, rounds=args.rounds,
        )
        for name, entry in timed.items():
            predicted = table.predict_model_ratio(models[name])
            rows[name][f"latency_ratio_b{batch_size}"] = entry["ratio"]
            rows[name][f"predicted_latency_ratio_b{batch_size}"] = predicted
            rows[name][f"p50_ms_b{batch_size}"] = entry["p50_ms"]
            errors.setdefault(batch_size, []).append(abs(predicted - entry["ratio"]) / entry["ratio"])
    header = ["variant", "flops", "params"] + [f"{kind} b{b}" for b in batch_sizes for kind in ("predicted", "latency")]
    print(" | ".join(f"{h:>18}" for h in header))
    for name, row in rows.items():
        cells = [row["flops_ratio"], row["params_ratio"]] + [
            row[f"{kind}_b{b}"] for b in batch_sizes for kind in ("predicted_latency_ratio", "latency_ratio")]
        print(" | ".join([f"{name:>18}"] + [f"{c:>17.3f}x" for c in cells]))
    for batch_size, errs in errors.items():
        errs.sort()
        print(f"batch {batch_size}: median |predicted - measured| / measured = {100 * errs[len(errs) // 2]:.1f}% "
              f"(largest {100 * errs[-1]:.1f}%)")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "threads": args.threads, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
