"""The benchmark on digits-cnn writes bench.json and bench.md with every arm, at three budgets (about a minute)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

ARMS = {"search", "search_all", "random_search", "uniform_l1", "tp_global", "uniform_magnitude"}
ROW_KEYS = {"accuracy", "test_accuracy", "flops_ratio", "latency_ratio", "seconds"}


def test_bench_on_digits(cache_dir: Path, digits, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "search.bench", "--workload", "digits-cnn", "--budgets", "0.25,0.5,0.75",
                             "--trials", "6", "--threads", "1", "--out", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PRUNE_SEARCH_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["budgets"]) == {"0.25", "0.5", "0.75"}
    for budget, row in bench["budgets"].items():
        assert set(row) == ARMS
        for arm, r in row.items():
            assert r is not None and ROW_KEYS <= set(r), (budget, arm)
            if arm != "uniform_magnitude":
                assert r["flops_ratio"] <= float(budget) + 1e-9
    assert -1 <= bench["screening"]["spearman"] <= 1 and bench["screening"]["seconds_per_candidate"] > 0
    assert "## Budget 0.5" in (out / "bench.md").read_text()
