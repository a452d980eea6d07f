"""reports.compare: the fronts of two real digits runs (other budgets, other cost metrics) overlaid in one page, and
a folder that is not a run refused in one line."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reports.compare import MIXED_AXIS, main
from reports.records import TrialRecord, load_records
from reports.selection import pareto_front

QUICK = ["--workload", "digits-cnn", "--threads", "1", "--finetune-epochs", "0.5", "--final-epochs", "0",
         "--no-sensitivity", "--trials", "3"]
RUNS = {"flops-03": ["--budget", "0.3"], "params-06": ["--budget", "0.6", "--cost", "params"]}


def plotly_figures(page: str) -> list[tuple[list[dict], dict]]:
    """(data, layout) of every figure in the page, parsed from the JSON arguments of its Plotly.newPlot call."""
    decoder = json.JSONDecoder()
    figures = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]*",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        layout, _ = decoder.raw_decode(page, re.compile(r",\s*").match(page, end).end())
        figures.append((data, layout))
    return figures


def front_of(run_dir: Path) -> list[TrialRecord]:
    return pareto_front(load_records(f"sqlite:///{run_dir / 'study.db'}").trials)


def trace_named(data: list[dict], prefix: str) -> dict:
    """The one trace whose name starts with prefix (a run's front: "FOLDER: workload, metric ≤ budget")."""
    found = [trace for trace in data if trace["name"].startswith(prefix)]
    assert len(found) == 1, [trace["name"] for trace in data]
    return found[0]


def budget_lines(layout: dict) -> list[float]:
    """x of the figure's vertical lines (add_vline: a line shape spanning the y domain)."""
    return sorted(s["x0"] for s in layout.get("shapes", []) if s["type"] == "line" and s["yref"] == "y domain")


def test_two_runs_fronts_overlay_in_one_page(run_main, tmp_path: Path) -> None:
    runs = [tmp_path / name for name in RUNS]
    for run_dir, args in zip(runs, RUNS.values()):
        code, stderr = run_main([*QUICK, *args, "--out", str(run_dir)])
        assert code == 0, stderr[-3000:]

    result = subprocess.run([sys.executable, "-m", "reports.compare", *map(str, runs)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "compare.html"  # the default --out, in the current folder
    page = (tmp_path / "compare.html").read_text()
    (cost_data, cost_layout), (flops_data, _) = plotly_figures(page)
    for run_dir, metric, budget in zip(runs, ("flops", "params"), ("0.3", "0.6")):
        front = front_of(run_dir)
        assert front, run_dir
        name = f"{run_dir.name}: digits-cnn, {metric} ≤ {budget}"
        trace = trace_named(cost_data, name)
        assert trace["mode"] == "lines+markers" and trace["name"] == name
        assert trace["x"] == [r.cost_ratio for r in front] and trace["y"] == [r.accuracy for r in front]
        on_flops = trace_named(flops_data, name)
        assert on_flops["x"] and on_flops["x"] == sorted(on_flops["x"])  # the run's trials, again ranked on FLOPs
        assert f"<h2>{name}</h2>" in page and f"Pareto front: {len(front)} of " in page
    assert budget_lines(cost_layout) == [0.3, 0.6]
    assert cost_layout["xaxis"]["title"]["text"] == MIXED_AXIS
    assert "These runs minimise different costs (flops, params)" in page

    again = Path(shutil.copytree(runs[0], tmp_path / "again" / runs[0].name))
    assert main([str(runs[0]), str(again), "--out", str(tmp_path / "same.html")]) == 0
    (same_data, same_layout), _ = plotly_figures((tmp_path / "same.html").read_text())
    assert same_layout["xaxis"]["title"]["text"] == "cost ratio (flops, pruned / dense)"
    assert trace_named(same_data, f"{again}: digits-cnn")  # folders of one name are told apart by their paths


def test_a_folder_that_is_not_a_run_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main([str(empty), str(tmp_path / "missing"), "--out", str(tmp_path / "compare.html")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{empty} is not a run folder" in lines[0]
    assert "python -m search.run --out FOLDER" in lines[0]
    assert not (tmp_path / "compare.html").exists()
