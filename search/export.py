"""`python -m search.export RUN_DIR`: a run's pick (or `--trial N`) as a file that ships without this package.

Formats:
- onnx: the graph through torch.onnx (dynamo exporter), a dynamic batch axis; checked in onnxruntime.
- pt2: torch.export's ExportedProgram (torch.export.load needs only torch), a dynamic batch axis.
- state_dict: the tensors (torch.load with weights_only=True) and the policy beside them; the model is rebuilt by
  pruning the dense architecture with the policy (`rebuild_from_policy`), which needs this package.
An int8 model (search --quantize): onnx is its float model quantised by onnxruntime (QDQ, per-channel int8 weights in
reduced range, calibrated on the same training images), checked against the float model within twice the product's
own int8 error and with other top-1 answers on no more inputs than the product's int8 model gives; state_dict is the
quantised graph's tensors, which search.quantize.quantized_like loads onto the policy's float architecture; pt2 is
the quantised graph in standard aten ops (export_int8_pt2), held to the float model as the onnx file is.
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
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynamic import EarlyExitModel
from pruners import bake, prune
from reports import ReportError, TrialRecord, load_records, select_best
from reports.atomic import copy_file, write_text
from search.model_files import load_pruned
from search.quantize import CALIBRATION_BATCHES, Int8Model, quantized_like
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


class UnsupportedFormat(ExportError):
    """This kind of model has no export in this format (a dynamic model's state_dict); --format all skips it."""


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
        torch.save(model.state_dict(), str(path))  # as it is: an int8 graph's loader reads the versions it holds
    else:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return path


def export_int8_onnx(model: Int8Model, workload: Workload, path: Path) -> Path:
    """An int8 ONNX file of `model`: its float model exported, then quantised by onnxruntime (QDQ, per-channel int8
    weights in reduced range, uint8 activations) on the first CALIBRATION_BATCHES training batches, as
    search.quantize calibrates."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (batch for _, batch in zip(range(CALIBRATION_BATCHES), workload.train))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch[0].cpu().numpy()}

    float_path = export_model(model.float_model, workload.example_inputs, "onnx", path.with_suffix(".float.onnx"))
    prepared = path.with_suffix(".prepared.onnx")
    quant_pre_process(str(float_path), str(prepared))  # shape inference and graph clean-up onnxruntime asks for
    # reduce_range: 7-bit weights. onnxruntime's u8s8 kernels saturate their 16-bit intermediate sums on CPUs without
    # VNNI, its documented fix; on digits trial 4 the max error was 2.49 at full range and 0.20 with it.
    quantize_static(str(prepared), str(path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def export_int8_pt2(model: Int8Model, example_inputs: torch.Tensor, path: Path) -> Path:
    """An ExportedProgram of the int8 `model` in standard aten ops. torch.export cannot trace FX int8's packed weights
    (torch 2.14), so the quantised graph is traced by TorchScript and converted by torch's TorchScript-to-export
    converter (torch._export.converter, private; torch is pinned), which rewrites each quantised op as a float op on
    dequantised weights with quantisation simulated (round, clamp, scale): int8 arithmetic, float kernels."""
    from torch._export.converter import TS2EPConverter

    sample = example_inputs[:1].expand(2, *example_inputs.shape[1:]).clone().cpu()  # batch 1 would be specialised
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices and the converter's unused-state notes
        program = TS2EPConverter(torch.jit.trace(model.quantized, (sample,)), (sample,)).convert()
    torch.export.save(program, str(path))
    return path


def run_exported(fmt: str, path: Path, inputs: torch.Tensor, loaded: nn.Module | None = None) -> torch.Tensor:
    """The exported file's outputs on `inputs`: onnxruntime, torch.export.load, or a state_dict export `loaded`
    (load_state_dict_export)."""
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(inputs)
    if loaded is None:
        raise ExportError("a state_dict export runs once loaded into its architecture (load_state_dict_export)")
    return loaded(inputs)


def load_state_dict_export(path: Path, workload: Workload, policy: dict[str, Any]) -> nn.Module:
    """A state_dict export loaded (weights_only=True) into the policy's architecture: the pruned float model, or for an
    int8 policy its quantised graph (search.quantize.quantized_like)."""
    state = torch.load(str(path), weights_only=True)
    model = rebuild_from_policy(workload, policy)
    if Policy.from_json(policy).quantize == "int8":
        return quantized_like(model, workload.example_inputs, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def rebuild_from_policy(workload: Workload, policy: dict[str, Any]) -> nn.Module:
    """The pruned architecture of `policy` on the workload's dense model (prune, masks baked), to load a state_dict
    export into; the calibration batch is the search's own, so data-ranked widths come out the same."""
    chosen = Policy.from_json(policy)
    model = prune(workload.model, workload.example_inputs, **chosen.prune_kwargs(),
                  **calibration_options(workload, chosen.method, chosen.criterion, chosen.options))
    return bake(model.cpu().eval())


def check_export(model: nn.Module, fmt: str, path: Path, workload: Workload, policy: dict[str, Any]) -> float:
    """The largest absolute difference between the exported file's outputs and the model's on validation images (a
    batch, then one alone); ExportError beyond RTOL/ATOL. An int8 ONNX file (onnxruntime's own quantisation) or PT2
    file (quantisation simulated in float kernels) is held to the float model instead: on the batch, within twice the
    int8 model's own largest error there, and other top-1 answers on no more inputs than the int8 model itself gives
    (at least one in CHECK_SAMPLES allowed); one input alone must then give the file's own answer for it in the batch,
    since one image's int8 error says nothing of another quantiser's (static scales: rows are independent)."""
    images = next(iter(workload.val))[0][:CHECK_SAMPLES]
    loaded = load_state_dict_export(path, workload, policy) if fmt == "state_dict" else None  # prunes: autograd on
    held_to_float = isinstance(model, Int8Model) and fmt != "state_dict"  # int8 redone by onnxruntime, or simulated
    with torch.inference_mode():
        expected, got = model.eval()(images), run_exported(fmt, path, images, loaded)
        bound, allowed_wrong = None, 0
        if held_to_float:  # as the int8 model itself is
            reference = model.float_model(images)
            bound = 2 * float((expected - reference).abs().max()) + ATOL
            allowed_wrong = max(_wrong_answers(expected, reference), 1)
            expected = reference
        _require(_reproduces(got, expected, bound, allowed_wrong), fmt, got, expected)
        alone = run_exported(fmt, path, images[:1], loaded)
        alone_expected = got[:1] if held_to_float else model(images[:1])
        _require(_reproduces(alone, alone_expected, bound, 0), fmt, alone, alone_expected)
    return max(float((got - expected).abs().max()), float((alone - alone_expected).abs().max()))


def _require(reproduced: bool, fmt: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    """ExportError unless the exported file reproduced the model on this batch."""
    if not reproduced:
        raise ExportError(f"the {fmt} export does not reproduce the model (outputs {tuple(got.shape)} against "
                          f"{tuple(expected.shape)} on a batch of {len(expected)}); nothing written")


def _wrong_answers(got: torch.Tensor, expected: torch.Tensor) -> int:
    """How many inputs get another top-1 answer."""
    return int((got.argmax(1) != expected.argmax(1)).sum())


def _reproduces(got: torch.Tensor, expected: torch.Tensor, bound: float | None, allowed_wrong: int) -> bool:
    """Allclose at RTOL/ATOL; with a `bound` (an int8 file against the float model): within it, with other top-1
    answers on at most `allowed_wrong` inputs."""
    if got.shape != expected.shape:
        return False
    if bound is None:
        return torch.allclose(got, expected, rtol=RTOL, atol=ATOL)
    return float((got - expected).abs().max()) <= bound and _wrong_answers(got, expected) <= allowed_wrong


def export_trial(run_dir: Path, fmt: str, trial: int | None = None, out: Path | None = None) -> Path:
    """Export the pick (or `trial`) of `run_dir` in `fmt`, checked against the model; returns the written path."""
    record, config = exported_trial(run_dir, trial)
    workload = run_workload(config)
    model = load_pruned(run_dir, record.model_path or "", workload.model)
    if isinstance(model, EarlyExitModel) and fmt == "state_dict":
        raise UnsupportedFormat(f"trial {record.number} is dynamic (early exits): export it as onnx or pt2 (its "
                                "batch path), or load best/model.weights.pt with best/model.exits.pt "
                                "(search.model_files)")
    int8 = isinstance(model, Int8Model)
    stem = f"trial-{record.number:05d}"
    target = out or run_dir / "export" / f"{stem}{SUFFIXES[fmt]}"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{stem}{SUFFIXES[fmt]}"
        if int8 and fmt == "onnx":
            written = export_int8_onnx(model, workload, path)
        elif int8 and fmt == "pt2":
            written = export_int8_pt2(model, workload.example_inputs, path)
        else:
            written = export_model(model.quantized if int8 else model, workload.example_inputs, fmt, path)
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
            try:
                print(export_trial(args.run_dir, fmt, args.trial, args.out))
            except UnsupportedFormat as skipped:
                if args.format != "all":
                    raise
                log.warning("%s: skipped (%s)", fmt, skipped)
    except (ExportError, ReportError, WorkloadError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
