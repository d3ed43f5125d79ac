"""Strategies judged by what a user publishes: the final stage's test L1 of the configuration each search selects.

    python -m benchmarks.publish --quick      # the autoencoder, greedy against tpe, 3 seeds (one sitting)
    python -m benchmarks.publish              # autoencoder: greedy, tpe, bohb, random; gan: greedy, tpe, pbt; 3 seeds
    python -m benchmarks.publish --keep       # continue a run stopped part-way (rows already measured are kept)

Section 3 (``benchmarks.search``) asks which strategy reaches greedy's best *val* L1 sooner, at a
size where models barely learn; that best is the luckiest of a dozen single runs. This asks what a
researcher publishes. For each family and seed, at the ``cpu`` preset's size:

- greedy without ASHA runs to its end; the epochs its trials trained are the budget B;
- every other strategy runs with ``--budget-epochs B`` and again with ``B / 2`` (ASHA for the
  Optuna strategies; pbt sizes its population from the budget);
- each search ends with its final stage: its best configuration (top 1) re-trained with 2 new
  seeds, the epoch chosen on validation, measured once on the test split.

Reported per strategy and budget: the test L1 of the selected configuration (mean over the two
final seeds, then mean ± 95% interval over the search seeds), the paired difference against
greedy on the same seed (mean ± 95% interval, and the seeds it is lower), and the epochs spent.
A strategy is better than greedy only where the paired interval excludes 0.

Rows land in ``benchmarks/results/publish.json`` (one per family, seed, strategy and budget, each
with its provenance), written as they are measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.cli import comma_separated
from benchmarks.provenance import this_process
from benchmarks.search import interval, shared_ray

RESULTS = Path(__file__).parent / "results" / "publish.json"
PLANS = {
    "quick": {"autoencoder": ["greedy", "tpe"]},
    "full": {"autoencoder": ["greedy", "tpe", "bohb", "random"], "gan": ["greedy", "tpe", "pbt"]},
}
SEEDS = [0, 1, 2]
FRACTIONS = (1.0, 0.5)


def run(strategy: str, family: str, seed: int, preset: str, budget: int | None, **options: Any) -> dict[str, Any]:
    """One search with its final stage (top 1, 2 seeds) in a temporary folder: what it selected and its test L1.
    ``options``: more of ``SearchOptions`` (``population``, ``epochs``, ...)."""
    import pandas as pd

    from search.runner.driver import run_study
    from search.runner.options import SearchOptions

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as runs:
        summary = run_study(SearchOptions(
            strategy=strategy, model=family, preset=preset, seed=seed, runs_dir=runs, study="publish",
            scheduler="none" if strategy == "greedy" else "asha", budget_epochs=budget,  # pbt: its own scheduler
            final_top_k=1, final_seeds=2, **options))
        epochs = len(pd.read_parquet(Path(runs) / "publish" / "epochs.parquet"))
    final = (summary.final or {}).get("configurations") or [{}]
    test = (final[0].get("test_l1") or {}).get("mean")
    return {"test_l1": test, "val_l1": (final[0].get("val_l1") or {}).get("mean"),
            "selected_trial": final[0].get("source_trial_id"), "epochs_spent": epochs,
            "test_black_l1": ((summary.final or {}).get("test_baselines") or {}).get("black_l1"),
            "seconds": time.perf_counter() - started}


def measure(plan: dict[str, list[str]], seeds: list[int], preset: str, keep: bool, file: RowFile,
            fractions: tuple[float, ...] = FRACTIONS) -> list[dict[str, Any]]:
    rows = file.load() if keep else []
    done = {(r["family"], r["seed"], r["strategy"], r["budget"]) for r in rows}
    prov = this_process()
    ray = shared_ray()
    try:
        for family, strategies in plan.items():
            for seed in seeds:
                greedy = next((r for r in rows if (r["family"], r["seed"], r["strategy"]) == (family, seed, "greedy")),
                              None)
                if greedy is None:
                    greedy = {"family": family, "seed": seed, "strategy": "greedy", "budget": 1.0,
                              **run("greedy", family, seed, preset, None), "provenance": prov}
                    rows.append(greedy)
                    file.save(rows)
                budget = greedy["epochs_spent"]
                for strategy in strategies:
                    for fraction in (() if strategy == "greedy" else fractions):
                        if (family, seed, strategy, fraction) in done:
                            continue
                        row = {"family": family, "seed": seed, "strategy": strategy, "budget": fraction,
                               **run(strategy, family, seed, preset, max(1, int(budget * fraction))), "provenance": prov}
                        rows.append(row)
                        file.save(rows)
                        print(f"  {family} seed {seed} {strategy} at {fraction:g}B: test L1 {row['test_l1']}, "
                              f"{row['epochs_spent']} epochs (B = {budget})", flush=True)
    finally:
        ray.shutdown()
    return rows


class RowFile:
    """A result file of rows measured one at a time, each with its provenance, saved after every row (``--keep``
    continues a run stopped part-way)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text())["rows"] if self.path.exists() else []

    def save(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"provenance": this_process(), "rows": rows}, indent=1, sort_keys=True))

    def print_table(self, table: Callable[[list[dict[str, Any]]], str]) -> int:
        """Print ``table`` of the stored rows: the exit status (2, with a message, when there is none)."""
        rows = self.load()
        if not rows:
            print(f"error: no rows in {self.path} yet; run without --render first", file=sys.stderr)
            return 2
        print(table(rows))
        return 0


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family, strategy and budget: the test L1 over seeds and the paired difference against greedy
    (``diff``/``half`` NaN for greedy itself, or with fewer than two paired seeds)."""
    greedy = {(r["family"], r["seed"]): r for r in rows if r["strategy"] == "greedy" and r["test_l1"] is not None}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["strategy"], r["budget"]), []).append(r)
    out = []
    for (family, strategy, budget), mine in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "greedy",
                                                                                     kv[0][1], -kv[0][2])):
        tests = [r["test_l1"] for r in mine if r["test_l1"] is not None]
        pairs = [r["test_l1"] - greedy[(family, r["seed"])]["test_l1"] for r in mine
                 if r["test_l1"] is not None and (family, r["seed"]) in greedy and strategy != "greedy"]
        spent = [r["epochs_spent"] / greedy[(family, r["seed"])]["epochs_spent"] for r in mine
                 if (family, r["seed"]) in greedy]
        mean, half = interval(tests) if tests else (float("nan"), float("nan"))
        diff, dhalf = interval(pairs) if pairs else (float("nan"), float("nan"))
        out.append({"family": family, "strategy": strategy, "budget": budget, "seeds": len(mine),
                    "failed": len(mine) - len(tests), "mean": mean, "half": half, "diff": diff, "diff_half": dhalf,
                    "below": sum(p < 0 for p in pairs), "pairs": len(pairs),
                    "spent": statistics.median(spent) if spent else float("nan"),
                    "black": interval([r["test_black_l1"] for r in mine if r.get("test_black_l1")])[0]
                    if any(r.get("test_black_l1") for r in mine) else float("nan")})
    return out


def plus_minus(mean: float, half: float, signed: bool = False) -> str:
    """'0.0387 ± 0.0130'; without an interval (one seed) the mean alone, said so; '-' without a value."""
    if mean != mean:
        return "-"
    value = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{value} ± {half:.4f}" if half == half else f"{value}, one seed"


def excludes_zero(row: dict[str, Any]) -> bool:
    return row["diff_half"] == row["diff_half"] and abs(row["diff"]) > row["diff_half"]


def table(rows: list[dict[str, Any]]) -> str:
    """Per family, strategy and budget: test L1 over seeds, and the paired difference against greedy."""
    lines = ["| family | strategy | budget | seeds | test L1 of the selection, mean ± 95% (x all-black) | minus greedy's, "
             "paired: mean ± 95% | seeds below greedy | epochs spent (x B), median |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summarize(rows):
        greedy = row["strategy"] == "greedy"
        diff = "-" if greedy else plus_minus(row["diff"], row["diff_half"], signed=True) + (
            " **excludes 0**" if excludes_zero(row) else "")
        failed = f" ({row['failed']} without a test L1)" if row["failed"] else ""
        below = "-" if greedy else f"{row['below']}/{row['pairs']}"
        lines.append(f"| {row['family']} | {row['strategy']} | {row['budget']:g}B | {row['seeds']}{failed} | "
                     f"{plus_minus(row['mean'], row['half'])} ({row['mean'] / row['black']:.2f}x) | {diff} | {below} | "
                     f"{row['spent']:.2f} |")
    return "\n".join(lines)


def part(plan: dict[str, list[str]], families: str | None, strategies: str | None) -> dict[str, list[str]]:
    """The plan restricted to some families and strategies (``None``: all), so a long run can go in parts with --keep.

    A name the plan lacks is an error, not a silent skip: a typo would otherwise spend hours measuring greedy only.
    """
    chosen = plan
    if families is not None:
        wanted = families.split(",")
        unknown = [f for f in wanted if f not in plan]
        if unknown:
            raise SystemExit(f"error: --families {families}: {', '.join(unknown)} not in the plan, "
                             f"which has {', '.join(plan)}")
        chosen = {f: plan[f] for f in wanted}
    if strategies is None:
        return chosen
    wanted = strategies.split(",")
    known = sorted({s for names in chosen.values() for s in names})
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise SystemExit(f"error: --strategies {strategies}: {', '.join(unknown)} not in the plan of "
                         f"{', '.join(chosen)}, which has {', '.join(known)}")
    return {f: [s for s in names if s in wanted or s == "greedy"] for f, names in chosen.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the autoencoder, greedy against tpe, 3 seeds")
    parser.add_argument("--seeds", type=comma_separated(int), default=SEEDS, help="comma-separated search seeds")
    parser.add_argument("--preset", default="cpu", help="the search size (default cpu, as the issue asks)")
    parser.add_argument("--families", help="comma-separated: only these families of the plan (a run in parts)")
    parser.add_argument("--strategies", help="comma-separated: only these strategies of the plan (greedy always runs, "
                        "as every other strategy's budget and pair)")
    parser.add_argument("--budgets", type=comma_separated(float, positive=True), default=list(FRACTIONS),
                        help="comma-separated fractions of B (default 1,0.5)")
    parser.add_argument("--keep", action="store_true", help="keep rows already measured (continue a stopped run)")
    parser.add_argument("--render", action="store_true", help="only print the table of the stored rows")
    parser.add_argument("--results", default=str(RESULTS), help="the result file (a smoke check writes elsewhere)")
    args = parser.parse_args(argv)
    file = RowFile(args.results)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not args.render:
        plan = part(PLANS["quick" if args.quick else "full"], args.families, args.strategies)
        measure(plan, args.seeds, args.preset, args.keep, file, tuple(args.budgets))
    return file.print_table(table)


if __name__ == "__main__":
    raise SystemExit(main())
