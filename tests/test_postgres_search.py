"""Several machines, one study: a TPE search on a real PostgreSQL storage, refused twice, taken over, resumed.

Two "machines" are two drivers with different ``--runs-dir`` (so the per-folder lock cannot
see the other) and the same ``--storage``; only the lease in the storage keeps them apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, assert_clean_error, run_cli
from tests.postgres import postgres_server, postgres_url  # noqa: F401 - pytest fixtures

STUDY = "pg-tpe"


def _args(url: str, runs_dir, samples: int, epochs: int = 12) -> list[str]:
    return ["search.run", "--runs-dir", str(runs_dir), "--storage", url, "--preset", "smoke", "--final-top-k", "0", "--strategy", "tpe",
            "--model", "autoencoder", "--samples", str(samples), "--epochs", str(epochs), "--scheduler", "none",
            "--max-concurrent", "1", "--study", STUDY]


def _lease_holder(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not conn.execute(text("SELECT to_regclass('memsearch_study_leases')")).scalar():
                return None
            return conn.execute(text("SELECT holder FROM memsearch_study_leases WHERE study_name = :s"),
                                {"s": STUDY}).scalar()
    finally:
        engine.dispose()


def test_two_machines_one_postgres_study(postgres_url, tmp_path):  # noqa: F811 - the imported fixture
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    env = {**os.environ, "MEMSEARCH_LEASE_TIMEOUT": "3"}
    # The first machine's trials are long, so it is still running when the second one tries.
    first = subprocess.Popen([sys.executable, "-m", *_args(postgres_url, machine_a, 2, epochs=1000)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _lease_holder(postgres_url) is None and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.3)
        assert _lease_holder(postgres_url), "the first driver never took the lease"
        # Another machine, same storage: refused while the first driver lives.
        refused = run_cli(*_args(postgres_url, machine_b, 2), env={"MEMSEARCH_LEASE_TIMEOUT": "3"}, timeout=120)
        assert_clean_error(refused, "is being run by another driver", f"pid {first.pid}")
        assert "postgresql" in refused.stderr and not (machine_b / STUDY / "trials.parquet").exists()
        assert first.poll() is None, "the first driver ended before the second one tried"
        os.kill(first.pid, signal.SIGKILL)  # the first machine dies
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        try:
            os.killpg(first.pid, signal.SIGKILL)  # Ray's helpers left by the dead driver
        except ProcessLookupError:
            pass
    # Same machine here, so its lease is taken over at once (on another machine: after 3 s of silence).
    took_over = run_cli(*_args(postgres_url, machine_b, 2), env={"MEMSEARCH_LEASE_TIMEOUT": "3"}, timeout=240)
    assert took_over.returncode == 0, took_over.stderr[-3000:]
    assert "took over the lease" in took_over.stdout, took_over.stdout
    assert "1 interrupted" in took_over.stdout  # the dead driver's trial is run again, not lost
    assert _lease_holder(postgres_url) is None  # released on a clean exit

    # Resumed with a larger budget: continues the same study, its history kept.
    resumed = run_cli(*_args(postgres_url, machine_b, 3), timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 of 3 trials already done, 1 to run" in resumed.stdout
    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    states = [t.state.name for t in study.get_trials() if not t.user_attrs.get("interrupted")]
    assert states == ["COMPLETE"] * 3
    trials = pd.read_parquet(machine_b / STUDY / "trials.parquet")
    assert len(trials) == 3 and (trials["status"] == "completed").all()


def _run_until(args: list[str], line_starts: str, then, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the driver; call ``then()`` (in a thread) when a line starting with ``line_starts`` is printed."""
    import threading

    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    said, acted = [], None
    try:
        for line in proc.stdout:
            said.append(line)
            if acted is None and line.startswith(line_starts):
                acted = threading.Thread(target=then)
                acted.start()
        proc.wait(timeout=300)
        if acted is not None:
            acted.join()
        return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(said), proc.stderr.read())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_database_restart_mid_study_costs_a_line_not_the_search(postgres_server, tmp_path):  # noqa: F811
    """The PostgreSQL server that holds a TPE study and its lease is restarted (down 5 s) while trials run: the
    driver waits for it with a line, goes on, keeps its lease, and ends equal to a study no restart touched."""
    url = postgres_server.database("restart").replace("+psycopg2", "")  # as docs/clusters.md writes it: SQLAlchemy's default driver

    def args(study: str) -> list[str]:
        return ["search.run", "--runs-dir", str(tmp_path), "--storage", url, "--preset", "smoke", "--final-top-k", "0",
                "--strategy", "tpe", "--model", "autoencoder", "--samples", "4", "--epochs", "3", "--scheduler", "none",
                "--max-concurrent", "1", "--study", study]

    reference = run_cli(*args("calm"), timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]
    restarted = _run_until(args("restarted"), "[  1]", lambda: postgres_server.restart(down_s=5.0))
    assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-6000:]
    assert "database: " in restarted.stdout and "answered again after" in restarted.stdout, restarted.stdout
    assert "took over" not in restarted.stdout + restarted.stderr  # the lease stayed with its living holder
    columns = ["status", "epochs_run", "best_val_l1", "config"]
    calm, bounced = (pd.read_parquet(tmp_path / s / "trials.parquet").sort_values("started_at") for s in
                     ("calm", "restarted"))
    for table in (calm, bounced):
        table["config"] = [c.replace("restarted", "calm") for c in table["config_json"]]
    pd.testing.assert_frame_equal(calm[columns].reset_index(drop=True), bounced[columns].reset_index(drop=True))
    study = optuna.load_study(study_name="restarted", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
