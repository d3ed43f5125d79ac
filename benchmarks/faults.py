"""Fault injection: a study killed again and again ends equal to one that never was.

    python -m benchmarks.faults                  # greedy and TPE, 12 kills each (about 15 min on 2 cores)
    python -m benchmarks.faults --kills 3 --only tpe

For each strategy, a smoke study (autoencoder, 6 epochs, ASHA, one trial at a time) is run
once without interruption (the reference), then again in another folder where the driver
is SIGKILLed ``--kills`` times and resumed after each kill. The kills are spread over the
whole search (kill i comes when about i/(kills+1) of the reference's trials have finished)
and drawn with a seeded generator among

- the named crash points of :mod:`search.faults` (right after the searcher recorded a
  finished trial and before the results callback ran; with a Parquet, ``greedy_state.json``
  or ``study.json`` temporary file written but not yet moved into place; right after a
  Parquet flush), each at its n-th occurrence in the run, and
- a timer (a random moment: mid-epoch, during Ray's start-up, between trials).

Once, mid-run, a trial's Ray worker is SIGKILLed instead (Ray retries the trial, which
resumes from its checkpoint), and once, after a timed kill, the newest ``latest.pt`` of an
unfinished trial is truncated (the trial must fall back to ``previous.pt``, or restart when
it has none, and say so).

At the end the two studies are compared: the same trials (configurations), the same
status, epochs and best val L1 per trial, the same val L1 per trial per epoch, bit for bit.
A trial is *lost* if the reference has it finished and the faulted study does not; it is
*repeated* if the faulted study has a trial the reference does not, or if a trial recorded
as finished after one run was started again in a later one. Epochs count too: the epochs every
driver run's trials reported (each driver appends them to ``$MEMSEARCH_EPOCH_LOG``) beyond those the
study keeps were trained twice, after a kill sent a trial back to its last checkpoint (checkpoints are paced,
so a few are expected). One line per strategy, and the
whole record in ``benchmarks/results/faults.json``.

Runs one trial at a time on purpose: with two or more at once ASHA's decisions depend on
which result arrives first, so even two uninterrupted runs can differ (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
STUDY = "faults"
COMMON = ["--preset", "smoke", "--final-top-k", "0", "--model", "autoencoder", "--epochs", "6", "--max-concurrent", "1", "--seed", "3",
          "--study", STUDY]
STRATEGIES = {
    "greedy": ["--strategy", "greedy", "--blocks", "6"],
    "tpe": ["--strategy", "tpe", "--samples", "14"],
}
STARTUP_SECONDS = 12.0  # a driver's start (imports, Ray, data) before its first trial trains, on 2 cores
# crash point -> the largest extra n drawn for it beyond the planned progress
POINTS = {"searcher-complete": 2, "parquet-tmp": 4, "results-flushed": 2, "study-json-tmp": 2, "greedy-state-tmp": 2}
RUN_TIMEOUT = 600


def _worker_pids(session: int) -> list[int]:
    """This run's trial workers (Ray's processes stay in the driver's session)."""
    out = subprocess.run(["pgrep", "-s", str(session), "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _run(runs_dir: Path, args: list[str], *, crash_at: str | None = None, kill_after: float | None = None,
         kill_worker_after: float | None = None, then_kill_driver_after: float | None = None) -> dict[str, Any]:
    """One driver run; returns how it ended. Ray's helpers are cleaned up whatever happens."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEMSEARCH_EPOCH_LOG": str(runs_dir / "epochs-reported.log")}
    env.pop("MEMSEARCH_CRASH_AT", None)
    if crash_at:
        env["MEMSEARCH_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "search.run", "--runs-dir", str(runs_dir), *COMMON, *args]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    events: list[str] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            pids = _worker_pids(proc.pid)
            if pids:
                time.sleep(kill_worker_after)
                pids = _worker_pids(proc.pid)
                if pids and proc.poll() is None:
                    os.kill(pids[0], signal.SIGKILL)
                    events.append(f"killed worker {pids[0]}")
                    if then_kill_driver_after is not None:  # Ray retries the trial; then the driver dies too
                        time.sleep(then_kill_driver_after)
                        if proc.poll() is None:
                            os.kill(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.2)

    if kill_worker_after is not None:
        threading.Thread(target=kill_a_worker, daemon=True).start()
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


def _finished(study: Path) -> dict[str, Any]:
    path = study / "trials.parquet"
    if not path.exists():
        return {}
    trials = pd.read_parquet(path)
    done = trials[trials["status"] != "running"]
    return {row.trial_id: (row.status, str(row.ended_at)) for row in done.itertuples()}


def _truncate_newest_unfinished(study: Path) -> str | None:
    trials = pd.read_parquet(study / "trials.parquet") if (study / "trials.parquet").exists() else None
    running = set(trials.loc[trials["status"] == "running", "trial_id"]) if trials is not None else set()
    candidates = [p for p in (study / "trials").glob("*/latest.pt") if p.parent.name in running]
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    size = newest.stat().st_size
    with open(newest, "r+b") as handle:
        handle.truncate(size // 2)
    return newest.parent.name


def epochs_trained(study: Path, log: Path) -> dict[str, int]:
    """Epochs the study's trials reported to its drivers, every run's (the driver appends each live report to
    ``log``: $MEMSEARCH_EPOCH_LOG), against the epochs the study keeps: the difference is epochs trained twice,
    after a kill sent a trial back to its last checkpoint (paced checkpoints may leave an epoch or more behind).
    Epochs trained and lost before their report reached a driver are not seen: a floor, not a ceiling."""
    reported = len(log.read_text().splitlines()) if log.is_file() else 0
    kept = len(pd.read_parquet(study / "epochs.parquet"))
    return {"epochs_reported": reported, "epochs_kept": kept, "epochs_repeated": max(0, reported - kept)}


def _training_time(study: Path) -> dict[str, Any]:
    trials = pd.read_parquet(study / "trials.parquet")
    return {"trials": len(trials), "training_seconds": float(trials["wall_seconds"].sum())}


def compare(reference: Path, faulted: Path) -> dict[str, Any]:
    """What differs between the two studies' results."""
    ref_t, got_t = pd.read_parquet(reference / "trials.parquet"), pd.read_parquet(faulted / "trials.parquet")
    ref_e, got_e = pd.read_parquet(reference / "epochs.parquet"), pd.read_parquet(faulted / "epochs.parquet")
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


def _kill_spec(i: int, kills: int, total: int, per_trial: float, points: list[str], worker_kill_at: int, study: Path,
               rng: random.Random) -> dict[str, Any]:
    """How run i of the faulted search is killed: by a timer, at a named crash point, or (once) a worker, then
    the driver."""
    # Spread the kills over the whole search: kill i comes once about (i + 1) / (kills + 1)
    # of the reference's trials have finished, at a point drawn around there.
    ahead = max(0, round((i + 1) * total / (kills + 1)) - len(_finished(study)))
    if rng.random() < 0.35:
        spec: dict[str, Any] = {"kill_after": round(STARTUP_SECONDS + (ahead + rng.random()) * per_trial, 1)}
    else:
        point = rng.choice(points)
        # How often each point comes round per finished trial (two Parquet files per flush,
        # a flush when a trial starts and when it ends).
        per = {"searcher-complete": 1, "greedy-state-tmp": 1, "results-flushed": 2, "parquet-tmp": 4}.get(point, 0)
        spec = {"crash_at": f"{point}:{max(1, per * ahead + rng.randint(1, POINTS[point]))}"}
    if i == worker_kill_at:  # a trial's worker dies mid-epoch; the driver is killed later, by a timer
        spec = {"kill_worker_after": round(rng.uniform(0.5, 2.0), 2),
                "then_kill_driver_after": round((1 + rng.random()) * per_trial, 1)}
    return spec


def run_strategy(name: str, workdir: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    args = STRATEGIES[name]
    ref_dir, faulted_dir = workdir / f"{name}-reference", workdir / f"{name}-faulted"
    started = time.monotonic()
    reference = _run(ref_dir, args)
    if reference["returncode"] != 0:
        raise SystemExit(f"error: the uninterrupted {name} run failed:\n{reference['output'][-3000:]}")
    reference.update(_training_time(ref_dir / STUDY))
    points = [p for p in POINTS if p != "greedy-state-tmp" or name == "greedy"]
    total = int(reference["trials"])
    # A trial's share of the reference's wall time (training, evaluation, Ray's scheduling).
    per_trial = max(1.0, (reference["seconds"] - STARTUP_SECONDS) / max(total, 1))
    worker_kill_at = rng.randrange(1, max(2, kills // 2))
    truncate_at = None
    runs: list[dict[str, Any]] = []
    seen_finished: dict[str, Any] = {}
    repeated: set[str] = set()
    survived = 0
    for i in range(kills):
        spec = _kill_spec(i, kills, total, per_trial, points, worker_kill_at, faulted_dir / STUDY, rng)
        result = _run(faulted_dir, args, **spec)
        study = faulted_dir / STUDY
        if result["killed"]:
            survived += 1
            if truncate_at is None and result["timer_fired"] and i > worker_kill_at:
                truncate_at = _truncate_newest_unfinished(study)
                result["events"].append(f"truncated latest.pt of {truncate_at}" if truncate_at else "nothing to truncate")
        finished_now = _finished(study)
        for tid, record in seen_finished.items():  # a trial recorded as finished must stay as it was
            if finished_now.get(tid) != record:
                repeated.add(tid)
        seen_finished.update(finished_now)
        runs.append({k: v for k, v in result.items() if k != "output"}
                    | {"tail": result["output"][-600:], "notices": _notices(result["output"])})
        how = result["crash_at"] or (f"timer {result['kill_after']} s" if result["kill_after"] is not None
                                     else "a worker, then the driver")
        ending = "killed" if result["killed"] else f"exit {result['returncode']}"
        print(f"  {name} run {i + 1}: {how} -> {ending} after {result['seconds']:.0f} s, "
              f"{len(finished_now)} trials finished {' '.join(result['events'])}", flush=True)
        if not result["killed"]:
            if result["returncode"] != 0:
                raise SystemExit(f"error: a {name} run failed:\n{result['output'][-3000:]}")
            break  # the study finished before this kill came round
    final = _run(faulted_dir, args)
    if final["returncode"] != 0:
        raise SystemExit(f"error: the final {name} run failed:\n{final['output'][-3000:]}")
    notices = [line for r in runs for line in r["notices"]] + _notices(final["output"])
    for tid, record in seen_finished.items():
        if _finished(faulted_dir / STUDY).get(tid) != record:
            repeated.add(tid)
    diff = compare(ref_dir / STUDY, faulted_dir / STUDY)
    repeated |= set(diff["extra"])
    worker_kills = sum(1 for r in runs for e in r["events"] if e.startswith("killed worker"))
    summary = {"strategy": name, "kills_survived": survived, "worker_kills": worker_kills, "trials_lost": len(diff["lost"]) + len(diff["still_running"]),
               "trials_repeated": len(repeated), **epochs_trained(faulted_dir / STUDY, faulted_dir / "epochs-reported.log"),
               "reference_epochs": epochs_trained(ref_dir / STUDY, ref_dir / "epochs-reported.log"),
               "equal": diff["trials_equal"] and diff["epoch_curves_equal"],
               "comparison": diff, "repeated": sorted(repeated), "checkpoint_notices": notices,
               "truncated": truncate_at, "runs": runs, "seconds": time.monotonic() - started}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="driver kills per strategy (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    parser.add_argument("--only", choices=sorted(STRATEGIES), help="one strategy only")
    parser.add_argument("--keep", action="store_true", help="keep the study folders (printed)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "faults.json"))
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.faults", sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="memsearch-faults-"))
    rng = random.Random(args.seed)
    results = []
    try:
        for name in [args.only] if args.only else list(STRATEGIES):
            result = run_strategy(name, workdir, args.kills, rng)
            results.append(result)
            print(f"faults {name}: {result['kills_survived']} kills survived / {result['trials_lost']} trials lost / "
                  f"{result['trials_repeated']} trials repeated / {result['epochs_repeated']} epochs trained twice "
                  f"({result['worker_kills']} worker killed mid-trial, "
                  f"{len(result['checkpoint_notices'])} checkpoint fallback lines); final study "
                  f"{'equal to' if result['equal'] else 'DIFFERENT from'} the uninterrupted run "
                  f"({result['comparison']['trials']} trials, {result['comparison']['epoch_rows'][0]} epoch rows)", flush=True)
    finally:
        if args.keep:
            print(f"study folders kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"provenance": prov, "seed": args.seed, "kills": args.kills, "results": results}, indent=1, default=str) + "\n")
    total = {k: sum(r[k] for r in results) for k in ("kills_survived", "trials_lost", "trials_repeated")}
    ok = all(r["equal"] for r in results) and not total["trials_lost"] and not total["trials_repeated"]
    print(f"faults: {total['kills_survived']} kills survived / {total['trials_lost']} trials lost / "
          f"{total['trials_repeated']} trials repeated; {'all equal' if ok else 'NOT equal'} to the uninterrupted runs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
