"""Prune, distil, quantise: what each step adds, on one pruned structure at a FLOPs budget.

One structure (Torch-Pruning's global group-L2 channel ranking, fitted to --budget of the dense FLOPs) is recovered
three ways from the same seed and the same --epochs: plain fine-tune; fine-tune with distillation from the dense
model (weight 0.5, temperature 4); and that model quantised to int8 (search.quantize, FX, x86 kernels). Each row gives
test accuracy, bytes, and batch-1 and batch-64 latency ratios to the dense model, in torch (interleaved with dense
in this process) and in onnxruntime (each model's ONNX export, the int8 one quantised by onnxruntime, timed
interleaved with the dense model's float ONNX). Timings are ratios measured side by side: run it alone.

    python benchmarks/combinations.py [--workload fashion-resnet20] [--budget 0.5] [--epochs 1] [--threads 2]
                                      [--out bench-out/combinations.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy
import onnxruntime
import torch
from torch import nn

from pruners import bake
from search.baselines import baseline_points
from search.export import export_int8_onnx, export_model
from search.fit import fit_to_target
from search.measure import compare_latency, count_flops, layer_flops, model_size_bytes
from search.quantize import Int8Model, quantize_int8
from search.recover import recover
from search.training import evaluate
from search.workloads import Workload, build_workload
from search.workloads.cache import default_cache_dir
from spaces import SearchSpace

DISTILL, TEMPERATURE = 0.5, 4.0


class OnnxModel(nn.Module):
    """An onnxruntime session behind nn.Module's call, so search.measure times it interleaved with torch models."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not steal the CPU
        # from the torch models timed beside it
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.name: numpy.ascontiguousarray(x.numpy())})[0])

    def __deepcopy__(self, memo: dict) -> "OnnxModel":
        return self  # a session holds no state between calls; the timer copies models it is given


def pruned_structure(workload: Workload, budget: float) -> nn.Module:
    """The tp_global baseline's structure fitted to `budget` of the dense FLOPs (not yet recovered)."""
    model, x = workload.model, workload.example_inputs
    space = SearchSpace.build(model, x, layer_flops(model, x), count_flops(model, x), ("channel",), budget,
                              workload.finetune_lr)
    dense_flops = count_flops(model, x)
    fitted = fit_to_target(model, x, space, baseline_points(space)["tp_global"], budget,
                           lambda m: count_flops(m, x) / dense_flops, "baseline:tp_global")
    return fitted.model


def recovered(structure: nn.Module, workload: Workload, epochs: float, distill: float, seed: int) -> nn.Module:
    """A copy of `structure` recovered for `epochs` (distilling from dense with weight `distill`), from `seed`."""
    model = copy.deepcopy(structure)
    torch.manual_seed(seed)
    recover(model, workload, epochs=epochs, lr=workload.finetune_lr, distill=distill, temperature=TEMPERATURE)
    return bake(model.cpu().eval())


def onnx_file(model: nn.Module, workload: Workload, folder: Path, name: str) -> Path:
    """The model's ONNX export: float through torch.onnx, int8 as search.export writes it (onnxruntime QDQ)."""
    if isinstance(model, Int8Model):
        return export_int8_onnx(model, workload, folder / f"{name}.onnx")
    return export_model(model, workload.example_inputs, "onnx", folder / f"{name}.onnx")


def measure(models: dict[str, nn.Module], workload: Workload, threads: int) -> dict[str, dict]:
    """Per model: test accuracy, bytes, and latency ratios to dense at batch 1 and 64, torch and onnxruntime."""
    rows = {name: {"test_accuracy": evaluate(model, workload.test),
                   "bytes": model_size_bytes(model.quantized if isinstance(model, Int8Model) else model)}
            for name, model in models.items()}
    with tempfile.TemporaryDirectory() as scratch:
        sessions = {name: OnnxModel(onnx_file(model, workload, Path(scratch), name), threads)
                    for name, model in models.items()}
        for batch in (1, 64):
            torch_times = compare_latency(models, workload.example_inputs, reference="dense", threads=threads,
                                          batch_size=batch)
            with torch.inference_mode():
                ort_times = compare_latency(sessions, workload.example_inputs, reference="dense", threads=threads,
                                            batch_size=batch)
            for name in models:
                rows[name][f"torch_latency_ratio_b{batch}"] = torch_times[name]["ratio"]
                rows[name][f"ort_latency_ratio_b{batch}"] = ort_times[name]["ratio"]
                rows[name][f"ort_ms_b{batch}"] = ort_times[name]["p50_ms"]
                rows[name][f"torch_ms_b{batch}"] = torch_times[name]["p50_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="fashion-resnet20")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/combinations.json"))
    args = parser.parse_args()
    workload = build_workload(args.workload, seed=args.seed, cache_dir=default_cache_dir(), data_dir=None,
                              device="cpu")
    structure = pruned_structure(workload, args.budget)
    plain = recovered(structure, workload, args.epochs, 0.0, args.seed)
    distilled = recovered(structure, workload, args.epochs, DISTILL, args.seed)
    int8 = quantize_int8(distilled, workload.example_inputs, workload.calibration)
    models = {"dense": workload.model, "prune": plain, "prune+distill": distilled, "prune+distill+int8": int8}
    rows = measure(models, workload, args.threads)
    result = {"workload": args.workload, "budget": args.budget, "epochs": args.epochs, "threads": args.threads,
              "seed": args.seed, "flops_ratio": count_flops(plain, workload.example_inputs)
              / count_flops(workload.model, workload.example_inputs), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| model | test acc | bytes | torch b1 | torch b64 | onnxruntime b1 | onnxruntime b64 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {100 * row['test_accuracy']:.2f}% | {row['bytes'] / 1e3:,.0f} KB | "
              f"{row['torch_latency_ratio_b1']:.3f} | {row['torch_latency_ratio_b64']:.3f} | "
              f"{row['ort_latency_ratio_b1']:.3f} | {row['ort_latency_ratio_b64']:.3f} |")


if __name__ == "__main__":
    main()
