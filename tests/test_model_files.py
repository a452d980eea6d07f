"""Run-folder models: rebuilt from tensors with weights_only=True, never unpickled, never read outside the folder."""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

from dynamic import EarlyExitModel, exit_head
from pruners import bake, prune
from reports import ReportError, load_records
from reports.__main__ import main as reports_main
from search.model_files import ModelFileError, exits_path, load_pruned, save_pruned
from search.workloads.models import resnet20
from tests.conftest import ROOT
from tests.test_reports import complete_attrs, make_study

PRODUCT = ("search", "spaces", "pruners", "reports")


@pytest.mark.parametrize("method, options", [("channel", {"blocks": 2}), ("channel", {}), ("magnitude", {}),
                                             ("global_magnitude", {})])
def test_a_pruned_model_reloads_from_its_weights_with_the_same_outputs(method: str, options: dict,
                                                                      tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = resnet20().eval()
    inputs = torch.randn(4, 1, 28, 28)
    pruned = bake(prune(dense, inputs[:1], method=method, sparsity=0.5, **options)).eval()
    save_pruned(pruned, tmp_path / "trials/00003/model.pt")
    loaded = load_pruned(tmp_path, "trials/00003/model.pt", dense)
    with torch.no_grad():
        assert torch.allclose(loaded(inputs), pruned(inputs), atol=1e-6)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert any(p.shape != q.shape for p, q in zip(dense.parameters(), loaded.parameters())) == (method == "channel")
    assert all(p.shape == q.shape for p, q in zip(dense.parameters(), resnet20().parameters()))  # dense untouched


@pytest.mark.parametrize("layout", ["pool-conv", "pool-linear", "conv-pool"])
def test_a_dynamic_model_reloads_with_its_heads_as_they_were_built(layout: str, tmp_path: Path) -> None:
    """Heads of today's layouts (as trained, and as they run) reload from the exits file; an exits file of format
    /1, written before heads pooled first, still rebuilds its conv-pool heads (a run folder of an earlier version stays
    readable)."""
    torch.manual_seed(0)
    dense = resnet20().eval()
    inputs = torch.randn(8, 1, 28, 28)
    heads = [exit_head(16, 10, layout), exit_head(32, 10, layout)]
    model = EarlyExitModel(copy.deepcopy(dense), ["layer1", "layer2"], heads, [0.3, 0.4], head_layout=layout).eval()
    save_pruned(model, tmp_path / "best/model.pt")
    if layout == "conv-pool":
        saved = torch.load(exits_path(tmp_path / "best/model.pt"), weights_only=True)
        del saved["layout"]
        torch.save({**saved, "format": "prune-search-exits/1"}, exits_path(tmp_path / "best/model.pt"))
    loaded = load_pruned(tmp_path, "best/model.pt", dense)
    assert isinstance(loaded, EarlyExitModel) and loaded.head_layout == layout
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))
        assert all(torch.equal(a, b) for a, b in zip(loaded.exit_logits(inputs), model.exit_logits(inputs)))


def test_weights_that_do_not_fit_the_dense_model_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_pruned(prune(resnet20(), torch.randn(1, 1, 28, 28), method="channel", sparsity=0.5), tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match="do not fit"):
        load_pruned(tmp_path, "m.pt", resnet20(num_classes=7))


def test_a_pickle_in_place_of_the_weights_file_is_not_run(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does on load
            return (Path.touch, (tmp_path / "code-ran",))

    torch.save({"format": "prune-search-weights/1", "x": Payload()}, tmp_path / "m.weights.pt")
    with pytest.raises(ModelFileError, match="not a weights file"):
        load_pruned(tmp_path, "m.pt", resnet20())
    assert not (tmp_path / "code-ran").exists()


@pytest.mark.parametrize("path", ["../elsewhere/model.pt", "/etc/model.pt", "trials/../../model.pt"])
def test_a_study_pointing_outside_its_folder_is_refused(path: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    attrs = complete_attrs(run, 1, "channel", 0.95, 0.4, 0.6)
    make_study(run, [{**attrs, "model_path": path}])
    with pytest.raises(ReportError, match="outside"):
        load_records(f"sqlite:///{run / 'study.db'}")
    with pytest.raises(ReportError, match="outside"):
        load_pruned(run, path, resnet20())


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    save_pruned(resnet20(), tmp_path / "outside/model.pt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "trials").symlink_to(tmp_path / "outside")
    with pytest.raises(ReportError, match="outside the run folder"):
        load_pruned(run, "trials/model.pt", resnet20())


def test_the_reports_cli_refuses_such_a_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    make_study(run, [{**complete_attrs(run, 1, "channel", 0.95, 0.4, 0.6), "model_path": "../../x.pt"}])
    assert reports_main([str(run)]) == 2  # in process: tests/test_reports.py runs the real entry point
    assert "outside" in capsys.readouterr().err
    assert not (run / "best").exists() and not (run / "pareto.json").exists()


def test_the_product_loads_no_pickle() -> None:
    """Every torch.load in the product passes weights_only=True: only a user's own code unpickles best/model.pt."""
    calls = []
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls and [where for where, safe in calls if not safe] == []
