"""The budget is a cap: what ``--budget-epochs B`` spends, per strategy, at one, two and four trials at once.

    python -m benchmarks.budget [--budget 13] [--concurrency 1 2 4] [--strategies greedy tpe random bohb]

Each case is the command a user types (``python -m search.run --preset smoke --model autoencoder --strategy S
--budget-epochs B --max-concurrent C``, the study's own folder, no final stage; greedy walks 8 parameters, not the
preset's 3, so that its plan needs more than B), run to its end. What a study
spent is the epochs its trials trained, as the study holds them (``epochs.parquet``'s rows: each epoch once);
the last line it printed about the budget is kept beside it. The target is at most 1.02 B in every case; what went
unspent is reported beside it (a trial that cannot fit is not started). A budget that is not
a multiple of the trial's length (B = 13 with 2-epoch trials) is the hard case: the last epoch cannot be spent.
Results go to ``benchmarks/results/budget.json``, rendered into ``benchmarks/README.md`` (section 3d).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.02  # spent / B, at most
EPOCHS = 2  # the smoke preset's epochs per trial
RUN_TIMEOUT = 900
MORE = {"greedy": ["--blocks", "8"]}  # the smoke preset walks 3 parameters, a plan the budget would not reach


def _run(runs: Path, strategy: str, budget: int, concurrency: int) -> dict:
    study = f"{strategy}-c{concurrency}"
    command = [sys.executable, "-m", "search.run", "--runs-dir", str(runs), "--study", study, "--preset", "smoke",
               "--model", "autoencoder", "--strategy", strategy, "--epochs", str(EPOCHS), "--budget-epochs",
               str(budget), "--max-concurrent", str(concurrency), "--cpus-per-trial", f"{2 / concurrency:g}",
               "--final-top-k", "0", "--seed", "0", *MORE.get(strategy, [])]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the run this benchmark started, and its Ray
        out, _ = proc.communicate()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{out[-3000:]}")
    epochs = pd.read_parquet(runs / study / "epochs.parquet")
    trials = pd.read_parquet(runs / study / "trials.parquet")
    said = [line.strip() for line in out.splitlines() if line.strip().startswith("budget:")]
    spent = len(epochs)
    return {"strategy": strategy, "concurrency": concurrency, "budget": budget, "epochs_per_trial": EPOCHS,
            "trials": len(trials), "spent": spent, "ratio": spent / budget, "unspent": budget - spent,
            "said": said[-1] if said else None, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=13)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--strategies", nargs="+", default=["greedy", "tpe", "random", "bohb"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "budget.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="memsearch-budget-") as scratch:
        for strategy in args.strategies:
            for concurrency in args.concurrency:
                row = _run(Path(scratch), strategy, args.budget, concurrency)
                rows.append(row)
                print(f"{strategy:7} {concurrency} at once: {row['spent']} of {row['budget']} epochs "
                      f"({row['ratio']:.2f}x) in {row['trials']} trials, {row['seconds']:.0f} s; it said: {row['said']}",
                      flush=True)
    result = {"provenance": provenance("benchmarks.budget", sys.argv[1:] if argv is None else argv),
              "target": TARGET, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    met = all(r["ratio"] <= TARGET for r in rows)
    print(f"target (spent at most {TARGET} B in every case): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
