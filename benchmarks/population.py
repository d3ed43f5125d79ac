"""Population-based training's defaults measured: population size and perturbation interval at one budget.

    python -m benchmarks.population              # the GAN, pbt, 3 seeds, at the cpu preset's size
    python -m benchmarks.population --keep       # continue a run stopped part-way

``--population`` and ``--perturbation-interval`` have defaults (search/strategies/population.py): the
population is what ``--budget-epochs`` affords at the preset's epochs per member, and a member decides
every quarter of its epochs. This measures them against the alternatives at the same budget B of
member-epochs (population x epochs per member = B), on the same seeds:

- population 2, 4 and 8, each member training B / population epochs;
- a decision every quarter and every half of a member's epochs.

Each run ends with its final stage (the best member's schedule replayed with 2 new seeds, measured once
on test). Reported per setting: the test L1 (mean ± 95% interval over the seeds) and the paired
difference against the defaults' setting on the same seed. A setting is better than the default only
where that interval excludes 0. Rows land in ``benchmarks/results/population.json`` with their provenance.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.provenance import this_process
from benchmarks.cli import comma_separated
from benchmarks.publish import RowFile, plus_minus, run
from benchmarks.search import interval, shared_ray

RESULTS = Path(__file__).parent / "results" / "population.json"
BUDGET = 64  # member-epochs: the defaults' population of 8 at the cpu preset's 8 epochs
POPULATIONS = (2, 4, 8)
INTERVALS = (4, 2)  # a decision every 1/4 or 1/2 of a member's epochs
DEFAULT = (8, 4)  # what the defaults give at BUDGET and the cpu preset


def settings(budget: int) -> list[tuple[int, int]]:
    return [(population, share) for population in POPULATIONS for share in INTERVALS
            if budget // population >= share]


def measure(budget: int, seeds: list[int], preset: str, strategy: str, keep: bool,
            file: RowFile) -> list[dict[str, Any]]:
    rows = file.load() if keep else []
    done = {(r["seed"], r["population"], r["interval_share"]) for r in rows}
    prov = this_process()
    ray = shared_ray()
    try:
        for seed in seeds:
            for population, share in settings(budget):
                if (seed, population, share) in done:
                    continue
                epochs = budget // population
                row = {"family": "gan", "strategy": strategy, "seed": seed, "population": population,
                       "interval_share": share, "epochs": epochs, "interval": max(1, epochs // share), "budget": budget,
                       **run(strategy, "gan", seed, preset, None, population=population, epochs=epochs,
                             perturbation_interval=max(1, epochs // share)),
                       "provenance": prov}
                rows.append(row)
                file.save(rows)
                print(f"  seed {seed}: population {population} x {epochs} epochs, a decision every {row['interval']}: "
                      f"test L1 {row['test_l1']}", flush=True)
    finally:
        ray.shutdown()
    return rows


def _minutes(rows: list[dict[str, Any]]) -> str:
    seconds = [r["seconds"] for r in rows if r.get("seconds")]
    return f"{statistics.median(seconds) / 60:.1f}" if seconds else "-"


def table(rows: list[dict[str, Any]]) -> str:
    """Per setting: test L1 over seeds, and the paired difference against the defaults' setting."""
    reference = {r["seed"]: r["test_l1"] for r in rows
                 if (r["population"], r["interval_share"]) == DEFAULT and r["test_l1"] is not None}
    lines = ["| population x epochs | decision every | seeds | test L1, mean ± 95% (x all-black) | minus the default's, "
             "paired: mean ± 95% | seeds below the default | minutes a run, median |", "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["population"], r["interval_share"]), []).append(r)
    for (population, share), mine in sorted(groups.items()):
        tests = [r["test_l1"] for r in mine if r["test_l1"] is not None]
        black = [r["test_black_l1"] for r in mine if r.get("test_black_l1")]
        mean, half = interval(tests) if tests else (float("nan"), float("nan"))
        x = f" ({mean / interval(black)[0]:.2f}x)" if black else ""
        if (population, share) == DEFAULT:
            diff, below = "- (the default)", "-"
        else:
            pairs = [r["test_l1"] - reference[r["seed"]] for r in mine if r["test_l1"] is not None and r["seed"] in reference]
            d, h = interval(pairs) if pairs else (float("nan"), float("nan"))
            diff = plus_minus(d, h, signed=True) + (" **excludes 0**" if h == h and abs(d) > h else "")
            below = f"{sum(p < 0 for p in pairs)}/{len(pairs)}" if pairs else "-"
        lines.append(f"| {population} x {mine[0]['epochs']} | {mine[0]['interval']} epochs (1/{share}) | {len(mine)} | "
                     f"{plus_minus(mean, half)}{x} | {diff} | {below} | {_minutes(mine)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.population", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=BUDGET, help=f"member-epochs per run (default {BUDGET})")
    parser.add_argument("--seeds", type=comma_separated(int), default=[0, 1, 2], help="comma-separated search seeds")
    parser.add_argument("--preset", default="cpu", help="the search size (default cpu)")
    parser.add_argument("--strategy", default="pbt", help="pbt or pb2")
    parser.add_argument("--keep", action="store_true", help="keep rows already measured (continue a stopped run)")
    parser.add_argument("--render", action="store_true", help="only print the table of the stored rows")
    parser.add_argument("--results", default=str(RESULTS), help="the result file (a smoke check writes elsewhere)")
    args = parser.parse_args(argv)
    file = RowFile(args.results)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not args.render:
        measure(args.budget, args.seeds, args.preset, args.strategy, args.keep, file)
    return file.print_table(table)


if __name__ == "__main__":
    raise SystemExit(main())
