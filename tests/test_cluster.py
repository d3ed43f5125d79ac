"""A real two-node Ray cluster on loopback: the search runs through --address and uses both nodes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    import ray

    if ray.is_initialized():  # `ray stop` below ends every Ray on the machine, ours included
        ray.shutdown()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        for command in ([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                        [RAY, "start", f"--address=127.0.0.1:{port}"]):
            started = subprocess.run([*command, *common], capture_output=True, text=True, env=env, timeout=120)
            assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_search_through_address_uses_both_nodes(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    result = run_cli("search.run", "--strategy", "random", "--model", "autoencoder", "--preset", "smoke", "--final-top-k", "0",
                     "--samples", "4", "--address", address, "--runs-dir", str(tmp_path), "--study", "cluster",
                     env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "cluster" / "trials.parquet")
    assert len(trials) == 4
    assert trials["node_id"].nunique() == 2, trials[["trial_id", "node_id"]]
