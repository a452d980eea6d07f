"""`python -m search.export RUN_DIR`: a run's pick (or `--trial N`) as a file that ships without this package.

Formats:
- onnx: the graph through torch.onnx (dynamo exporter), a dynamic batch axis; checked in onnxruntime.
- pt2: torch.export's ExportedProgram (torch.export.load needs only torch), a dynamic batch axis.
- state_dict: the tensors (torch.load with weights_only=True) and the policy beside them; the model is rebuilt by
  pruning the dense architecture with the policy (`rebuild_from_policy`), which needs this package.
Every export is checked before it is kept: the exported model's outputs on validation images must be allclose to the
pruned model's, else nothing is written. Files go to RUN_DIR/export/trial-NNNNN.{onnx,pt2,state_dict.pt} (and
trial-NNNNN.policy.json), or to --out. The model is read from the run folder's weights file (nothing unpickled).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynamic import EarlyExitModel
from pruners import bake, prune
from reports import ReportError, TrialRecord, load_records, select_best
from reports.atomic import copy_file, write_text
from search.model_files import load_pruned
from search.run import configure_logging
from search.study import storage_url
from search.trial import calibration_options
from search.workloads import Workload, WorkloadError, run_workload
from spaces import Policy

log = logging.getLogger("search.export")
FORMATS = ("onnx", "pt2", "state_dict")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "state_dict": ".state_dict.pt"}
RTOL, ATOL = 1e-3, 1e-4  # exported against eager float32 outputs: kernels differ in summation order
CHECK_SAMPLES = 16  # validation images the exported model is checked on (batch 1 and this batch)


class ExportError(ValueError):
    """The model cannot be exported as asked, or the export did not reproduce it; the message says why."""


def exported_trial(run_dir: Path, trial: int | None) -> tuple[TrialRecord, dict]:
    """The record to export (the pick, or trial `trial`) and the run's stored config."""
    if not (run_dir / "study.db").is_file():
        raise ExportError(f"{run_dir} holds no study.db: give the folder of a `python -m search.run` run")
    records = load_records(storage_url(run_dir))
    info = records.info
    if trial is None:
        record = select_best(records.trials, info.budget, info.epsilon)
        if record is None:
            raise ExportError(f"{run_dir} has no pick (no model within budget and epsilon): choose one with --trial N "
                              "(trials.csv lists them)")
    else:
        record = next((r for r in records.trials if r.number == trial), None)
        if record is None or not record.is_complete:
            raise ExportError(f"--trial {trial}: no complete trial of that number in {run_dir} (trials.csv lists them)")
    if not record.model_path:
        raise ExportError(f"trial {record.number} has no saved model to export")
    return record, info.config


def export_model(model: nn.Module, example_inputs: torch.Tensor, fmt: str, path: Path) -> Path:
    """Write `model` (eval mode, CPU) in format `fmt` at `path` (state_dict: the tensors only)."""
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    example_inputs = example_inputs[:1].expand(2, *example_inputs.shape[1:]).clone()  # batch 1 would be specialised
    if fmt == "onnx":
        torch.onnx.export(model, (example_inputs,), str(path), input_names=["input"], output_names=["logits"],
                          dynamo=True, dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    elif fmt == "pt2":
        program = torch.export.export(model, (example_inputs,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    elif fmt == "state_dict":
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, str(path))
    else:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return path


def run_exported(fmt: str, path: Path, inputs: torch.Tensor, rebuilt: nn.Module | None = None) -> torch.Tensor:
    """The exported file's outputs on `inputs`: onnxruntime, torch.export.load, or the state_dict loaded into
    `rebuilt` (the pruned architecture, rebuild_from_policy)."""
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(inputs)
    if rebuilt is None:
        raise ExportError("a state_dict export needs the pruned architecture to load into (rebuild_from_policy)")
    rebuilt.load_state_dict(torch.load(str(path), weights_only=True), strict=True)
    return rebuilt.eval()(inputs)


def rebuild_from_policy(workload: Workload, policy: dict[str, Any]) -> nn.Module:
    """The pruned architecture of `policy` on the workload's dense model (prune, masks baked), to load a state_dict
    export into; the calibration batch is the search's own, so data-ranked widths come out the same."""
    chosen = Policy.from_json(policy)
    model = prune(workload.model, workload.example_inputs, **chosen.prune_kwargs(),
                  **calibration_options(workload, chosen.method, chosen.criterion, chosen.options))
    return bake(model.cpu().eval())


def check_export(model: nn.Module, fmt: str, path: Path, workload: Workload, policy: dict[str, Any]) -> float:
    """The largest absolute difference between the exported file's outputs and the model's on validation images (one
    alone, then a batch); ExportError beyond RTOL/ATOL."""
    images = next(iter(workload.val))[0][:CHECK_SAMPLES]
    rebuilt = rebuild_from_policy(workload, policy) if fmt == "state_dict" else None  # pruning needs autograd on
    worst = 0.0
    for inputs in (images[:1], images):
        with torch.inference_mode():
            expected = model.eval()(inputs)
            got = run_exported(fmt, path, inputs, rebuilt)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=RTOL, atol=ATOL):
            raise ExportError(f"the {fmt} export does not reproduce the model (outputs {tuple(got.shape)} against "
                              f"{tuple(expected.shape)} on a batch of {len(inputs)}); nothing written")
        worst = max(worst, float((got - expected).abs().max()))
    return worst


def export_trial(run_dir: Path, fmt: str, trial: int | None = None, out: Path | None = None) -> Path:
    """Export the pick (or `trial`) of `run_dir` in `fmt`, checked against the model; returns the written path."""
    record, config = exported_trial(run_dir, trial)
    workload = run_workload(config)
    model = load_pruned(run_dir, record.model_path or "", workload.model)
    if isinstance(model, EarlyExitModel) and fmt == "state_dict":
        raise ExportError(f"trial {record.number} is dynamic (early exits): export it as onnx or pt2 (its batch "
                          "path), or load best/model.weights.pt with best/model.exits.pt (search.model_files)")
    stem = f"trial-{record.number:05d}"
    target = out or run_dir / "export" / f"{stem}{SUFFIXES[fmt]}"
    with tempfile.TemporaryDirectory() as scratch:
        written = export_model(model, workload.example_inputs, fmt, Path(scratch) / f"{stem}{SUFFIXES[fmt]}")
        difference = check_export(model, fmt, written, workload, record.policy or {})
        copy_file(written, target)
    if fmt == "state_dict":
        write_text(target.with_name(f"{stem}.policy.json"), json.dumps(record.policy or {}, indent=2))
    log.info("trial %d (%s) -> %s (outputs within %.2g of the model's)", record.number, record.method, target,
             difference)
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder of python -m search.run")
    parser.add_argument("--trial", type=int, default=None, help="the trial to export (default: the pick)")
    parser.add_argument("--format", default="onnx", choices=[*FORMATS, "all"], help="what to write (default onnx)")
    parser.add_argument("--out", type=Path, default=None, help="the file to write (one format only)")
    args = parser.parse_args(argv)
    if args.out is not None and args.format == "all":
        raise ExportError("--out names one file: give one --format with it, or leave --out out")
    return args


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        args = parse_args(argv)
        for fmt in FORMATS if args.format == "all" else (args.format,):
            print(export_trial(args.run_dir, fmt, args.trial, args.out))
    except (ExportError, ReportError, WorkloadError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
