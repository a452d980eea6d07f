"""The cluster path as a user meets it: a head and a worker started with the `ray start` CLI under token
authentication, and a digits search submitted with `ray job submit`, as the README's commands do; and the extra and
the cluster-launcher config that those commands rely on."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import ROOT

RAY = Path(sys.executable).with_name("ray")  # the venv's CLI, as `pip install -e '.[ray]'` puts it on PATH
TARGET = "target_device"  # the custom resource only the worker node advertises
SEARCH = ["--workload", "digits-cnn", "--budget", "0.5", "--trials", "3", "--threads", "1", "--finetune-epochs", "0.5",
          "--final-epochs", "1"]  # a final fine-tune longer than the search's, so it keeps its model

pytestmark = pytest.mark.skipif(not RAY.is_file(), reason=f"no `ray` CLI next to {sys.executable}: pip install -e "
                                                          "'.[ray]' installs it")


@dataclass
class Cluster:
    """Two nodes started with `ray start`: how to reach them, and the environment their commands need."""

    env: dict[str, str]
    dashboard: str
    token: str


def free_port() -> int:
    """A port nobody listens on now: each node gets its own, so this cluster never meets another Ray here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(args: list[str], env: dict[str, str], log: Path, started: list[subprocess.Popen]) -> None:
    """`ray start ARGS --block` in a session of its own (appended to `started` first, so it is always torn down);
    returns once Ray says the node runs, which `ray start` says only after the node has joined the cluster."""
    with log.open("w") as out:
        process = subprocess.Popen([str(RAY), "start", *args, "--block", "--disable-usage-stats"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(process)
    deadline = time.monotonic() + 120
    while "Ray runtime started." not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, f"ray start {args}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def stop_node(process: subprocess.Popen) -> None:
    """SIGTERM: `ray start --block` stops every process of its node; then whatever is left in its session goes.
    (Not `ray stop`: that stops every Ray on this machine.)"""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (1 CPU) and a target worker (TARGET and no CPU: it only measures), each with its own temp dir as on
    two machines, both under token authentication with a token of their own: the README's `ray start` commands."""
    started: list[subprocess.Popen] = []
    # A short path: Ray's unix sockets live under it, and their paths may not exceed 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ray-", ignore_cleanup_errors=True) as root:
        token = secrets.token_hex(32)
        (Path(root) / "auth_token").write_text(token)
        env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(PATH=f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=f"{root}/auth_token")  # the token file, not this user's ~/.ray/auth_token
        gcs, dashboard = free_port(), free_port()
        try:
            start_node(["--head", "--num-cpus", "1", "--port", str(gcs), "--dashboard-port", str(dashboard),
                        "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port",
                        str(free_port()), "--temp-dir", f"{root}/head"], env, Path(root) / "head.log", started)
            start_node(["--address", f"127.0.0.1:{gcs}", "--num-cpus", "0", "--resources", json.dumps({TARGET: 1}),
                        "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", f"{root}/worker"], env,
                       Path(root) / "worker.log", started)
            yield Cluster(env, f"http://127.0.0.1:{dashboard}", token)
        finally:
            for process in reversed(started):
                stop_node(process)


def get(cluster: Cluster, path: str, authorized: bool = True) -> dict:
    """GET the dashboard's JSON at `path`, with the cluster's token unless told not to."""
    headers = {"Authorization": f"Bearer {cluster.token}"} if authorized else {}
    with urllib.request.urlopen(urllib.request.Request(cluster.dashboard + path, headers=headers), timeout=30) as r:
        return json.loads(r.read())


def target_node_id(cluster: Cluster) -> str:
    """The id of the node that advertises TARGET (Ray's state API)."""
    nodes = get(cluster, "/api/v0/nodes?detail=1")["data"]["result"]["result"]
    (node,) = [n for n in nodes if n["resources_total"].get(TARGET)]
    return node["node_id"]


@pytest.mark.slow(reason="a two-node cluster started with `ray start`, about 20 s")
def test_the_cluster_refuses_a_request_without_its_token(cluster: Cluster) -> None:
    """Token authentication is really on, so the search below shows the commands work under it."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(cluster, "/api/v0/nodes", authorized=False)
    assert refused.value.code == 401


@pytest.mark.slow(reason="a search submitted with `ray job submit`, about 2 minutes")
def test_a_search_submitted_with_ray_job_submit_runs_to_the_end(cluster: Cluster, cache_dir: Path, digits,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"  # absolute, as the README asks: the job's driver does not run in this folder
    result = subprocess.run(
        [str(RAY), "job", "submit", "--", "python", "-m", "search.run", "--backend", "ray", "--address", "auto",
         "--latency-on", TARGET, *SEARCH, "--cache-dir", str(cache_dir), "--out", str(out)],
        cwd=ROOT, env={**cluster.env, "RAY_ADDRESS": cluster.dashboard}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "succeeded" in result.stdout, (result.stdout + result.stderr)[-4000:]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["trials"]["complete"] + pareto["trials"]["pruned"] == 3 and pareto["trials"]["failed"] == 0
    assert pareto["pareto"] and (out / "best" / "model.pt").is_file()
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    worker = f"node {target_node_id(cluster)[:12]}"
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(worker in t.user_attrs["latency_node"] for t in complete)
    setup = study.user_attrs["latency_setup"]  # the worker alone measured, and the report says so
    assert setup["resource"] == TARGET and setup["measured_on"].count("node ") == 1 and worker in setup["measured_on"]
    assert worker in (out / "report.md").read_text()
    finals = [e for e in study.user_attrs["final"].values() if e["kept"] == "final"]  # the final stage timed there too
    batches = study.user_attrs["latency_by_batch"].values()
    assert finals and all(worker in e["latency_node"] for e in finals)
    assert batches and all(worker in e["latency_node"] for e in batches)


def test_the_ray_extra_installs_the_jobs_cli() -> None:
    """`ray job submit` refuses to run without ray[default]; the README's cluster commands need it."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (ray,) = [spec for spec in extras["ray"] if spec.startswith("ray[")]
    assert {"default", "tune"} <= set(ray.split("[")[1].split("]")[0].split(","))


def test_the_cluster_config_runs_every_node_under_token_auth() -> None:
    """ray_cluster.yaml: Ray accepts it, its containers run with RAY_AUTH_MODE=token and every node gets the
    launching machine's token at Ray's default path (the image's home is /home/ray)."""
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` checks first

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    validate_config(prepare_config(config))
