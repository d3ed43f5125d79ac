"""Section 3: which search strategy reaches greedy's result with fewer epochs, over seeds.

    python -m benchmarks.search --quick                    # autoencoder, 3 seeds, 4 strategies: about 20 minutes on 2 cores
    python -m benchmarks.search                            # autoencoder and GAN, 5 seeds, 7 strategies: about 2.5 hours
    python -m benchmarks.search --families gan --seeds 0,1 # a part; rows of other families and seeds are kept

The protocol, the same for every strategy:

- **One space.** Every strategy searches the study file's ``values`` (``--domain grid``, the grid
  the report's greedy walks) and starts from the study's defaults.
- **Greedy sets the budget.** For each family and seed, the report's procedure (greedy, no
  early stopping) runs to its end; its epochs summed over trials are the budget B and its best
  val L1 the target. Every other strategy then runs with ``--budget-epochs B`` on the same data,
  with the same seed (a configuration trains identically in every strategy's search).
- **Read at 1.0x and 0.5x of B.** A strategy's curve is its best val L1 so far against the
  epochs its finished trials have spent, in the order they finished. Its result at a budget is
  the curve's value there; trials still running when B was reached do not count. The 0.5x
  figures read the same runs at B / 2: no sampler's settings depend on the budget except the
  start-up trials, which are set from B for both.
- **Reported over seeds.** For each strategy: the seeds whose curve reaches the target within
  the budget, the median epochs to reach it (as a fraction of B), and the best val L1 at the
  budget, mean and 95% t-interval over seeds.

Runs land in ``benchmarks/results/search_runs.parquet`` (one row per family, seed, strategy) and
``search_curves.parquet``, each row with its provenance; ``python -m benchmarks.render`` puts
the table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.cli import comma_separated
from benchmarks.provenance import this_process
from search.strategies.optuna_strategy import OptunaStrategy

RESULTS = Path(__file__).parent / "results"
PRESET = "bench-small"
# name -> (strategy, scheduler); greedy without ASHA is the reference every row is measured against.
STRATEGIES = {
    "greedy": ("greedy", "none"),
    "greedy+asha": ("greedy", "asha"),
    "tpe+asha": ("tpe", "asha"),
    "bohb+asha": ("bohb", "asha"),
    "gp+asha": ("gp", "asha"),
    "random+asha": ("random", "asha"),
    # Not a strategy of the command: Optuna's TPE as it comes (10 random start-up trials, independent
    # per-parameter densities), to measure what search/tpe.py's settings for small budgets change.
    "tpe-plain+asha": ("tpe-plain", "asha"),
}
QUICK = {"families": ["autoencoder"], "seeds": [0, 1, 2], "strategies": ["greedy", "bohb+asha", "tpe+asha", "random+asha"]}
FULL = {"families": ["autoencoder", "gan"], "seeds": [0, 1, 2, 3, 4], "strategies": list(STRATEGIES)}
FRACTIONS = (1.0, 0.5)


def _plain_tpe_sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed)


class PlainTPE(OptunaStrategy):
    """Not a strategy of the command: Optuna's TPE with its defaults, passed to the driver as an object."""

    name = "tpe-plain"
    summary = "Optuna's TPESampler with its defaults"

    def sampler(self, samples: int, n_params: int):
        return _plain_tpe_sampler


def bench_preset():
    """The benchmark's size, passed to the driver as an object (the command's presets are left alone)."""
    from search.runner.options import Preset

    return Preset(PRESET, 4, 8, 8, 1, 2, 640, 160, 160, description="benchmarks: widths / 8, 640+160 pairs, 4 epochs")


def shared_ray():
    """One local Ray for a series of searches (run_study reuses it instead of starting its own)."""
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def run_search(strategy: str, model: str, *, seed: int, scheduler: str = "asha", preset: str = PRESET,
               **options: Any) -> tuple[Any, pd.DataFrame]:
    """One whole search in a temporary folder, without the final stage: its summary and its trials.
    ``options``: more of ``SearchOptions`` (``budget_epochs``, ``samples``, ...). A new study of an Optuna
    strategy samples the grid (``--domain grid``, the default)."""
    from search.runner.driver import run_study
    from search.runner.options import SearchOptions

    with tempfile.TemporaryDirectory() as runs:
        summary = run_study(SearchOptions(strategy=PlainTPE() if strategy == "tpe-plain" else strategy,
                                          model=model, preset=bench_preset() if preset == PRESET else preset,
                                          final_top_k=0, seed=seed,
                                          scheduler=scheduler, runs_dir=runs, study="bench", **options))
        trials = pd.read_parquet(Path(runs) / "bench" / "trials.parquet")
    return summary, trials


def curve(trials: pd.DataFrame) -> pd.DataFrame:
    """Best val L1 so far against epochs spent, trials in the order they finished (as the dashboard draws it)."""
    from dashboards.efficiency import best_so_far_by_epochs

    spent, best = best_so_far_by_epochs(trials)
    return pd.DataFrame({"epochs": spent.astype(int), "best": best})


def read_at(points: pd.DataFrame, budget: float) -> float | None:
    inside = points[(points["epochs"] <= budget) & points["best"].notna()]
    return float(inside["best"].iloc[-1]) if len(inside) else None


def epochs_to(points: pd.DataFrame, target: float) -> int | None:
    reached = points[points["best"] <= target]
    return int(reached["epochs"].iloc[0]) if len(reached) else None


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def measure(families: list[str], seeds: list[int], strategies: list[str], stored: pd.DataFrame,
            rerun: bool = False) -> None:
    """Run the searches, saving each row as it is measured. Greedy (the reference) runs first for each family
    and seed, unless ``stored`` holds its run and it is not to be measured again."""
    prov = this_process()
    ray = shared_ray()
    try:
        for family in families:
            for seed in seeds:
                known = stored[(stored["family"] == family) & (stored["seed"] == seed)
                               & (stored["strategy"] == "greedy")] if len(stored) else stored
                if len(known) and ("greedy" not in strategies or not rerun):  # an earlier run's (greedy is deterministic)
                    budget, target = int(known["greedy_epochs"].iloc[0]), float(known["greedy_best"].iloc[0])
                else:
                    started = time.perf_counter()
                    _, reference = run_search("greedy", family, seed=seed, scheduler="none")
                    points = curve(reference)
                    budget, target = int(points["epochs"].iloc[-1]), float(points["best"].iloc[-1])
                    seconds = time.perf_counter() - started
                for name in strategies:
                    if not rerun and len(stored) and ((stored["family"] == family) & (stored["seed"] == seed)
                                                      & (stored["strategy"] == name)).any():
                        print(f"  {family} seed {seed} {name}: measured before, kept (--keep)")
                        continue
                    if name != "greedy":
                        strategy, scheduler = STRATEGIES[name]
                        started = time.perf_counter()
                        _, trials = run_search(strategy, family, seed=seed, scheduler=scheduler, budget_epochs=budget)
                        seconds = time.perf_counter() - started
                        points = curve(trials)
                    row = {"family": family, "seed": seed, "strategy": name, "domain": "grid", "preset": PRESET,
                           "greedy_epochs": budget, "greedy_best": target, "trials": len(points),
                           "epochs_spent": int(points["epochs"].iloc[-1]), "to_target": epochs_to(points, target),
                           "seconds": seconds, "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                           "commit": prov["commit"], "dirty": prov["dirty"], "command": prov["command"],
                           "provenance": json.dumps(prov, sort_keys=True)}
                    for fraction in FRACTIONS:
                        row[f"best_at_{fraction:g}"] = read_at(points, fraction * budget)
                    save([row], [{"family": family, "seed": seed, "strategy": name, "epochs": int(e), "best": b}
                                 for e, b in zip(points["epochs"], points["best"])])  # as it goes: a run cut short keeps it
                    to = row["to_target"]
                    print(f"  {family} seed {seed} {name:12s}: best {row['best_at_1']:.4f} at 1.0x "
                          f"({budget} epochs), {row['best_at_0.5'] or math.nan:.4f} at 0.5x; greedy's "
                          f"{target:.4f} reached at {to if to is not None else '-'} epochs; {seconds:.0f} s", flush=True)
    finally:
        ray.shutdown()


def summarize(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per family, strategy and budget fraction."""
    table = []
    for (family, name), group in runs.groupby(["family", "strategy"], sort=False):
        for fraction in FRACTIONS:
            to = group["to_target"].astype(float)
            within = to <= fraction * group["greedy_epochs"]
            best = [float(v) for v in group[f"best_at_{fraction:g}"].dropna()]
            mean, half = interval(best) if best else (math.nan, math.nan)
            ratio = (to / group["greedy_epochs"])[within]
            table.append({"family": family, "strategy": name, "budget": fraction, "domain": group["domain"].iloc[0],
                          "seeds": len(group), "reached": int(within.sum()),
                          "median_fraction_to_target": float(ratio.median()) if len(ratio) else None,
                          "best_mean": mean, "best_half_interval": half, "no_result": len(group) - len(best),
                          "greedy_best_mean": float(group["greedy_best"].mean())})
    return table


def render(table: list[dict[str, Any]], runs: pd.DataFrame) -> str:
    families = list(dict.fromkeys(r["family"] for r in table))
    seeds = sorted(runs["seed"].unique().tolist())
    lines = [f"Preset `{PRESET}` (widths / 8, 640 + 160 synthetic pairs, 4 epochs per trial, 2 trials at once), "
             f"seeds {seeds}, every strategy on the study's grid (`--domain grid`) from its defaults; "
             f"B = greedy's epochs for the same family and seed.", ""]
    for family in families:
        rows = [r for r in table if r["family"] == family]
        b = runs[runs["family"] == family].drop_duplicates("seed")["greedy_epochs"]
        lines += [f"**{family}** (B: median {b.median():.0f} epochs; greedy's best val L1: mean "
                  f"{rows[0]['greedy_best_mean']:.4f})", "",
                  "| strategy | budget | seeds reaching greedy's best | median epochs to reach it (x B) | "
                  "best val L1 at the budget, mean ± 95% |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            frac = "-" if r["median_fraction_to_target"] is None else f"{r['median_fraction_to_target']:.2f}"
            best = "-" if math.isnan(r["best_mean"]) else f"{r['best_mean']:.4f} ± {r['best_half_interval']:.4f}"
            if r["no_result"]:
                best += f" ({r['no_result']} seeds had no finished trial)"
            lines.append(f"| {r['strategy']} | {r['budget']:g}x | {r['reached']}/{r['seeds']} | {frac} | {best} |")
        lines.append("")
    spent = runs.groupby("family")["seconds"].sum() / 60
    lines.append("Wall time of the runs: " + ", ".join(f"{f} {m:.0f} min" for f, m in spent.items()) + ".")
    return "\n".join(lines)


def load_runs() -> pd.DataFrame:
    """The stored runs, in the order of ``STRATEGIES`` within each family."""
    path = RESULTS / "search_runs.parquet"
    if not path.exists():
        return pd.DataFrame()
    order = {name: i for i, name in enumerate(STRATEGIES)}
    return pd.read_parquet(path).sort_values(["family", "strategy", "seed"],
                                             key=lambda c: c.map(order) if c.name == "strategy" else c)


def save(rows: list[dict], curves: list[dict]) -> pd.DataFrame:
    """Merge new runs into the stored ones (a new row replaces the same family, seed and strategy)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    merged = {}
    for name, new in (("search_runs", rows), ("search_curves", curves)):
        path = RESULTS / f"{name}.parquet"
        frame = pd.DataFrame(new)
        if path.exists() and len(frame):
            old = pd.read_parquet(path)
            done = set(zip(frame["family"], frame["seed"], frame["strategy"]))
            keep = [k not in done for k in zip(old["family"], old["seed"], old["strategy"])]
            frame = pd.concat([old[keep], frame], ignore_index=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        # Rows are merged over runs, so each row of search_runs carries its own provenance; the file's
        # metadata names the last run that wrote it.
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"provenance": json.dumps(this_process(), sort_keys=True).encode()})
        pq.write_table(table, path)
        merged[name] = frame
    return merged["search_runs"]


def bench_search(quick: bool, families: list[str] | None = None, seeds: list[int] | None = None,
                 strategies: list[str] | None = None, rerun: bool = True) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    measure(families or plan["families"], seeds if seeds is not None else plan["seeds"],
            strategies or plan["strategies"], load_runs(), rerun)
    return write_table()


def write_table() -> dict[str, Any]:
    """The table of every stored run (``python -m benchmarks.render`` puts it in benchmarks/README.md)."""
    runs = load_runs()
    table = summarize(runs)
    return {"table": table, "markdown": render(table, runs)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="autoencoder, 3 seeds; greedy, bohb, tpe and random: about 20 minutes on 2 cores")
    parser.add_argument("--families", default=None, help="comma-separated: autoencoder, gan")
    parser.add_argument("--seeds", type=comma_separated(int), default=None, help="comma-separated seeds")
    parser.add_argument("--strategies", default=None, help=f"comma-separated subset of {', '.join(STRATEGIES)}")
    parser.add_argument("--render", action="store_true", help="only print the table of the stored runs")
    parser.add_argument("--keep", action="store_true",
                        help="keep the stored rows of this family, seed and strategy instead of measuring them again "
                             "(a long run stopped part-way continues)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    strategies = args.strategies.split(",") if args.strategies else None
    unknown = set(strategies or []) - set(STRATEGIES)
    if unknown:
        print(f"error: unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}", file=sys.stderr)
        return 2
    if args.render:
        print(write_table()["markdown"])
        return 0
    out = bench_search(args.quick, args.families.split(",") if args.families else None,
                       args.seeds, strategies, rerun=not args.keep)
    print(out["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
