"""End to end on digits-cnn: a search, its run folder against the contract, the pick re-measured, and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.measure import count_flops
from search.study import storage_url
from search.training import evaluate
from tests.conftest import ROOT, run_cli

CONTRACT_KEYS = {"workload", "cost_metric", "budget", "epsilon", "input_shape", "dense", "best", "pareto", "trials"}
TOP_EXTRA_KEYS = {"final_stage_errors"}  # extensions the README lists
MODEL_KEYS = {"trial", "method", "accuracy", "test_accuracy", "flops", "params", "latency_ms", "cost_ratio", "policy"}
RUN_FILES = ("report.html", "report.md", "trials.csv", "pareto.json", "best/model.pt", "best/model.weights.pt",
             "best/policy.json", "study.db")
FAST = ["--workload", "digits-cnn", "--budget", "0.5", "--threads", "1", "--finetune-epochs", "1"]


@pytest.fixture(scope="module")
def finished_run(cache_dir: Path, digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    result = run_cli([*FAST, "--trials", "8", "--out", str(out)], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_folder_follows_the_contract(finished_run: Path) -> None:
    for name in RUN_FILES:
        assert (finished_run / name).is_file(), name
    pareto = json.loads((finished_run / "pareto.json").read_text())
    assert set(pareto) == CONTRACT_KEYS | TOP_EXTRA_KEYS
    assert pareto["trials"]["complete"] + pareto["trials"]["pruned"] == 8 and pareto["trials"]["failed"] == 0
    assert pareto["trials"]["complete"] >= 4  # screening stops nothing before four fine-tuned trials
    assert set(pareto["dense"]) >= {"accuracy", "test_accuracy", "flops", "params", "latency_ms"}
    assert pareto["pareto"] and all(MODEL_KEYS <= set(m) for m in pareto["pareto"])
    assert all(m["test_accuracy"] is not None for m in pareto["pareto"])  # Pareto models get a test accuracy
    for model in pareto["pareto"]:  # and a latency at both batch regimes, the searched one marked
        batches = model["latency_by_batch"]
        assert set(batches) == {"1", "64"} and batches["1"]["searched"] and batches["64"]["latency_ratio"] > 0
        assert model["predicted_latency_ratio"] is not None and model["nonzero_flops"] is None  # structured
    costs = [m["cost_ratio"] for m in pareto["pareto"]]
    accuracies = [m["accuracy"] for m in pareto["pareto"]]
    assert costs == sorted(costs) and accuracies == sorted(accuracies)  # non-dominated: dearer is better


def test_pick_reloads_and_meets_both_constraints(finished_run: Path, digits) -> None:
    pareto = json.loads((finished_run / "pareto.json").read_text())
    best = pareto["best"]
    assert best is not None, "digits-cnn at budget 0.5 should have a pick within one point"
    model = torch.load(finished_run / "best" / "model.pt", weights_only=False)
    accuracy = evaluate(model, digits.val)
    flops_ratio = count_flops(model, digits.example_inputs) / pareto["dense"]["flops"]
    assert accuracy == pytest.approx(best["accuracy"], abs=1e-9)
    assert pareto["dense"]["accuracy"] - accuracy <= pareto["epsilon"] + 1e-9
    assert flops_ratio == pytest.approx(best["flops_ratio"], rel=1e-9) and flops_ratio <= pareto["budget"]
    assert json.loads((finished_run / "best" / "policy.json").read_text())["method"] == best["method"]


def test_the_pick_is_the_cheapest_feasible_trial_of_the_whole_study(finished_run: Path) -> None:
    """Read from the study itself, not from the reports' front: every complete trial, with its final fine-tune's
    figures where it had one."""
    pareto = json.loads((finished_run / "pareto.json").read_text())
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{finished_run / 'study.db'}")
    finals = study.user_attrs.get("final") or {}
    feasible = []
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        figures = {**trial.user_attrs, **finals.get(str(trial.number), {})}
        if figures["cost_ratio"] <= pareto["budget"] + 1e-9 and figures["accuracy_loss"] <= pareto["epsilon"] + 1e-9:
            feasible.append((figures["cost_ratio"], -figures["accuracy"]))
    assert feasible and pareto["best"] is not None
    assert (pareto["best"]["cost_ratio"], -pareto["best"]["accuracy"]) == min(feasible)


def test_baselines_come_first_and_are_labelled(finished_run: Path) -> None:
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{finished_run / 'study.db'}")
    labels = [t.user_attrs["label"] for t in study.trials[:3]]
    assert labels[:2] == ["baseline:uniform_l1", "baseline:tp_global"]
    assert labels[2] == "search"  # uniform magnitude pruning is a baseline only when masked methods are searched
    assert "space" in study.user_attrs and "groups" in study.user_attrs["space"]


def test_rerun_with_same_out_continues_without_rerunning(finished_run: Path, run_main) -> None:
    before = json.loads((finished_run / "pareto.json").read_text())
    code, stderr = run_main([*FAST, "--trials", "10", "--out", str(finished_run)])
    assert code == 0, stderr[-3000:]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{finished_run / 'study.db'}")
    assert len(study.trials) == 10  # eight kept, two new, none re-run
    assert json.loads((finished_run / "pareto.json").read_text())["dense"] == before["dense"]


def test_a_different_search_in_the_same_folder_is_refused(finished_run: Path, run_main) -> None:
    code, stderr = run_main([*FAST[:2], "--budget", "0.3", "--trials", "1", "--out", str(finished_run)])
    assert code == 2 and "--out" in stderr and "budget" in stderr


def test_kill_9_mid_run_then_resume_keeps_finished_trials(cache_dir: Path, digits, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PRUNE_SEARCH_CACHE": str(cache_dir)}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "search.run", *FAST, "--trials", "6", "--out", str(out)],
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.monotonic() + 240
    finished: list[int] = []
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        if (out / "study.db").exists():
            try:
                trials = optuna.load_study(study_name="search", storage=storage).trials
            except (KeyError, Exception):  # noqa: BLE001 - the study may not be created yet
                continue
            finished = [t.number for t in trials if t.state == TrialState.COMPLETE]
            # a trial that started under half a second ago: it cannot finish before the kill lands (one that was
            # about to finish sometimes did, and then nothing was left to interrupt)
            if len(finished) >= 2 and any(t.state == TrialState.RUNNING and t.datetime_start is not None
                                          and datetime.now() - t.datetime_start < timedelta(seconds=0.5)
                                          for t in trials):
                break
    assert process.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = optuna.load_study(study_name="search", storage=storage).trials
    kept = {t.number: t.user_attrs["accuracy"] for t in at_kill if t.state == TrialState.COMPLETE}
    # the trials the kill cut short, read once the process is dead: usually the one just started, but a trial the
    # screening stops within a second can end between the last look and the kill (a CI run's case)
    cut = {t.number for t in at_kill if t.state == TrialState.RUNNING}
    assert len(kept) >= 2
    result = run_cli([*FAST, "--trials", "8", "--out", str(out)], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="search", storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) + sum(t.state == TrialState.PRUNED for t in trials) == 8  # stopped by screening or not
    assert {n: a for n, a in ((t.number, t.user_attrs["accuracy"]) for t in complete) if n in kept} == kept
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.number for t in interrupted} == cut and all("interrupted" in t.user_attrs["failure"] for t in interrupted)
    finished_points = [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # each ran again to its end, with every knob it had drawn (a kill during its first draws queues those alone)
    assert all(any(t.params.items() <= p.items() for p in finished_points) for t in interrupted)


@pytest.mark.slow(reason="a search with a final stage of two finalists, run twice, about 40 s; the default final "
                        "stage runs in every other search of this module")
def test_final_epochs_fine_tunes_the_pareto_models_within_budget(cache_dir: Path, digits, tmp_path: Path) -> None:
    out = tmp_path / "final"
    final_stage = [*FAST, "--trials", "4", "--final-epochs", "2", "--finalists", "2", "--out", str(out)]
    result = run_cli(final_stage, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    finals = study.user_attrs["final"]
    assert 1 <= len(finals) <= 2  # --finalists bounds the final stage
    pareto = json.loads((out / "pareto.json").read_text())
    searched = {t.number: t.user_attrs["accuracy"] for t in study.trials if "accuracy" in t.user_attrs}
    for number, entry in finals.items():  # the final stage keeps the better model: it never loses accuracy
        assert entry["accuracy"] >= searched[int(number)] and entry["kept"] in ("final", "search")
    finalized = [m for m in pareto["pareto"] if m["final_epochs"] is not None]
    assert {str(m["trial"]) for m in finalized} == {n for n, e in finals.items() if e["kept"] == "final"} & \
        {str(m["trial"]) for m in pareto["pareto"]}
    for model in finalized:
        entry = finals[str(model["trial"])]
        assert model["final_epochs"] == entry["epochs"] == 2
        assert model["accuracy"] == entry["accuracy"] and model["search_accuracy"] is not None
        assert model["test_accuracy"] == entry["test_accuracy"] and (out / entry["model_path"]).is_file()
        assert model["cost_ratio"] <= pareto["budget"] + 1e-9
    best = pareto["best"]
    assert best is not None and str(best["trial"]) in finals
    model = torch.load(out / "best" / "model.pt", weights_only=False)
    assert evaluate(model, digits.val) == pytest.approx(best["accuracy"], abs=1e-9)
    assert count_flops(model, digits.example_inputs) / pareto["dense"]["flops"] == pytest.approx(best["flops_ratio"])
    again = run_cli(final_stage, cache_dir)
    assert again.returncode == 0 and "final fine-tune" not in again.stderr  # nothing left to fine-tune on resume


def test_optuna_dashboard_names_the_two_objectives(finished_run: Path) -> None:
    """`optuna-dashboard sqlite:///RUN/study.db` shows "cost ratio" and "accuracy loss", not Objective 0 and 1."""
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    study = optuna.load_study(study_name="search", storage=storage_url(finished_run))
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/api/studies/{study._study_id}"  # noqa: SLF001 - the dashboard's API takes the id
    body = b"".join(wsgi(storage_url(finished_run))(environ, lambda status, headers, exc_info=None: None))
    assert json.loads(body)["objective_names"] == ["cost ratio", "accuracy loss"]


def test_the_report_shows_the_picks_policy_and_the_search(finished_run: Path) -> None:
    """The pick's per-layer rows are its model's real widths; report.html has the policy bar chart, the Pareto heat
    map, Optuna's history and importances and the searched space as a table; report.md shows the PNGs it wrote."""
    pareto = json.loads((finished_run / "pareto.json").read_text())
    model = torch.load(finished_run / "best" / "model.pt", weights_only=False)
    modules = dict(model.named_modules())
    layers = pareto["best"]["layers"]
    assert [row[0] for row in layers] == [name for name, m in modules.items() if isinstance(m, (torch.nn.Conv2d,
                                                                                               torch.nn.Linear))]
    for name, kept, dense, nonzero, total in layers:
        layer = modules[name]
        assert kept == getattr(layer, "out_channels", getattr(layer, "out_features", None)) <= dense
        assert nonzero == int(torch.count_nonzero(layer.weight)) <= total
    assert any(kept < dense for _, kept, dense, _, _ in layers)  # a structured pick really removed channels
    page = (finished_run / "report.html").read_text()
    for title in (f"Pick (trial {pareto['best']['trial']}", "Pareto models: per-layer sparsity",
                  "Optimisation history: accuracy loss", "Hyper-parameter importance for accuracy loss",
                  "Screening: screened accuracy vs the accuracy reached"):
        assert title in page, title
    assert "<td>round_to</td><td>1, 4, 8</td>" in page  # the searched space, a table row per knob
    markdown = (finished_run / "report.md").read_text()
    for image in ("report-plots/front.png", "report-plots/policy.png"):
        assert f"]({image})" in markdown
        assert (finished_run / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
