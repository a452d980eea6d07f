"""The Ray backend on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster): the same contract
as the optuna backend, resume, a worker node killed mid-search, and a --latency-on resource no node has; and its
searcher driven by hand: when it waits, when it ends the search, what it does with a trial Tune gave up on.
Latency measured on a custom-resource node is tested through `ray job submit`, in test_ray_jobs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.config import parse_config
from search.pipeline import prepare
from search.study import INTERRUPTED, record_outcome
from tests.conftest import ROOT, run_cli
from tests.test_search_e2e import CONTRACT_KEYS, FAST, MODEL_KEYS, TOP_EXTRA_KEYS

pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - the imports from here on need Ray

from search.backends.ray_search import RELAUNCHES, StudySearch  # noqa: E402
from search.backends.ray_trial import META_KEY, OUTCOME_KEY  # noqa: E402
from search.outcome import TrialOutcome  # noqa: E402

SCREENED = {"accuracy": 0.1, "accuracy_loss": 0.89, "fitted_ratio": 0.5}  # what a screened-out trial reports
SCREENED_RESULT = {OUTCOME_KEY: json.dumps(TrialOutcome("screened", SCREENED).to_json())}  # as a worker reports it

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # TPE's group option
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TARGET = "target_device"  # the custom resource only the worker node advertises
LONGER_TRIALS = ("--finetune-epochs", "8")  # a wider window to catch a trial running on the worker node
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}  # a lost node in ~5 s


class TwoNodes:
    """A head node (1 CPU) and a worker node (1 CPU and the TARGET resource), each with its own raylet."""

    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS})
        self.worker = self.add_worker()

    def add_worker(self):  # noqa: ANN201 - ray's Node
        node = self.cluster.add_node(num_cpus=1, resources={TARGET: 1})
        self.cluster.wait_for_nodes()
        return node


@pytest.fixture(scope="module")
def nodes() -> Iterator[TwoNodes]:
    cluster = TwoNodes()
    try:
        yield cluster
    finally:
        cluster.cluster.shutdown()


def ray_args(nodes: TwoNodes, trials: int, out: Path, *extra: str) -> list[str]:
    return [*FAST, "--backend", "ray", "--address", nodes.cluster.address, "--workers", "2", "--trials", str(trials),
            "--out", str(out), *extra]


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")


def accuracies(out: Path) -> dict[int, float]:
    """Accuracy by trial number of the trials that finished (complete, or stopped early by screening)."""
    return {t.number: t.user_attrs["accuracy"] for t in load(out).trials if t.state in FINISHED}


@pytest.fixture(scope="module")
def ray_run(nodes: TwoNodes, cache_dir: Path, digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "run"
    result = run_cli(ray_args(nodes, 4, out), cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Configuration for experiment" not in result.stdout + result.stderr  # Ray's banners stay out
    return out


@pytest.mark.slow(reason="a search on a two-node Ray cluster, about a minute")
def test_ray_run_follows_the_same_contract(ray_run: Path) -> None:
    pareto = json.loads((ray_run / "pareto.json").read_text())
    assert set(pareto) == CONTRACT_KEYS | TOP_EXTRA_KEYS
    assert pareto["trials"]["complete"] + pareto["trials"]["pruned"] == 4 and pareto["trials"]["failed"] == 0
    assert pareto["pareto"] and all(MODEL_KEYS <= set(m) for m in pareto["pareto"])
    assert all(m["test_accuracy"] is not None for m in pareto["pareto"])
    assert (ray_run / "best" / "model.pt").is_file() and (ray_run / "report.html").is_file()
    study = load(ray_run)
    assert [t.user_attrs["label"] for t in study.trials[:3]] == ["baseline:uniform_l1", "baseline:tp_global", "search"]
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):  # models came home, constraints recorded
        assert (ray_run / trial.user_attrs["model_path"]).is_file()
        assert {"constraints:accuracy_loss", "constraints:cost_ratio"} <= set(trial.system_attrs)
    tune_dirs = {path.name for path in (ray_run / "ray").glob("*/trial-*")}  # Tune's files, named by trial number
    assert {f"trial-{t.number:05d}" for t in study.trials} <= tune_dirs


@pytest.mark.slow(reason="a second search on the Ray cluster, about 40 s")
def test_rerun_with_same_out_resumes_without_rerunning(ray_run: Path, nodes: TwoNodes, cache_dir: Path) -> None:
    before = accuracies(ray_run)
    result = run_cli(ray_args(nodes, 5, ray_run), cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    after = accuracies(ray_run)
    assert len(load(ray_run).trials) == 5 and len(after) == 5
    assert {n: after[n] for n in before} == before


@pytest.mark.slow(reason="a two-node Ray cluster, about 20 s")
def test_latency_on_a_resource_no_node_has_is_refused(nodes: TwoNodes, run_main, digits, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused though the worker advertises another resource (TARGET). In this process: the refusal comes before
    any trial, and a subprocess would only add its imports."""
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")  # what start_ray sets in its process, undone after the test
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    code, stderr = run_main(ray_args(nodes, 1, tmp_path / "run", "--latency-on", "no_such_device"))
    assert code == 2 and "--latency-on" in stderr.strip().splitlines()[-1]


@pytest.mark.slow(reason="a worker node killed mid-search, about a minute")
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the node's processes in Linux /proc")
def test_killing_the_worker_node_mid_search_keeps_every_finished_trial(nodes: TwoNodes, cache_dir: Path, digits,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PRUNE_SEARCH_CACHE": str(cache_dir)}
    # six trials: with four, every trial on the worker sometimes ended before the first one finished (a CI failure)
    process = subprocess.Popen([sys.executable, "-m", "search.run", *ray_args(nodes, 6, out, *LONGER_TRIALS)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        kept = _wait_for_a_trial_running_on_the_worker(out, nodes, process)
        _lose_node(nodes)
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
        nodes.worker = nodes.add_worker()  # later tests get their two nodes back
    assert process.returncode == 0, stderr[-3000:]
    study = load(out)
    finished = [t for t in study.trials if t.state in FINISHED]
    points = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(finished) == 6 and len(set(points)) == 6  # the search completed, and no point finished twice
    assert {n: a for n, a in accuracies(out).items() if n in kept} == kept  # finished trials kept as they were
    assert list((out / "ray").glob("*/trial-*/error.txt")), "Tune saw no trial's worker die"
    for trial in study.trials:  # a lost trial that Tune gave up on was queued again and finished as a new trial
        assert trial.state in FINISHED or (trial.user_attrs["failure"] == INTERRUPTED
                                           and json.dumps(trial.params, sort_keys=True) in points)


def _raylet_children(nodes: TwoNodes) -> dict[int, str]:
    """The worker node's worker processes (its raylet's children) with their titles, from /proc."""
    raylet = nodes.worker.all_processes["raylet"][0].process.pid
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == raylet:
                children[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return children


def _wait_for_a_trial_running_on_the_worker(out: Path, nodes: TwoNodes, process: subprocess.Popen,
                                            timeout: float = 180) -> dict[int, float]:
    """Wait until a trial has finished and a trial actor on the worker node is working (Ray's process title names
    the actor; Tune ends it with its trial, but between calls it idles, and a node lost then fails no trial: it burns
    CPU only while a trial runs in it); returns the finished trials' accuracies. The title's `.train` suffix is no
    sign of a call in flight: a CI run polled the whole search without once seeing it."""
    deadline = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
        children = _raylet_children(nodes)
        seen.update(children.values())
        actors = [pid for pid, title in children.items() if title.startswith("ray::ImplicitFunc")]
        if not actors or not _working(actors):
            continue
        try:
            kept = accuracies(out)
        except Exception:  # noqa: BLE001 - the study may not exist yet
            continue
        if kept:
            return kept
    raise AssertionError(f"no trial ran on the worker node after one had finished (exit {process.poll()}); "
                         f"process titles seen there: {sorted(seen)}")


def _working(pids: list[int], span: float = 0.3) -> bool:
    """Whether one of the processes used at least a third of a core over `span` seconds (from /proc's CPU times)."""
    def cpu_seconds(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # ended meanwhile
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(span)
    return any(cpu_seconds(pid) - used >= span / 3 for pid, used in before.items())


def _lose_node(nodes: TwoNodes) -> None:
    """What a lost machine looks like: the worker node's raylet and every process under it killed at once."""
    workers = _raylet_children(nodes)
    nodes.cluster.remove_node(nodes.worker, allow_graceful=False)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _searcher(trials: int, digits, cache_dir: Path, out: Path) -> tuple[optuna.Study, StudySearch]:  # noqa: ANN001
    """The ray backend's searcher over a new study, without Ray: Tune's calls are made by hand."""
    config = parse_config([*FAST, "--backend", "ray", "--trials", str(trials), "--out", str(out),
                           "--cache-dir", str(cache_dir)])
    study, ctx = prepare(config, digits)
    return study, StudySearch(study, ctx, retries=2, tune_dir="ray/test")


def _point(params: dict) -> str:
    return json.dumps({key: value for key, value in params.items() if key != META_KEY}, sort_keys=True)


def test_the_searcher_waits_for_running_trials_then_ends_the_search(digits, cache_dir: Path, tmp_path: Path) -> None:
    _, search = _searcher(2, digits, cache_dir, tmp_path / "run")
    assert search.suggest("a") and search.suggest("b")
    assert search.suggest("c") is None  # the two running trials would make --trials 2
    for trial_id in ("a", "b"):
        search.on_trial_complete(trial_id, SCREENED_RESULT)
    assert search.suggest("d") == search.FINISHED


def test_a_point_tune_gave_up_on_runs_again_until_it_was_lost_too_often(digits, cache_dir: Path,
                                                                         tmp_path: Path) -> None:
    study, search = _searcher(10, digits, cache_dir, tmp_path / "run")
    names = (f"t{i}" for i in range(100))
    trial_id = next(names)
    lost = _point(search.suggest(trial_id))
    for losses in range(1, RELAUNCHES + 2):
        search.on_trial_complete(trial_id, error=True)  # Tune gave up on it: its worker's node was lost
        while losses <= RELAUNCHES:  # the point comes back after the points queued before it
            trial_id = next(names)
            if _point(search.suggest(trial_id)) == lost:
                break
            search.on_trial_complete(trial_id, SCREENED_RESULT)
    runs = [t for t in study.get_trials() if _point(t.params) == lost]
    assert [t.state for t in runs] == [TrialState.FAIL] * (RELAUNCHES + 1)
    assert [t.user_attrs["failure"] for t in runs[:-1]] == [INTERRUPTED] * RELAUNCHES  # not counted, run again
    assert runs[-1].user_attrs["failure"].startswith("Ray trial error")  # then a failure with its reason


@pytest.mark.parametrize("outcome", [
    TrialOutcome("complete", {"accuracy": 0.93, "accuracy_loss": 0.004, "cost_ratio": 0.45, "label": "search"}),
    TrialOutcome("screened", SCREENED),
    TrialOutcome("failed", failure="FloatingPointError: training loss became nan at step 3"),
], ids=["complete", "screened", "failed"])
def test_both_backends_record_an_outcome_the_same_way(outcome: TrialOutcome, digits, cache_dir: Path,
                                                       tmp_path: Path) -> None:
    """The in-process loop's recorder and the Ray searcher, given one outcome, leave the same study trial."""
    ray_study, search = _searcher(3, digits, cache_dir, tmp_path / "ray")
    search.suggest("a")
    search.on_trial_complete("a", {OUTCOME_KEY: json.dumps(outcome.to_json())})
    local = optuna.create_study(directions=["minimize", "minimize"])
    trial = local.ask()
    trial.set_user_attr("label", "baseline:uniform_l1")  # what the Ray searcher's first (queued) trial carries
    state = record_outcome(trial, outcome, budget=0.5, epsilon=0.01)
    local.tell(trial, outcome.values, state=state)
    mine, theirs = ray_study.trials[0], local.trials[0]
    assert (theirs.state, theirs.values, theirs.user_attrs, theirs.constraints) == \
        (mine.state, mine.values, mine.user_attrs, mine.constraints)
