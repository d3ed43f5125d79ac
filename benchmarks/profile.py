"""Where a whole search's wall time goes, from its own files: the profile of the main job.

    python -m benchmarks.profile runs/benchmarks/gan-synthetic-20261206-160000

``benchmarks/cpu_search.py`` calls :func:`profile` on the study it ran, with the command's start, the
moment it printed ``final:`` and its end, and keeps the result under the case's ``profile`` in
``results/cpu_search.json``; the table is rendered into ``benchmarks/README.md`` (block
``main-job-profile``). Run on a study folder alone (the command above), the stretches before the
first trial and after the final stage are unknown and left out.

The search's stretch is counted in *slot-seconds*: its length times the trials that ran at once at
most (the search's concurrency). Each slot-second was spent in one of: a training step, measuring
(BatchNorm re-estimation, train and val L1, at the last epoch the selected model's test L1), the
checkpoint snapshot an epoch waits for, the rest of a trial's life (its worker's start, the model's
and data's set-up, Ray's reporting; a trial's span less its epochs), or no trial at all (a slot
idle: the searcher waiting for a block to end, Ray scheduling the next trial). Those columns come
from ``epochs.parquet`` (``train_seconds``, ``eval_seconds``, ``checkpoint_seconds``) and
``trials.parquet`` (``started_at``, ``ended_at``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def profile(study: Path, started: datetime | None = None, final_at: datetime | None = None,
            ended: datetime | None = None) -> dict[str, Any]:
    """The breakdown of ``study``'s wall time in seconds (see the module's doc); ``started``, ``final_at`` and
    ``ended`` (UTC) are the command's start, its ``final:`` line and its end, where known."""
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    epochs = pq.read_table(study / "epochs.parquet").to_pylist()
    spans = [(t["started_at"].timestamp(), t["ended_at"].timestamp()) for t in trials if t["ended_at"] is not None]
    if not spans:
        raise SystemExit(f"error: {study} has no finished trial to profile.")
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    search_end = final_at.timestamp() if final_at else last
    concurrency = _max_overlap(spans)

    def total(column: str) -> float:
        return sum(r[column] for r in epochs if r.get(column) is not None)

    missing = sum(1 for r in epochs if r.get("train_seconds") is None)
    train, measure, snapshot = total("train_seconds"), total("eval_seconds"), total("checkpoint_seconds")
    in_trials = sum(e - s for s, e in spans)
    slots = (search_end - first) * concurrency
    out: dict[str, Any] = {
        "trials": len(spans), "epochs": len(epochs), "epochs_without_phases": missing, "concurrency": concurrency,
        "search_seconds": search_end - first, "slot_seconds": slots,
        "search": {"training steps": train, "measuring": measure, "checkpoint snapshots": snapshot,
                   "a trial's set-up and reporting": in_trials - train - measure - snapshot,
                   "no trial running (scheduling, the searcher waiting)": slots - in_trials},
    }
    if started is not None:
        out["before_first_trial_seconds"] = first - started.timestamp()
    final = study / "final.parquet"
    if final.is_file():
        runs = pq.read_table(final).to_pylist()
        out["final_runs"] = len(runs)
        out["final_training_seconds"] = sum(r["wall_seconds"] or 0.0 for r in runs)
        if final_at is not None and ended is not None:
            out["final_seconds"] = ended.timestamp() - final_at.timestamp()
    if started is not None and ended is not None:
        out["total_seconds"] = ended.timestamp() - started.timestamp()
    return out


def table(p: dict[str, Any]) -> list[str]:
    """The profile as a Markdown table: each stretch and, inside the search, its slot-seconds by what they held."""
    lines = ["| stretch | seconds | share |", "| --- | --- | --- |"]
    whole = p.get("total_seconds")

    def share(seconds: float, of: float | None) -> str:
        return f"{seconds / of:.0%}" if of else "-"

    if "before_first_trial_seconds" in p:
        lines.append(f"| start: Ray, the data, the first estimate | {p['before_first_trial_seconds']:,.0f} | "
                     f"{share(p['before_first_trial_seconds'], whole)} |")
    lines.append(f"| the search: {p['trials']} trials, {p['epochs']} epochs, {p['concurrency']} at once | "
                 f"{p['search_seconds']:,.0f} | {share(p['search_seconds'], whole)} |")
    for name, seconds in p["search"].items():
        lines.append(f"| &nbsp;&nbsp;of its {p['slot_seconds']:,.0f} slot-seconds: {name} | {seconds:,.0f} | "
                     f"{share(seconds, p['slot_seconds'])} |")
    if "final_seconds" in p:
        lines.append(f"| the final stage: {p['final_runs']} runs ({p['final_training_seconds']:,.0f} s of training "
                     f"in all) | {p['final_seconds']:,.0f} | {share(p['final_seconds'], whole)} |")
    if whole:
        lines.append(f"| the whole command | {whole:,.0f} | 100% |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a study folder (runs/<study>)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    study = Path(args.study)
    if not (study / "trials.parquet").is_file():
        print(f"error: {study} has no trials.parquet; give a study folder (runs/<study>).", file=sys.stderr)
        return 2
    p = profile(study)
    print("\n".join(table(p)))
    print(json.dumps(p, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
