"""`python -m search.export` on a digits-cnn run: every Pareto model in the three formats, each file checked against
the pruned model, and the ONNX and PT2 files loaded and run where none of this package can be imported; the int8
models of a --quantize run as onnxruntime int8 and as a state_dict."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.config import parse_config
from search.export import load_state_dict_export, rebuild_from_policy
from search.export import main as export_main
from search.model_files import load_pruned
from search.pipeline import finish, prepare, run_backend
from search.workloads import Workload
from tests.user_workloads import mobilenet_dataloaders

RUN = ["--workload", "digits-cnn", "--budget", "0.5", "--epsilon", "0.05", "--threads", "1", "--finetune-epochs", "0.3",
       "--final-epochs", "0", "--no-sensitivity", "--trials", "3"]
OUR_PACKAGES = ("search", "spaces", "pruners", "reports", "dynamic", "torch_pruning", "fvcore")
STANDALONE = """
import sys
for name in {packages!r}:
    sys.modules[name] = None  # importing any of them now fails: the files must stand alone
import numpy, onnxruntime, torch
case = torch.load(sys.argv[1], weights_only=True)
session = onnxruntime.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
onnx_out = torch.from_numpy(session.run(None, {{session.get_inputs()[0].name: case["inputs"].numpy()}})[0])
pt2_out = torch.export.load(sys.argv[3]).module()(case["inputs"])
for out in (onnx_out, pt2_out):
    assert torch.allclose(out, case["expected"], rtol=1e-3, atol=1e-4), (out - case["expected"]).abs().max()
print("standalone ok")
"""
INT8_STANDALONE = """
import sys
for name in {packages!r}:
    sys.modules[name] = None
import onnxruntime, torch
inputs = torch.load(sys.argv[1], weights_only=True)
session = onnxruntime.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
onnx_out = torch.from_numpy(session.run(None, {{session.get_inputs()[0].name: inputs.numpy()}})[0])
torch.save({{"onnx": onnx_out, "pt2": torch.export.load(sys.argv[3]).module()(inputs)}}, sys.argv[4])
"""


@pytest.fixture(scope="module")
def run_dir(digits: Workload, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = parse_config([*RUN, "--out", str(tmp_path_factory.mktemp("export") / "run")])
    study, ctx = prepare(config, digits)
    run_backend(study, ctx)
    finish(study, ctx, show=False)
    return config.out


def test_every_pareto_model_exports_in_three_formats_that_run_without_this_package(
        run_dir: Path, digits: Workload, tmp_path: Path) -> None:
    check_float_exports(run_dir, digits, tmp_path)


def check_float_exports(run_dir: Path, workload: Workload, tmp_path: Path) -> None:
    """Every Pareto model of the run, exported in the three formats: ONNX and PT2 run where none of this package can
    be imported, the state_dict reloads into the policy's architecture, all allclose to the pruned model."""
    pareto = json.loads((run_dir / "pareto.json").read_text())["pareto"]
    assert pareto
    inputs = next(iter(workload.test))[0][:8]
    for entry in pareto:
        number = entry["trial"]
        assert export_main([str(run_dir), "--trial", str(number), "--format", "all"]) == 0
        stem = run_dir / "export" / f"trial-{number:05d}"
        model = load_pruned(run_dir, f"trials/{number:05d}/model.pt", workload.model)
        with torch.no_grad():
            expected = model(inputs)
        case = tmp_path / f"case-{number}.pt"
        torch.save({"inputs": inputs, "expected": expected}, case)
        done = subprocess.run([sys.executable, "-c", STANDALONE.format(packages=OUR_PACKAGES), str(case),
                               f"{stem}.onnx", f"{stem}.pt2"], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        policy = json.loads(Path(f"{stem}.policy.json").read_text())
        rebuilt = rebuild_from_policy(workload, policy)
        rebuilt.load_state_dict(torch.load(f"{stem}.state_dict.pt", weights_only=True))
        with torch.no_grad():
            assert torch.allclose(rebuilt.eval()(inputs), expected, atol=1e-6)


def test_export_defaults_to_the_pick_and_refuses_a_missing_trial(run_dir: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    best = json.loads((run_dir / "pareto.json").read_text())["best"]
    assert best is not None  # epsilon 0.05: three short trials on digits always leave a pick
    assert export_main([str(run_dir), "--format", "onnx"]) == 0
    assert (run_dir / "export" / f"trial-{best['trial']:05d}.onnx").is_file()
    assert export_main([str(run_dir), "--trial", "999"]) == 2
    assert "--trial 999" in capsys.readouterr().err


@pytest.fixture(scope="module")
def int8_run(digits: Workload, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = parse_config([*RUN, "--quantize", "--cost", "size", "--budget", "0.4", "--trials", "6",
                           "--out", str(tmp_path_factory.mktemp("int8") / "run")])
    study, ctx = prepare(config, digits)
    run_backend(study, ctx)
    finish(study, ctx, show=False)
    return config.out


def test_int8_pareto_models_ship_as_onnxruntime_int8_pt2_and_a_state_dict(int8_run: Path, digits: Workload,
                                                                         tmp_path: Path) -> None:
    check_int8_exports(int8_run, digits, tmp_path)


def check_int8_exports(int8_run: Path, workload: Workload, tmp_path: Path) -> None:
    """Every int8 Pareto model as onnxruntime int8 and as PT2 (both run where none of this package can be imported;
    held to the float model as the product's int8 model is) and as a state_dict that reloads exactly."""
    pareto = json.loads((int8_run / "pareto.json").read_text())["pareto"]
    int8 = [entry for entry in pareto if entry["policy"]["quantize"] == "int8"]
    assert int8
    inputs = next(iter(workload.test))[0][:64]
    torch.save(inputs, tmp_path / "inputs.pt")
    for entry in int8:
        number = entry["trial"]
        assert entry["size_ratio"] < entry["params_ratio"]  # int8 bytes: under a quarter of float's, plus scales
        assert export_main([str(int8_run), "--trial", str(number), "--format", "all"]) == 0
        stem = int8_run / "export" / f"trial-{number:05d}"
        model = load_pruned(int8_run, f"trials/{number:05d}/model.pt", workload.model)
        with torch.no_grad():
            expected, reference = model(inputs), model.float_model(inputs)
        done = subprocess.run([sys.executable, "-c", INT8_STANDALONE.format(packages=OUR_PACKAGES),
                               str(tmp_path / "inputs.pt"), f"{stem}.onnx", f"{stem}.pt2", str(tmp_path / "out.pt")],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        own = (expected.argmax(1) == reference.argmax(1)).float().mean()
        for got in torch.load(tmp_path / "out.pt", weights_only=True).values():  # onnxruntime int8, then the PT2
            assert (got.argmax(1) == reference.argmax(1)).float().mean() >= min(0.95, own - 0.05)
            assert (got - reference).abs().max() <= 2 * (expected - reference).abs().max() + 1e-4
        loaded = load_state_dict_export(Path(f"{stem}.state_dict.pt"), workload, entry["policy"])
        with torch.no_grad():
            assert torch.equal(loaded(inputs), expected)


@pytest.mark.slow(reason="MobileNetV3-small trains and searches twice, about 3 minutes")
def test_a_torchvision_models_pareto_models_export_float_and_int8(tmp_path: Path) -> None:
    """MobileNetV3-small (tests.user_workloads, as a user passes it with --workload module:function): every Pareto
    model of a float run in the three formats, and every int8 one of a --quantize run as ONNX int8 and state_dict."""
    workload = mobilenet_dataloaders()
    runs = {}
    for name, extra in (("float", []), ("int8", ["--quantize", "--cost", "size", "--budget", "0.3"])):
        config = parse_config([*RUN, "--workload", "tests.user_workloads:mobilenet_dataloaders", "--trials", "6",
                               *extra, "--out", str(tmp_path / name)])
        study, ctx = prepare(config, workload)
        run_backend(study, ctx)
        finish(study, ctx, show=False)
        runs[name] = config.out
    check_float_exports(runs["float"], workload, tmp_path)
    check_int8_exports(runs["int8"], workload, tmp_path)
