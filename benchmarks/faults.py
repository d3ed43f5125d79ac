"""Fault injection: a study killed again and again ends equal to one that never was, for every kind of study.

    python -m benchmarks.faults                  # greedy, tpe, pbt and a greedy study in a bucket, 12 kills each
    python -m benchmarks.faults --kills 3 --only tpe

For each kind, a smoke study is run once without interruption (the reference), then again in another place where
the driver is SIGKILLed ``--kills`` times and resumed after each kill. The kinds: ``greedy`` and ``tpe`` (the
autoencoder, 6 epochs, ASHA, one trial at a time), ``pbt`` (a GAN population of 2, 40 epochs each) and ``bucket``
(the greedy study with its runs folder in a bucket, moto's S3 server on loopback, and its lease in PostgreSQL, both
started here and stopped after). The kills are spread over the whole search (kill i comes when about
i/(kills+1) of the reference's trials have finished) and drawn with a seeded generator among

- the named crash points of :mod:`trainables.faults` the kind passes through (right after the searcher recorded a
  finished trial and before the results callback ran; with a Parquet, ``greedy_state.json``, ``study.json`` or
  ``schedules.parquet`` temporary file written but not yet moved into place; right after a Parquet flush), each at
  its n-th occurrence in the run;
- a trial's worker killed at a crash point of its own (``checkpoint-tmp``: mid-write of ``latest.pt``), or by the
  driver at ``worker-handoff`` (a trial has ended and Ray Tune hands its worker the next one), once per run, the
  driver then killed by a timer;
- a timer (a random moment: mid-epoch, during Ray's start-up, between trials).

Once, after a timed kill, the newest ``latest.pt`` of an unfinished trial is truncated (the trial must fall back to
``previous.pt``, or restart when it has none, and say so).

At the end the two studies are compared: the same trials (configurations), the same status, epochs and best val L1
per trial, the same val L1 per trial per epoch, bit for bit. A trial is *lost* if the reference has it finished and
the faulted study does not; it is *repeated* if the faulted study has a trial the reference does not, or if a trial
recorded as finished after one run was started again in a later one. Epochs count too: the epochs every driver run's
trials reported (each driver appends them to ``$MEMSEARCH_EPOCH_LOG``) beyond those the study keeps were trained
twice, after a kill sent a trial back to its last checkpoint (checkpoints are paced, so a few are expected). One line
per kind, and the whole record in ``benchmarks/results/faults.json``.

Runs greedy and tpe one trial at a time on purpose: with two or more at once ASHA's decisions depend on which result
arrives first, so even two uninterrupted runs can differ (see docs/reliability.md). A population's members run together (a
population is decided on all of them), and its decisions wait for every member, so it repeats all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
STUDY = "faults"
SMOKE = ["--preset", "smoke", "--final-top-k", "0", "--seed", "3", "--study", STUDY]
GREEDY = ["--strategy", "greedy", "--model", "autoencoder", "--epochs", "6", "--max-concurrent", "1", "--blocks", "6"]
KINDS = {  # the command's arguments of each kind of study (the bucket's runs folder and database come at run time)
    "greedy": GREEDY,
    "tpe": ["--strategy", "tpe", "--model", "autoencoder", "--epochs", "6", "--max-concurrent", "1", "--samples", "14"],
    "pbt": ["--strategy", "pbt", "--model", "gan", "--epochs", "40", "--population", "2"],  # long enough for 10 kills
    "bucket": GREEDY,
}
STARTUP_SECONDS = 12.0  # a driver's start (imports, Ray, data) before its first trial trains, on 2 cores
# Driver crash points each kind passes through -> the largest extra n drawn for it beyond the planned progress
# (study.json is written when a run starts and, as summary.json, when it ends: only the first is mid-search).
POINTS = {"searcher-complete": 2, "parquet-tmp": 4, "results-flushed": 2, "study-json-tmp": 1, "greedy-state-tmp": 2,
          "schedule-flushed": 3}
KIND_POINTS = {"greedy": ["searcher-complete", "parquet-tmp", "results-flushed", "study-json-tmp", "greedy-state-tmp"],
               "tpe": ["searcher-complete", "parquet-tmp", "results-flushed", "study-json-tmp"],
               "pbt": ["parquet-tmp", "results-flushed", "study-json-tmp", "schedule-flushed"],
               "bucket": ["searcher-complete", "parquet-tmp", "results-flushed", "study-json-tmp", "greedy-state-tmp"]}
# Worker crash points (once per run), each followed by a timer on the driver; worker-handoff needs reused workers.
WORKER_POINTS = {"greedy": ["checkpoint-tmp", "worker-handoff"], "tpe": ["checkpoint-tmp", "worker-handoff"],
                 "pbt": ["checkpoint-tmp"], "bucket": ["checkpoint-tmp", "worker-handoff"]}
RUN_TIMEOUT = 600


@dataclass
class Target:
    """Where one study lives: a local folder, or a bucket (``runs`` a URI, with the database of its lease)."""

    runs: str
    logs: Path  # a local folder for this study's epoch log
    storage: str | None = None

    @property
    def args(self) -> list[str]:
        return ["--runs-dir", self.runs] + (["--storage", self.storage] if self.storage else [])

    def store(self):
        from trainables.opening import open_location
        from search.store.study import StudyStore

        return StudyStore(open_location(self.runs) if "://" in self.runs else self.runs, STUDY)

    def table(self, name: str) -> pd.DataFrame | None:
        table = self.store().read_table(name)
        return table.to_pandas() if table is not None else None


def _run(target: Target, args: list[str], *, crash_at: str | None = None, kill_after: float | None = None) -> dict[str, Any]:
    """One driver run; returns how it ended. Ray's helpers are cleaned up whatever happens."""
    target.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEMSEARCH_EPOCH_LOG": str(target.logs / "epochs-reported.log"),
           "MEMSEARCH_CRASH_ONCE": str(target.logs / f"crashed-{time.monotonic_ns()}")}
    env.pop("MEMSEARCH_CRASH_AT", None)
    if crash_at:
        env["MEMSEARCH_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "search.run", *target.args, *SMOKE, *args]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    events: list[str] = []
    try:
        out, _ = proc.communicate(timeout=kill_after if kill_after is not None else RUN_TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash would
        out, _ = proc.communicate()
        timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's helpers the dead driver left behind
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 20  # gone for good before anything touches their files
        while subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
    killed = proc.returncode == -signal.SIGKILL
    return {"crash_at": crash_at, "kill_after": kill_after, "killed": killed, "timer_fired": timed_out,
            "returncode": proc.returncode, "seconds": time.monotonic() - started, "events": events, "output": out}


def _notices(output: str) -> list[str]:
    """The lines where a trial said its checkpoint could not be used as it was."""
    return [line for line in output.splitlines() if "resumed from previous.pt" in line or "restarted from epoch 0" in line]


def _finished(target: Target) -> dict[str, Any]:
    trials = target.table("trials.parquet")
    if trials is None:
        return {}
    done = trials[trials["status"] != "running"]
    return {row.trial_id: (row.status, str(row.ended_at)) for row in done.itertuples()}


def _progress(name: str, target: Target) -> int:
    """How far the faulted study has got, in the unit its kills are planned in: finished trials, or for a
    population (whose members all finish at the end) recorded epochs."""
    if name != "pbt":
        return len(_finished(target))
    epochs = target.table("epochs.parquet")
    return 0 if epochs is None else len(epochs)


def _truncate_newest_unfinished(target: Target) -> str | None:
    """Cut the newest ``latest.pt`` of an unfinished trial in half (a disk that lost its tail), wherever it lives."""
    trials = target.table("trials.parquet")
    running = set(trials.loc[trials["status"] == "running", "trial_id"]) if trials is not None else set()
    store = target.store()
    candidates = [f for tid in sorted(running) for f in store.trial_folder(tid).files() if f.name == "latest.pt"]
    if not candidates:
        return None
    newest = max(candidates, key=lambda f: (os.stat(f.path).st_mtime if f.is_local else 0, f.path))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    return newest.parent.name


def epochs_trained(target: Target) -> dict[str, int]:
    """Epochs the study's trials reported to its drivers, every run's (the driver appends each live report to
    $MEMSEARCH_EPOCH_LOG), against the epochs the study keeps: the difference is epochs trained twice, after a kill
    sent a trial back to its last checkpoint (paced checkpoints may leave an epoch or more behind). Epochs trained
    and lost before their report reached a driver are not seen: a floor, not a ceiling."""
    log = target.logs / "epochs-reported.log"
    reported = len(log.read_text().splitlines()) if log.is_file() else 0
    kept = len(target.table("epochs.parquet"))
    return {"epochs_reported": reported, "epochs_kept": kept, "epochs_repeated": max(0, reported - kept)}


def compare(reference: Target, faulted: Target) -> dict[str, Any]:
    """What differs between the two studies' results."""
    ref_t, got_t = reference.table("trials.parquet"), faulted.table("trials.parquet")
    ref_e, got_e = reference.table("epochs.parquet"), faulted.table("epochs.parquet")
    ref_done = set(ref_t.loc[ref_t["status"] != "running", "trial_id"])
    got_done = set(got_t.loc[got_t["status"] != "running", "trial_id"])
    columns = ["trial_id", "status", "epochs_run", "best_val_l1", "config"]
    for table in (ref_t, got_t):  # the configs, less the folder they were checkpointed in
        table["config"] = [json.dumps({k: v for k, v in json.loads(c).items() if k != "checkpoint_root"}, sort_keys=True)
                           for c in table["config_json"]]
    trials_equal = ref_t[columns].sort_values("trial_id").reset_index(drop=True).equals(
        got_t[columns].sort_values("trial_id").reset_index(drop=True))
    key = ["trial_id", "epoch"]
    ref_curve = ref_e.set_index(key)["val_l1"].sort_index()
    got_curve = got_e.set_index(key)["val_l1"].sort_index()
    curves_equal = ref_curve.index.equals(got_curve.index) and bool((ref_curve.values == got_curve.values).all())
    return {"trials": len(ref_t), "lost": sorted(ref_done - got_done), "extra": sorted(set(got_t["trial_id"]) - set(ref_t["trial_id"])),
            "still_running": sorted(set(got_t.loc[got_t["status"] == "running", "trial_id"])),
            "trials_equal": bool(trials_equal), "epoch_curves_equal": curves_equal,
            "epoch_rows": [len(ref_e), len(got_e)]}


def _kill_spec(name: str, i: int, kills: int, total: int, per_trial: float, target: Target,
               rng: random.Random) -> dict[str, Any]:
    """How run i of the faulted search is killed: by a timer, at a named crash point of the driver, or a worker at
    one of its own (then the driver, by a timer)."""
    # Spread the kills over the whole search: kill i comes once about (i + 1) / (kills + 1)
    # of the reference's trials have finished, at a point drawn around there.
    ahead = max(0, round((i + 1) * total / (kills + 1)) - _progress(name, target))
    timer = round(STARTUP_SECONDS + (ahead + rng.random()) * per_trial, 1)
    draw = rng.random()
    if draw < 0.25:
        return {"kill_after": timer}
    if draw < 0.45:  # a worker dies at a point of its own (once); the driver follows a while later
        point = rng.choice(WORKER_POINTS[name])
        n = max(1, ahead + rng.randint(1, 2)) if point == "worker-handoff" else rng.randint(2, 4)
        return {"crash_at": f"{point}:{n}", "kill_after": round(timer + per_trial, 1)}
    point = rng.choice(KIND_POINTS[name])
    # How often each point comes round per finished trial (two Parquet files per flush, a flush when a trial starts
    # and when it ends; a population member's epoch per schedule flush).
    per = {"searcher-complete": 1, "greedy-state-tmp": 1, "results-flushed": 2, "parquet-tmp": 4,
           "schedule-flushed": 1}.get(point, 0)
    if name == "pbt" and point in ("results-flushed", "parquet-tmp"):  # members' results: a flush every 5 s
        per = (1 if point == "results-flushed" else 2) * per_trial / 5.0
    return {"crash_at": f"{point}:{max(1, round(per * ahead) + rng.randint(1, POINTS[point]))}"}


def run_kind(name: str, reference: Target, faulted: Target, kills: int, rng: random.Random) -> dict[str, Any]:
    args = KINDS[name]
    started = time.monotonic()
    ref_run = _run(reference, args)
    if ref_run["returncode"] != 0:
        raise SystemExit(f"error: the uninterrupted {name} run failed:\n{ref_run['output'][-3000:]}")
    trials = reference.table("trials.parquet")
    total = len(trials)
    # A trial's share of the reference's wall time (training, evaluation, Ray's scheduling).
    per_trial = max(1.0, (ref_run["seconds"] - STARTUP_SECONDS) / max(total, 1))
    if name == "pbt":  # a member is one trial from start to end: time the kills by its epochs instead
        total = len(reference.table("epochs.parquet"))
        per_trial = max(1.0, (ref_run["seconds"] - STARTUP_SECONDS) / max(total, 1))
    truncate_at = None
    runs: list[dict[str, Any]] = []
    seen_finished: dict[str, Any] = {}
    repeated: set[str] = set()
    survived = 0
    for i in range(kills):
        spec = _kill_spec(name, i, kills, total, per_trial, faulted, rng)
        result = _run(faulted, args, **spec)
        if result["killed"]:
            survived += 1
            if truncate_at is None and result["timer_fired"] and not result["crash_at"] and i > 1:
                truncate_at = _truncate_newest_unfinished(faulted)
                result["events"].append(f"truncated latest.pt of {truncate_at}" if truncate_at else "nothing to truncate")
        finished_now = _finished(faulted)
        for tid, record in seen_finished.items():  # a trial recorded as finished must stay as it was
            if finished_now.get(tid) != record:
                repeated.add(tid)
        seen_finished.update(finished_now)
        runs.append({k: v for k, v in result.items() if k != "output"}
                    | {"tail": result["output"][-600:], "notices": _notices(result["output"])})
        how = (result["crash_at"] or "") + (f" timer {result['kill_after']} s" if result["kill_after"] is not None else "")
        ending = "killed" if result["killed"] else f"exit {result['returncode']}"
        print(f"  {name} run {i + 1}: {how.strip()} -> {ending} after {result['seconds']:.0f} s, "
              f"{len(finished_now)} trials finished {' '.join(result['events'])}", flush=True)
        if not result["killed"]:
            if result["returncode"] != 0:
                raise SystemExit(f"error: a {name} run failed:\n{result['output'][-3000:]}")
            break  # the study finished before this kill came round
    final = _run(faulted, args)
    if final["returncode"] != 0:
        raise SystemExit(f"error: the final {name} run failed:\n{final['output'][-3000:]}")
    notices = [line for r in runs for line in r["notices"]] + _notices(final["output"])
    for tid, record in seen_finished.items():
        if _finished(faulted).get(tid) != record:
            repeated.add(tid)
    diff = compare(reference, faulted)
    repeated |= set(diff["extra"])
    worker_kills = sum(1 for r in runs if (r["crash_at"] or "").split(":")[0] in ("checkpoint-tmp", "worker-handoff"))
    return {"kind": name, "strategy": name, "kills_survived": survived, "worker_kills": worker_kills,
            "trials_lost": len(diff["lost"]) + len(diff["still_running"]), "trials_repeated": len(repeated),
            **epochs_trained(faulted), "reference_epochs": epochs_trained(reference),
            "equal": diff["trials_equal"] and diff["epoch_curves_equal"], "comparison": diff, "repeated": sorted(repeated),
            "checkpoint_notices": notices, "truncated": truncate_at, "runs": runs, "seconds": time.monotonic() - started}


@contextlib.contextmanager
def _bucket_servers():
    """moto's S3 server and a PostgreSQL server on loopback (as the tests start them), stopped after."""
    from tests.postgres import start_server
    from tests.s3 import moto_server

    database = start_server()
    try:
        with moto_server() as s3:
            saved = {k: os.environ.get(k) for k in s3.credentials()}
            os.environ.update(s3.credentials())  # the drivers' and this process's (the comparison reads the bucket)
            try:
                yield s3, database.database("memsearch_faults")
            finally:
                for k, v in saved.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    finally:
        database.stop()
        shutil.rmtree(database.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="driver kills per kind of study (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    parser.add_argument("--only", choices=sorted(KINDS), help="one kind only")
    parser.add_argument("--keep", action="store_true", help="keep the study folders (printed)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "faults.json"))
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.faults", sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="memsearch-faults-"))
    rng = random.Random(args.seed)
    results = []
    try:
        for name in [args.only] if args.only else list(KINDS):
            with contextlib.ExitStack() as stack:
                if name == "bucket":
                    s3, storage = stack.enter_context(_bucket_servers())
                    reference = Target(s3.uri("faults/reference"), workdir / "bucket-reference", storage)
                    faulted = Target(s3.uri("faults/faulted"), workdir / "bucket-faulted", storage)
                else:
                    reference = Target(str(workdir / f"{name}-reference"), workdir / f"{name}-reference")
                    faulted = Target(str(workdir / f"{name}-faulted"), workdir / f"{name}-faulted")
                result = run_kind(name, reference, faulted, args.kills, rng)
            results.append(result)
            print(f"faults {name}: {result['kills_survived']} kills survived / {result['trials_lost']} trials lost / "
                  f"{result['trials_repeated']} trials repeated / {result['epochs_repeated']} epochs trained twice "
                  f"({result['worker_kills']} workers killed, {len(result['checkpoint_notices'])} checkpoint fallback "
                  f"lines); final study {'equal to' if result['equal'] else 'DIFFERENT from'} the uninterrupted run "
                  f"({result['comparison']['trials']} trials, {result['comparison']['epoch_rows'][0]} epoch rows)",
                  flush=True)
    finally:
        if args.keep:
            print(f"study folders kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"provenance": prov, "seed": args.seed, "kills": args.kills, "results": results},
                                         indent=1, default=str) + "\n")
    total = {k: sum(r[k] for r in results) for k in ("kills_survived", "trials_lost", "trials_repeated")}
    ok = all(r["equal"] for r in results) and not total["trials_lost"] and not total["trials_repeated"]
    print(f"faults: {total['kills_survived']} kills survived / {total['trials_lost']} trials lost / "
          f"{total['trials_repeated']} trials repeated; {'all equal' if ok else 'NOT equal'} to the uninterrupted runs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
