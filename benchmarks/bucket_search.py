"""A `cpu`-preset greedy search in a bucket, SIGKILLed twice and resumed, against the same search on a
local folder: the same trials and the same val L1 at every epoch.

    python -m benchmarks.bucket_search     # about 25 minutes on 2 cores

It starts moto's S3 server (authentication on) and a PostgreSQL server (the bucket study's lease)
on loopback, as the tests do (``tests/s3.py``, ``tests/postgres.py``), and stops exactly those.
Then, one trial at a time (with two at once ASHA's decisions depend on which result arrives
first, so even two uninterrupted runs may differ), without the final stage:

    python -m search.run --strategy greedy --model autoencoder --preset cpu --max-concurrent 1 --final-top-k 0 \\
        --runs-dir DIR --study local
    python -m search.run ... --runs-dir 's3://memsearch-test/runs?endpoint_override=...' \\
        --storage postgresql+psycopg2://... --study bucket

The bucket run is SIGKILLed (its whole process group) when the 4th and the 10th trial have
finished, and re-run after each kill to its end. Results in ``results/bucket_search.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import ROOT, provenance
from trainables.storage import write_json_atomic

KILL_AFTER = (4, 10)  # finished trials (the "[  n]" lines) at which the bucket run is killed
COMMON = ["--strategy", "greedy", "--model", "autoencoder", "--preset", "cpu", "--max-concurrent", "1",
          "--final-top-k", "0"]


def _run(command: list[str], env: dict[str, str], kill_at: int | None) -> dict[str, Any]:
    """Run the search; SIGKILL it once ``kill_at`` trials have finished. Its exit code, seconds and last lines."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
        if kill_at is not None and line.startswith(f"[{kill_at:3d}]"):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait()
    return {"returncode": process.returncode, "seconds": round(time.perf_counter() - started, 1), "last": lines[-3:]}


def _tables(runs: str, study: str) -> tuple[Any, Any]:
    from trainables.opening import open_location
    from search.store.study import StudyStore

    store = StudyStore(open_location(runs), study)
    return store.read_table("trials.parquet").to_pandas(), store.read_table("epochs.parquet").to_pandas()


def compare(local: str, bucket: str) -> dict[str, Any]:
    """The two studies' trials (id, status, epochs, best val L1) and every epoch's val L1, compared exactly."""
    (lt, le), (bt, be) = _tables(local, "local"), _tables(bucket, "bucket")
    columns = ["trial_id", "status", "epochs_run", "best_val_l1"]
    lt, bt = (t.sort_values("trial_id")[columns].reset_index(drop=True) for t in (lt, bt))
    le, be = (e.sort_values(["trial_id", "epoch"])[["trial_id", "epoch", "val_l1"]].reset_index(drop=True)
              for e in (le, be))
    return {"trials": len(lt), "trials_bucket": len(bt), "epoch_rows": len(le), "epoch_rows_bucket": len(be),
            "trials_equal": lt.equals(bt), "epoch_val_l1_equal": le.equals(be),
            "best_val_l1": [float(lt["best_val_l1"].min()), float(bt["best_val_l1"].min())]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bucket_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bucket_search.json"))
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.bucket_search", argv)
    from tests.postgres import start_server
    from tests.s3 import moto_server

    database = start_server()
    try:
        with moto_server() as s3, tempfile.TemporaryDirectory(prefix="memsearch-bucket-search-") as tmp:
            os.environ.update(s3.credentials())  # this process reads the bucket too (the comparison)
            env = {**os.environ, "RAY_AIR_NEW_OUTPUT": "0"}
            storage = database.database("memsearch_bucket")
            local_dir, bucket = str(Path(tmp) / "runs"), s3.uri("runs")
            search = [sys.executable, "-m", "search.run", *COMMON]
            local_command = [*search, "--runs-dir", local_dir, "--study", "local"]
            bucket_command = [*search, "--runs-dir", bucket, "--storage", storage, "--study", "bucket"]
            runs = {"local": [_run(local_command, env, None)], "bucket": []}
            for kill_at in [*KILL_AFTER, None]:
                runs["bucket"].append(_run(bucket_command, env, kill_at))
            result = {"provenance": prov, "runs": runs, "comparison": compare(local_dir, bucket),
                      "commands": {"local": " ".join(["python", "-m", "search.run", *COMMON, "--runs-dir", "DIR",
                                                      "--study", "local"]),
                                   "bucket": " ".join(["python", "-m", "search.run", *COMMON, "--runs-dir",
                                                       "'s3://memsearch-test/runs?endpoint_override=127.0.0.1:PORT"
                                                       "&scheme=http&region=us-east-1'", "--storage",
                                                       "postgresql+psycopg2://postgres@127.0.0.1:PORT/memsearch_bucket",
                                                       "--study", "bucket"])},
                      "kills": [r["returncode"] for r in runs["bucket"]].count(-signal.SIGKILL)}
    finally:
        database.stop()
        import shutil

        shutil.rmtree(database.root, ignore_errors=True)
    write_json_atomic(Path(args.out), result)
    c = result["comparison"]
    print(f"bucket search: {result['kills']} kills survived; {c['trials']} trials, {c['epoch_rows']} epoch rows; trials "
          f"{'equal' if c['trials_equal'] else 'DIFFERENT'}, every epoch's val L1 "
          f"{'equal' if c['epoch_val_l1_equal'] else 'DIFFERENT'} to the local folder's; recorded in {args.out}")
    return 0 if c["trials_equal"] and c["epoch_val_l1_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
