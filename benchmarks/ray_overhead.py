"""What does Ray cost? Trials per hour of the ray backend at 1 and 2 concurrent trials against the optuna backend.

Each backend runs the same small search (`python -m search.run`, digits-cnn by default) on this machine, the ray
backend on a local Ray it starts itself. From each run's study: trials per hour over the search (first trial asked
to last one told) and over the whole command (start-up and report included), and the per-trial overhead, the
time a trial spent in the backend beyond `evaluate_point` itself (told - asked - the trial's own seconds). For Ray,
the first trial on each worker also pays the worker's start-up (a new process importing torch); it is shown apart.

    python benchmarks/ray_overhead.py [--trials 12] [--workload digits-cnn] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.workloads import build_workload
from search.workloads.cache import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
RUNS = (("optuna", 1), ("ray", 1), ("ray", 2))
GOAL_S = 2.0


def run_search(backend: str, workers: int, args: argparse.Namespace, out: Path) -> float:
    """Run one search to completion; returns its wall-clock seconds."""
    command = [sys.executable, "-m", "search.run", "--workload", args.workload, "--trials", str(args.trials),
               "--threads", "1", "--cache-dir", str(args.cache_dir), "--backend", backend, "--out", str(out)]
    if backend == "ray":
        command += ["--workers", str(workers)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{backend} x{workers} failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def measure(out: Path, wall: float, workers: int) -> dict[str, float]:
    """Throughput and per-trial overhead read back from a finished run's study."""
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: stopped early by screening, a trial all the same
    trials = sorted((t for t in study.trials if t.state in finished), key=lambda t: t.datetime_start)
    span = (max(t.datetime_complete for t in trials) - trials[0].datetime_start).total_seconds()
    overhead = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["seconds"] for t in trials]
    return {
        "trials": len(trials), "wall_s": wall, "search_s": span,
        "trials_per_hour_search": 3600 * len(trials) / span, "trials_per_hour_wall": 3600 * len(trials) / wall,
        "trial_s": statistics.median(t.user_attrs["seconds"] for t in trials),
        "overhead_s": statistics.median(overhead[workers:]), "first_trial_overhead_s": max(overhead[:workers]),
    }


def main() -> None:
    """Run the three searches one after another and print one row each, then Ray's per-trial overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workload", default="digits-cnn")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    build_workload(args.workload, seed=0, cache_dir=args.cache_dir, data_dir=None, device="cpu")  # train untimed
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as scratch:
        for backend, workers in RUNS:
            out = Path(scratch) / f"{backend}-{workers}"
            rows[f"{backend} x{workers}"] = measure(out, run_search(backend, workers, args, out), workers)
    added = print_results(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ray_added_s_per_trial": added}, indent=2))


def print_results(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> float:
    """Print the table and the overhead verdict; returns the search time Ray adds per trial at 1 concurrent."""
    print(f"{args.trials} trials of {args.workload} per run on this machine ({os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"{'run':10} {'trials/h search':>15} {'trials/h wall':>13} {'wall s':>7} {'trial s':>7} "
          f"{'overhead s':>10} {'1st trial overhead s':>20}")
    for name, row in rows.items():
        print(f"{name:10} {row['trials_per_hour_search']:15.0f} {row['trials_per_hour_wall']:13.0f} "
              f"{row['wall_s']:7.1f} {row['trial_s']:7.2f} {row['overhead_s']:10.2f} "
              f"{row['first_trial_overhead_s']:20.2f}")
    ray, plain = rows["ray x1"], rows["optuna x1"]
    added = (ray["search_s"] - plain["search_s"]) / ray["trials"]
    print(f"Ray per-trial overhead at 1 concurrent: {ray['overhead_s']:.2f} s per trial on a warm worker beyond the "
          f"trial itself (optuna backend: {plain['overhead_s']:.2f} s), {ray['first_trial_overhead_s']:.1f} s once per "
          f"worker for its start-up; search time added per trial over the optuna backend, start-up included: "
          f"{added:.2f} s ({'meets' if added <= GOAL_S else 'misses'} the goal of <= {GOAL_S:g} s)")
    return added


if __name__ == "__main__":
    main()
