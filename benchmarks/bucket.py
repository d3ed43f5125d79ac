"""What a study in a bucket costs: the bytes, requests and seconds of a trial's checkpoints and of
the result flushes, per epoch, on the local disk and on a local S3-compatible server.

    python -m benchmarks.bucket        # about a minute on 2 cores

One trial (the autoencoder at its study defaults, the ``cpu`` preset's widths, 6 epochs on 128
training pairs of the synthetic default) runs in this process twice: its checkpoints go to a
local folder, then to a bucket on moto's S3 server started here on loopback. After each
reported epoch its results are flushed through the study store as the driver flushes them
(trials.parquet and epochs.parquet, each written whole). Every write and read of a study file
is logged (``$MEMSEARCH_IO_LOG``, :mod:`trainables.storage`); for the bucket the server's own
log also counts every request it answered, by method.

The local server's timings are not S3's (no network, no TLS, no service latency): they say what
the code asks of the store, not how long S3 takes to answer. Results in ``results/bucket.json``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance
from trainables.storage import write_json_atomic

EPOCHS = 6
REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) ')


def _trial_config(checkpoint_root: str) -> dict[str, Any]:
    from search.study_file import load_space

    return {**load_space("autoencoder").defaults(), "epochs": EPOCHS, "width_divisor": 4, "threads": 2, "seed": 0,
            "checkpoint_root": checkpoint_root}


def _io(log: Path) -> list[tuple[str, str, int, float]]:
    rows = [line.split("\t") for line in log.read_text().splitlines()] if log.is_file() else []
    return [(op, name, int(size), float(seconds)) for op, name, size, seconds in rows]


def measure(kind: str, runs: str, data, log: Path) -> dict[str, Any]:
    """One trial with its checkpoints and per-epoch result flushes at ``runs``; what the I/O log recorded."""
    from search.store.results import ResultsStore, TrialIdentity
    from search.store.study import StudyStore
    from trainables.families import find_family
    from trainables.loop import run_trial

    family = find_family("autoencoder")
    store = StudyStore(runs, f"bucket-bench-{kind}")
    store.create()
    results = ResultsStore(store, strategy="random", family="autoencoder", hp_kinds={})
    config = _trial_config(store.checkpoint_root)
    identity = TrialIdentity(full_config=dict, key_of=lambda c: "t", hyperparameters=lambda c: {})
    flushes: list[float] = []

    def report(row: dict[str, Any]) -> None:
        if row["epoch"] == 1:
            results.record_start("t", identity, config, ray_trial_id=None, segment=0, epochs_planned=EPOCHS)
        results.add_epoch("t", row)
        started = time.perf_counter()
        results.flush()
        flushes.append(time.perf_counter() - started)

    os.environ["MEMSEARCH_IO_LOG"] = str(log)
    try:
        run_trial(config, data, family, report=report)
    finally:
        del os.environ["MEMSEARCH_IO_LOG"]
    io = _io(log)
    checkpoint = [r for r in io if r[1] in ("latest.pt", "previous.pt", "best.pt", "predictions.npz")]
    tables = [r for r in io if r[1].endswith(".parquet")]

    def summary(rows: list[tuple[str, str, int, float]]) -> dict[str, Any]:
        ops = collections.Counter(f"{op} {name}" for op, name, _, _ in rows)
        return {"bytes_per_epoch": sum(r[2] for r in rows) / EPOCHS,
                "operations_per_epoch": {k: v / EPOCHS for k, v in sorted(ops.items())},
                "seconds_per_epoch": sum(r[3] for r in rows) / EPOCHS}

    return {"store": kind, "epochs": EPOCHS, "checkpoints": summary(checkpoint), "result_flushes": summary(tables),
            "flush_seconds_median": statistics.median(flushes),
            "latest_pt_bytes": max((r[2] for r in checkpoint if r[1] == "latest.pt"), default=0)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bucket", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bucket.json"))
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.bucket", argv)
    from tests.s3 import moto_server
    from trainables.data import resolve_data

    data = resolve_data(None).subset(128, 64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="memsearch-bucket-") as tmp:
        tmp_path = Path(tmp)
        rows.append(measure("local disk", str(tmp_path / "runs"), data, tmp_path / "io-local.log"))
        server_log = tmp_path / "moto.log"
        with moto_server(auth=False, log=server_log) as s3:
            os.environ.update(s3.credentials())
            before = len(server_log.read_text().splitlines())
            row = measure("local S3 server (moto)", s3.uri("runs"), data, tmp_path / "io-s3.log")
            requests = collections.Counter(m.group(1) for line in server_log.read_text().splitlines()[before:]
                                           if (m := REQUEST.search(line)))
            row["server_requests_per_epoch"] = {k: v / EPOCHS for k, v in sorted(requests.items())}
            rows.append(row)
    result = {"provenance": prov, "trial": {k: v for k, v in _trial_config("").items() if k != "checkpoint_root"},
              "train_pairs": 128, "rows": rows}
    write_json_atomic(Path(args.out), result)
    for row in rows:
        print(f"{row['store']}: checkpoints {row['checkpoints']['bytes_per_epoch'] / 1e6:.2f} MB, "
              f"{sum(row['checkpoints']['operations_per_epoch'].values()):.1f} operations, "
              f"{row['checkpoints']['seconds_per_epoch'] * 1e3:.0f} ms per epoch; result flushes "
              f"{row['result_flushes']['bytes_per_epoch'] / 1e3:.1f} kB, "
              f"{sum(row['result_flushes']['operations_per_epoch'].values()):.1f} operations, "
              f"{row['result_flushes']['seconds_per_epoch'] * 1e3:.0f} ms per epoch"
              + (f"; server requests per epoch {row['server_requests_per_epoch']}" if "server_requests_per_epoch" in row
                 else ""))
    print(f"recorded in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
