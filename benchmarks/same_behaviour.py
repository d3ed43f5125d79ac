"""The same smoke studies at two commits, side by side: a restructuring must not change what a search does.

    python -m benchmarks.same_behaviour --before 151d0fc            # ~8 min on 2 cores
    python -m benchmarks.same_behaviour --before 151d0fc --after HEAD

Each commit is checked out in a temporary git worktree and runs, with this environment's Python
(its modules first on the path), the studies in :data:`STUDIES` at the ``smoke`` preset: a greedy
GAN search with its final stage, and a TPE autoencoder search with ASHA. Compared, on what both
commits record: the trials (keys, statuses, epochs, best val L1), every epoch's val and train L1, the
final stage's runs (keys, seeds, selected epoch, test L1), and the printed lines with their times and
folders taken out, in any order (trials that run at once finish in either order). ``results/same_behaviour.json`` keeps the verdicts and the lines that differ; the table is
rendered into ``benchmarks/README.md`` (section 14).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.provenance import ROOT, provenance
from trainables.storage import write_json_atomic

OUT = Path(__file__).parent / "results" / "same_behaviour.json"
STUDIES = {
    "greedy-gan": ["--strategy", "greedy", "--model", "gan", "--preset", "smoke"],
    # One trial at a time: with two, ASHA's decisions depend on which result arrives first (docs/reliability.md).
    "tpe-autoencoder": ["--strategy", "tpe", "--model", "autoencoder", "--preset", "smoke", "--max-concurrent", "1"],
}
# (file, key columns, compared columns)
TABLES = [("trials.parquet", ["trial_id"], ["status", "epochs_run", "best_val_l1"]),
          ("epochs.parquet", ["trial_id", "epoch"], ["val_l1", "train_l1"]),
          ("final.parquet", ["rank", "seed"], ["trial_id", "best_epoch", "test_l1"])]
TIMES = re.compile(r"\d+(\.\d+)?\s*(ms|s|min|h|minutes|seconds)\b|\d+:\d\d(:\d\d)?|\d{4}-\d\d-\d\dT[\d:.]+Z?")


def _commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def run_at(commit: str, work: Path) -> dict[str, Any]:
    """Every study at ``commit``: its folder and printed lines."""
    tree = work / f"tree-{commit[:12]}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}  # the commit's modules, in the driver and in Ray's workers
        out = {}
        for name, args in STUDIES.items():
            runs = work / f"runs-{commit[:12]}"
            done = subprocess.run([sys.executable, "-m", "search.run", *args, "--runs-dir", str(runs), "--study", name],
                                  cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
            if done.returncode != 0:
                raise SystemExit(f"error: study {name} failed at {commit[:12]} (exit {done.returncode}):\n"
                                 f"{done.stderr[-2000:]}")
            out[name] = {"folder": runs / name, "lines": done.stdout.splitlines()}
        return out
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One study's verdicts: each table equal on its shared columns, and the printed lines without their times."""
    verdict: dict[str, Any] = {}
    for table, key, columns in TABLES:
        paths = [before["folder"] / table, after["folder"] / table]
        if not all(p.is_file() for p in paths):
            verdict[table] = {"equal": all(not p.is_file() for p in paths), "rows": [None, None]}
            continue
        frames = [pd.read_parquet(p).sort_values(key).reset_index(drop=True) for p in paths]
        shared = [c for c in columns if all(c in f for f in frames)]
        equal = len(frames[0]) == len(frames[1]) and frames[0][key + shared].equals(frames[1][key + shared])
        verdict[table] = {"equal": bool(equal), "rows": [len(f) for f in frames], "columns": key + shared}
    # In any order: trials that run at once finish in either order, and so do the final stage's runs.
    lines = [sorted(TIMES.sub("<t>", line.replace(str(s["folder"].parent), "<runs>")) for line in s["lines"])
             for s in (before, after)]
    differing = [(a, b) for a, b in zip(*lines) if a != b]
    verdict["lines"] = {"equal": lines[0] == lines[1], "count": [len(x) for x in lines], "n_differing": len(differing),
                        "differing": differing[:6] + ([(f"... {len(lines[0])} lines", f"{len(lines[1])} lines")]
                                                      if len(lines[0]) != len(lines[1]) else [])}
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.same_behaviour", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit before the restructuring")
    parser.add_argument("--after", default="HEAD", help="the commit after it (default: HEAD)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    commits = [_commit(args.before), _commit(args.after)]
    with tempfile.TemporaryDirectory() as folder:
        before, after = (run_at(c, Path(folder)) for c in commits)
        result = {"provenance": provenance("benchmarks.same_behaviour", sys.argv[1:] if argv is None else argv),
                  "before": commits[0], "after": commits[1],
                  "studies": {name: {"command": " ".join(["python", "-m", "search.run", *STUDIES[name]]),
                                     **compare(before[name], after[name])} for name in STUDIES}}
    write_json_atomic(Path(args.out), result)
    for name, verdict in result["studies"].items():
        print(name, {k: v["equal"] for k, v in verdict.items() if isinstance(v, dict)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
