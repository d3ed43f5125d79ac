"""The headline: the search's best configurations re-trained over seeds and measured once on the test split.

A search's best val L1 is one training run's best epoch, chosen on the same validation set
it is reported on: optimistic (the maximum of many noisy draws) and noisy (one seed). So at
the end of a search the top ``k`` configurations (by best val L1; default 3) are trained
again with ``S`` new seeds each (default 3; seeds ``study seed + 1000 + i``, never the
search's own), for the study's full epoch budget, without early stopping. In each run the
epoch is chosen on validation (``best.pt``), and that model is measured on the test split,
once. The mean and a 95% interval (Student's t over the seeds) of val and test L1 are the
numbers to publish; the baselines beside them are computed on the same split.

``final.parquet``, one row per (configuration, seed), schema version 1:

=======================  =========  ==============================================================
column                   type       meaning
=======================  =========  ==============================================================
schema_version           int32      1
study                    string     study name
rank                     int64      1 = the search's best configuration
source_trial_id          string     the search trial it re-trains
trial_id                 string     this run's key (its checkpoints: ``trials/<trial_id>/``)
seed                     int64      the training seed of this run
status                   string     completed | diverged | errored
epochs_run               int64      epochs trained
best_epoch               int64      the epoch chosen on validation (its model is ``best.pt``)
best_val_l1              float64    val L1 at that epoch (the training-time evaluation)
selected_val_l1          float64    val L1 of ``best.pt`` measured as test is (diffusion: final sampler)
selected_val_l1_<ch>     float64    ... per map channel (remembered, falsely_remembered)
test_l1                  float64    test L1 of ``best.pt`` (null without a test split)
test_l1_<ch>             float64    ... per map channel
test_spearman            float64    Spearman's rho of implied image scores on test
wall_seconds             float64    training time of the run
config_json              string     the complete resolved config
=======================  =========  ==============================================================

``summary.json`` gains ``final``: per rank the mean, 95% interval half-width and seed count of
``selected_val_l1`` and ``test_l1``, and the baselines on the test split.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

from search.runner.baseline import beats_on_final, recommended
from search.store.results import ResultsStore, ranked_trials
from trainables.data import MAP_CHANNELS, VMSDataset

if TYPE_CHECKING:
    from search.store.study import StudyStore

SCHEMA_VERSION = 1
SEED_OFFSET = 1000  # final seeds are study seed + 1000 + i: never a seed the search trained with
FINAL_COLUMNS: list[tuple[str, pa.DataType]] = (
    [("schema_version", pa.int32()), ("study", pa.string()), ("rank", pa.int64()), ("source_trial_id", pa.string()),
     ("trial_id", pa.string()), ("seed", pa.int64()), ("status", pa.string()), ("epochs_run", pa.int64()),
     ("best_epoch", pa.int64()), ("best_val_l1", pa.float64()), ("selected_val_l1", pa.float64())]
    + [(f"selected_val_l1_{c}", pa.float64()) for c in MAP_CHANNELS]
    + [("test_l1", pa.float64())] + [(f"test_l1_{c}", pa.float64()) for c in MAP_CHANNELS]
    + [("test_spearman", pa.float64()), ("wall_seconds", pa.float64()), ("config_json", pa.string())]
)

# Student's t, two-sided 95% (0.975 quantile), by degrees of freedom: the textbook table, so the
# interval needs no SciPy. Above 30 degrees of freedom the normal's 1.96 is within 4%.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def interval(values: list[float]) -> dict[str, float | int | None]:
    """Mean and half-width of the 95% interval of the mean (Student's t), over finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    if len(values) == 1:
        return {"mean": values[0], "ci95": None, "n": 1}
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return {"mean": statistics.fmean(values), "ci95": t * statistics.stdev(values) / math.sqrt(len(values)),
            "n": len(values)}


def top_configurations(store: ResultsStore, k: int, hp_names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` best finished trials (completed or stopped early) by best val L1: (trial id, hyperparameters)."""
    rows = ranked_trials(store.trials.values())
    return [(r["trial_id"], {name: r[f"hp_{name}"] for name in hp_names if r.get(f"hp_{name}") is not None})
            for r in rows[:k]]


def final_seeds(study_seed: int, n: int) -> list[int]:
    return [study_seed + SEED_OFFSET + i for i in range(n)]


@dataclass
class FinalRun:
    """One re-training: which configuration (by rank), which seed, and its full config."""

    rank: int
    source_trial_id: str
    seed: int
    config: dict[str, Any]  # complete resolved config, with the final seed and evaluate_test set


def plan_runs(top: list[tuple[str, dict[str, Any]]], seeds: list[int],
              full_config: Callable[[dict[str, Any]], dict[str, Any]]) -> list[FinalRun]:
    return [FinalRun(rank, tid, seed, {**full_config(hp), "seed": seed, "evaluate_test": True})
            for rank, (tid, hp) in enumerate(top, start=1) for seed in seeds]


def final_row(study: str, run: FinalRun, trial_id: str, metrics: dict[str, Any] | None, error: bool) -> dict[str, Any]:
    metrics = metrics or {}

    def number(name: str) -> float | None:
        value = metrics.get(name)
        return float(value) if value is not None and math.isfinite(float(value)) else None

    status = "errored" if error else ("diverged" if metrics.get("status") == "diverged" else "completed")
    row = {"schema_version": SCHEMA_VERSION, "study": study, "rank": run.rank, "source_trial_id": run.source_trial_id,
           "trial_id": trial_id, "seed": run.seed, "status": status, "epochs_run": int(metrics.get("epoch") or 0),
           "best_epoch": metrics.get("best_epoch"), "config_json": json.dumps(run.config, sort_keys=True),
           "wall_seconds": number("wall_seconds")}
    for name, _ in FINAL_COLUMNS:
        if name not in row and name != "schema_version":
            row[name] = number(name)
    return row


FINAL_TABLE = "final.parquet"


def write_final(rows: list[dict[str, Any]], store: "StudyStore") -> None:
    store.write_table(FINAL_TABLE, sorted(rows, key=lambda r: (r["rank"], r["seed"])), pa.schema(FINAL_COLUMNS))


def aggregate(rows: list[dict[str, Any]], data: VMSDataset, seeds: list[int],
              first_error: str | None = None) -> dict[str, Any]:
    """summary.json's ``final`` block: per rank, mean and 95% interval of val and test L1 over the seeds; how many
    runs errored, and the last line of the first one's error (``first_error``)."""
    ranks = sorted({r["rank"] for r in rows})
    configurations = []
    for rank in ranks:
        mine = [r for r in rows if r["rank"] == rank]
        entry = {"rank": rank, "source_trial_id": mine[0]["source_trial_id"],
                 "seeds_done": sum(1 for r in mine if r["status"] == "completed"),
                 "val_l1": interval([r["selected_val_l1"] for r in mine]),
                 "test_l1": interval([r["test_l1"] for r in mine])}
        for channel in MAP_CHANNELS:
            entry[f"test_l1_{channel}"] = interval([r[f"test_l1_{channel}"] for r in mine])
        configurations.append(entry)
    final = {"seeds": seeds, "has_test": data.has_test, "test_pairs": len(data.test_stems),
             "test_source": data.splits.get("test") if data.has_test else None,
             "test_baselines": data.baselines("test") if data.has_test else None, "configurations": configurations,
             "runs": len(rows), "errored": sum(1 for r in rows if r["status"] == "errored"), "first_error": first_error}
    chosen = recommended(final)
    final["recommended_rank"] = chosen["rank"] if chosen else None
    final["beats_baseline"] = beats_on_final(final, data.baselines())  # on test (search.runner.baseline)
    return final


def every_run_errored(final: dict[str, Any] | None) -> str | None:
    """The last line of the first run's error when every run of a final stage errored (None otherwise, and for a block
    written before summary.json counted its runs)."""
    if final and final.get("runs") and final.get("errored") == final["runs"]:
        return final.get("first_error") or "no error text"
    return None


def format_final(final: dict[str, Any] | None, val_baselines: dict[str, float]) -> list[str]:
    """The last lines the search prints: what to publish."""
    if not final or not final.get("configurations"):
        return []
    n = len(final["seeds"])
    if final["has_test"]:
        base = final["test_baselines"]
        lines = [f"final: the top {len(final['configurations'])} configurations re-trained with {n} new seeds each, "
                 f"measured once on the test split ({final['test_pairs']} pairs"
                 + (f", {final['test_source']}" if final.get("test_source") else "")
                 + "); mean and 95% interval over the seeds:"]
    else:
        base = val_baselines
        lines = [f"final: the top {len(final['configurations'])} configurations re-trained with {n} new seeds each. "
                 "This study has no test split (made before --val-share, or with --val-share 0): the numbers below "
                 "are validation numbers, selected on the same data, so optimistic:"]

    def show(stat: dict[str, Any]) -> str:
        if stat["mean"] is None:
            return "   -   "
        return f"{stat['mean']:.4f}" + (f" ± {stat['ci95']:.4f}" if stat["ci95"] is not None else "")

    for entry in final["configurations"]:
        headline = entry["test_l1"] if final["has_test"] else entry["val_l1"]
        ratio = f" ({headline['mean'] / base['black_l1']:.2f}x all-black)" if headline["mean"] is not None else ""
        lines.append(f"  #{entry['rank']} (trial {entry['source_trial_id']}): "
                     + (f"test L1 {show(entry['test_l1'])}{ratio}, " if final["has_test"] else "")
                     + f"val L1 {show(entry['val_l1'])}" + ("" if final["has_test"] else ratio)
                     + f", {entry['seeds_done']}/{n} seeds")
    split = "test" if final["has_test"] else "val"
    lines.append(f"  baselines on {split}: all-black {base['black_l1']:.4f}, mean map {base['mean_map_l1']:.4f}")
    return lines
