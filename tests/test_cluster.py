"""A real two-node Ray cluster on loopback: the search joins the Ray `ray start` left on its machine and uses both
nodes; a Ray job runs it, and resumes it.

The cluster's two nodes are ``ray start --block`` processes, each in a session of its own; the test
stops exactly those process groups (the nodes and what they started), never ``ray stop``, which
ends every Ray on the machine, a user's search included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from tests.conftest import ROOT, run_cli

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_node(command: list[str], env: dict[str, str], timeout: float = 120.0, cwd: Path | None = None) -> subprocess.Popen:
    """``ray start ... --block`` in a session of its own (in ``cwd``), once it says the node is up."""
    node = subprocess.Popen([*command, "--block"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, cwd=cwd)
    deadline, said = time.monotonic() + timeout, []
    for line in node.stdout:
        said.append(line)
        if "Ray runtime started" in line:
            threading.Thread(target=node.stdout.read, daemon=True).start()  # drain: a full pipe would block it
            return node
        assert time.monotonic() < deadline, "".join(said[-20:])
    raise AssertionError("ray start ended before the node was up:\n" + "".join(said[-20:]))


def _stop_nodes(nodes: list[subprocess.Popen], temp: Path) -> list[str]:
    """SIGKILL each node's process group (the node and the processes it started: a test cluster has nothing
    to save); returns the pids of processes of this cluster still alive after that (none, unless one escaped)."""
    for node in reversed(nodes):
        _signal_group(node, signal.SIGKILL)
        node.wait()
    for _ in range(30):  # the raylet's workers notice their raylet is gone within a few seconds
        left = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.5)
    return left


def _signal_group(node: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(node.pid, signum)
    except ProcessLookupError:
        pass


def _wait_for_cpus(address: str, cpus: int, env: dict[str, str], timeout: float = 60.0) -> None:
    """Until the cluster's resources count both nodes: a search that connected earlier plans its
    concurrency on the head's one CPU, runs its short trials one after another, and may never use the worker."""
    deadline, said = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        said = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True, env=env).stdout
        if f"/{cpus:.1f} CPU" in said:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} never showed {cpus} CPUs:\n{said[-2000:]}")


@contextlib.contextmanager
def local_cluster(env: dict[str, str], cwds: tuple[Path | None, Path | None] = (None, None)):
    """Two Ray nodes on loopback (one CPU each), each started in its own working directory:
    yields (address, Ray's temporary folder); stops exactly those nodes."""
    port = _free_port()
    # Short (Ray's socket paths have a length limit), and named ray/ as Ray's default folder is: with RAY_TMPDIR at
    # its parent, a driver finds the cluster there as `ray start` left it on this machine (ray_current_cluster).
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")) / "ray"
    temp.mkdir()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_start_node([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                                  f"--temp-dir={temp}", *common], env, cwd=cwds[0]))
        nodes.append(_start_node([RAY, "start", f"--address=127.0.0.1:{port}", *common], env, cwd=cwds[1]))
        _wait_for_cpus(f"127.0.0.1:{port}", 2, env)
        yield f"127.0.0.1:{port}", temp
    finally:
        left = _stop_nodes(nodes, temp)
        shutil.rmtree(temp.parent, ignore_errors=True)
        assert not left, f"processes of the test's cluster outlived it: {left}"


def test_a_search_joins_the_ray_started_on_its_machine(tmp_path):
    """No --address on a machine where `ray start` ran: the search joins that Ray, as ray.init() would (it asked it
    for resources, and Ray refused with a traceback), says so, and runs its trials there. That both nodes train is
    tested through --address by tests/test_bucket.py's two-node study: joined by the address `ray start` wrote (the
    machine's, where these nodes listen on loopback), one CI run put every trial on one node."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with local_cluster(env) as (address, temp):
        result = run_cli("search.run", "--strategy", "random", "--model", "autoencoder", "--preset", "smoke",
                         "--final-top-k", "0", "--samples", "4", "--runs-dir", str(tmp_path), "--study", "cluster",
                         env={**env, "RAY_TMPDIR": str(temp.parent)}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    joined = [line for line in result.stdout.splitlines() if line.startswith("ray: joining the Ray started on this")]
    assert joined and joined[0].split(" (")[0].endswith(":" + address.rsplit(":", 1)[1]), result.stdout[:2000]
    trials = pd.read_parquet(tmp_path / "cluster" / "trials.parquet")
    assert len(trials) == 4 and trials["status"].isin(["completed", "stopped"]).all(), trials[["trial_id", "status"]]


def test_a_ray_job_runs_the_search_and_a_second_submission_resumes_it(tmp_path):
    """``ray job submit`` (what KubeRay's RayJob runs): the driver finds its cluster through RAY_ADDRESS and passes it
    no resources. ``ray job stop`` (what deleting a RayJob, or its deadline, does: SIGTERM, SIGKILL 3 s later) while a
    worker writes a checkpoint ends the job with the driver's interrupted line; the same command submitted again resumes the
    study to its end, no trial or epoch trained twice, and a third submission (``--address auto``) has nothing left. A
    study whose every trial errors ends its job FAILED, with the driver's one error line and no traceback."""
    import json
    import re

    port, dashboard, agent = _free_port(), _free_port(), _free_port()
    temp = Path(tempfile.mkdtemp(prefix="rayjob", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = _start_node([RAY, "start", "--head", f"--port={port}", "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                        f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}",
                        "--num-cpus=2", "--node-ip-address=127.0.0.1", "--disable-usage-stats"], env)
    command = ["python", "-m", "search.run", "--strategy", "greedy", "--model", "autoencoder", "--preset", "smoke",
               "--final-top-k", "0", "--runs-dir", str(tmp_path), "--study", "job"]
    jobs = f"--address=http://127.0.0.1:{dashboard}"

    def submit(*extra: str, job_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + 90
        while True:  # the Jobs server answers before its node's agent has registered: "try again later"
            done = subprocess.run([RAY, "job", "submit", jobs, f"--working-dir={ROOT}", *job_options, "--", *command,
                                   *extra], capture_output=True, text=True, env=env, timeout=300)
            if "No available agent" not in done.stderr or time.monotonic() > deadline:
                return done
            time.sleep(2)

    def job(*args: str) -> str:
        return subprocess.run([RAY, "job", *args, jobs], capture_output=True, text=True, env=env, timeout=120).stdout

    flag = tmp_path / "paused"  # a worker holds in its third checkpoint write (trainables.faults), the first trial done
    paused = json.dumps({"env_vars": {"MEMSEARCH_PAUSE_AT": "checkpoint-tmp:3", "MEMSEARCH_PAUSE_FLAG": str(flag)}})
    try:
        stopped = submit(job_options=("--no-wait", f"--runtime-env-json={paused}"))
        name = re.search(r"raysubmit_[A-Za-z0-9]+", stopped.stdout + stopped.stderr)
        assert stopped.returncode == 0 and name, stopped.stdout[-3000:] + stopped.stderr
        deadline = time.monotonic() + 180
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert flag.exists(), job("logs", name.group(0))[-3000:]
        job("stop", name.group(0))  # returns once the job has stopped
        assert "was stopped" in job("status", name.group(0))
        said = job("logs", name.group(0))
        assert "interrupted: finished trials are saved" in said and "Traceback" not in said, said[-3000:]
        first = submit()
        assert first.returncode == 0 and "succeeded" in first.stdout + first.stderr, first.stdout[-3000:] + first.stderr
        assert "4/4 trials" in first.stdout and "Traceback" not in first.stdout
        trials = pd.read_parquet(tmp_path / "job" / "trials.parquet")
        epochs = pd.read_parquet(tmp_path / "job" / "epochs.parquet")
        assert len(trials) == 4 and trials["trial_id"].is_unique and set(trials["status"]) <= {"completed", "stopped"}
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        again = submit("--address", "auto")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr
        assert "[  1]" not in again.stdout, again.stdout  # nothing re-run: the study resumed, finished
        after = pd.read_parquet(tmp_path / "job" / "trials.parquet")
        assert after["trial_id"].tolist() == trials["trial_id"].tolist()
        assert (after["ended_at"] == trials["ended_at"]).all()
        # a study whose every trial errors (each worker SIGKILLed at its first checkpoint) fails its job: a RayJob sees it
        crashing = json.dumps({"env_vars": {"MEMSEARCH_CRASH_AT": "checkpoint-tmp:1"}})
        dead = submit("--study", "dead", "--max-failures", "0", "--scheduler", "none", job_options=(f"--runtime-env-json={crashing}",))
        said = dead.stdout + dead.stderr
        assert dead.returncode != 0 and "failed" in said and "error: every trial of study dead errored" in said, said[-3000:]
        assert "Traceback" not in said, said[-3000:]
    finally:
        left = _stop_nodes([head], temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test's head outlived it: {left}"


def test_store_retry_travels_with_each_trial_not_the_workers_environment(monkeypatch):
    """A Ray job's workers run the job's environment, not the driver's: --store-retry goes to each trial with its
    function's parameters (search/runner/tuning.py), and the trial waits as long as the driver."""
    from trainables import retry

    monkeypatch.setenv(retry.RETRY_ENV, "7")
    carried = retry.carried()
    monkeypatch.delenv(retry.RETRY_ENV)  # a worker of the job
    assert retry.retry_seconds() == retry.DEFAULT_RETRY_S
    retry.adopt(carried)
    assert retry.retry_seconds() == 7.0
    monkeypatch.delenv(retry.RETRY_ENV)
    retry.adopt(None)  # a driver without --store-retry: the default stands
    assert retry.retry_seconds() == retry.DEFAULT_RETRY_S


def test_a_trial_must_fit_on_one_node_not_on_the_clusters_totals():
    """Two 2-CPU nodes hold 4 CPUs in all but no 3-CPU trial: refused at once, where its trials would have waited
    forever; and trials at once are counted node by node."""
    import pytest

    from search.errors import StudyError
    from search.runner.plan import check_one_node_fits, trials_that_fit

    two = [(2.0, 0.0), (2.0, 0.0)]
    check_one_node_fits(two, 2, 0)
    check_one_node_fits([], 3, 0)  # Ray did not list its nodes: the totals' check stands alone
    with pytest.raises(StudyError, match=r"asks for 3 CPU\(s\).*the largest of its 2 nodes has 2 CPU\(s\)\)"):
        check_one_node_fits(two, 3, 0)
    gpu = [(8.0, 0.0), (4.0, 1.0)]
    check_one_node_fits(gpu, 4, 1)
    with pytest.raises(StudyError, match=r"asks for 1 CPU\(s\) and 2 GPU\(s\) .* has 4 CPU\(s\) and 1 GPU\(s\)"):
        check_one_node_fits(gpu, 1, 2)
    assert trials_that_fit([(3.0, 0.0), (3.0, 0.0)], 2, 0) == 2  # the totals said 3
    assert trials_that_fit(gpu, 1, 0.5) == 2 and trials_that_fit(gpu, 1, 0) == 12
    assert trials_that_fit([(16.0, 1.0)], 1, 1 / 3) == 3
    assert trials_that_fit([(16.0, 2.0)], 1, 0.4) == 4  # a fraction fits within one GPU: two on each


def test_a_study_folder_that_a_node_does_not_see_is_refused(ray_local, tmp_path, monkeypatch):
    """A task on each node looks for a file the driver wrote in the study folder; here none is written (as a node
    without the shared mount would find none): refused, naming the node, and nothing is left behind."""
    from pathlib import Path

    import pytest

    from search.errors import StudyError
    from search.runner.plan import check_every_node_sees
    from search.store.study import StudyStore

    store = StudyStore(tmp_path, "s")
    store.create()
    check_every_node_sees(store)  # one node, which sees the folder: passes
    monkeypatch.setattr(Path, "write_text", lambda self, text: None)
    with pytest.raises(StudyError, match=r"is not seen by 1 of the cluster's 1 nodes .* a bucket"):
        check_every_node_sees(store)
    assert not list(store.root.local.glob(".seen-*"))
