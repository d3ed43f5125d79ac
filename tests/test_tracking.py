"""A study in MLflow, against a real ``mlflow server`` (SQLite backend, on loopback, started and stopped here), read
back with ``MlflowClient``: the study as a parent run, each trial a nested run, a resumed study in the same parent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import assert_clean_error, run_cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                               "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: only what this test started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _search(runs: Path, *args: str, env: dict | None = None):
    return run_cli("search.run", "--strategy", "tpe", "--model", "autoencoder", "--preset", "smoke",
                   "--runs-dir", str(runs), "--study", "tracked", *args, env=env, timeout=300)


def test_a_study_is_a_parent_run_and_each_trial_a_nested_run(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    first = _search(tmp_path, "--samples", "3", "--final-top-k", "0", "--mlflow", mlflow_server)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "View run" not in first.stdout  # MLflow's own links: the search prints its lines
    # Resumed with MLFLOW_TRACKING_URI instead of --mlflow: two more trials, then the final stage.
    resumed = _search(tmp_path, "--samples", "5", "--final-top-k", "1", "--final-seeds", "2",
                      env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "mlflow: continuing run" in resumed.stdout and "(3 trials logged)" in resumed.stdout

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("memsearch")
    parents = client.search_runs([experiment.experiment_id], "tags.`memsearch.role` = 'study'")
    assert len(parents) == 1, "a resumed study continues the same parent run"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["strategy"] == "tpe"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = pd.read_parquet(tmp_path / "tracked" / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(tmp_path / "tracked" / "epochs.parquet")
    logged = [run.data.tags["memsearch.trial_id"] for run in children]
    assert sorted(logged) == sorted(trials.index), "every trial once, none twice"
    for run in children:
        trial_id = run.data.tags["memsearch.trial_id"]
        row = trials.loc[trial_id]
        assert run.data.tags["memsearch.status"] == row["status"]
        assert run.info.status == ("FINISHED" if row["status"] in ("completed", "stopped") else "FAILED")
        assert run.data.params["lr"] == str(row["hp_lr"]) and run.data.params["optimizer"] == row["hp_optimizer"]
        history = client.get_metric_history(run.info.run_id, "val_l1")
        mine = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert [m.step for m in history] == mine["epoch"].tolist()
        assert [m.value for m in history] == pytest.approx(mine["val_l1"].tolist())
    # The parent: the final stage's test L1 with its interval, and whether it beats the baseline.
    import json

    summary = json.loads((tmp_path / "tracked" / "summary.json").read_text())
    stat = summary["final"]["configurations"][0]["test_l1"]
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["final_test_l1"] == pytest.approx(stat["mean"]) and metrics["final_test_l1_seeds"] == 2
    assert metrics["final_test_l1_ci95"] == pytest.approx(stat["ci95"])
    assert metrics["beats_baseline"] == float(summary["final"]["beats_baseline"])
    assert parent.data.tags["beats_baseline"] in ("true", "false")


def test_an_unreachable_tracking_server_is_refused_before_ray_starts(tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"
    result = _search(tmp_path, "--samples", "2", "--mlflow", closed)
    assert_clean_error(result, f"cannot reach the MLflow tracking server at {closed}")
    assert "preset:" not in result.stdout and not (tmp_path / "tracked").exists()
