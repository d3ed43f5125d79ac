"""Whether a search's answer beats the trivial maps, judged as a researcher would publish it.

On data a model cannot learn, the right answer under L1 is a constant map: the per-pixel median,
which for sparse maps is black (the all-black map), else the mean training map. Both are
contenders. A configuration beats them only:

- in the search (validation): when its best val L1 is below the better baseline by more than the
  family's greedy noise margin (sqrt 2 x its measured seed-to-seed noise): one run's advantage
  smaller than that is no evidence;
- after the final stage: when the upper end of the recommended configuration's 95% interval over
  the seeds lies below the better baseline of the same split (test; without a test split, val).
  The recommended configuration is the re-trained one with the lowest mean val L1, the one the
  dashboard recommends; a single seed has no interval, so it makes no claim.

When nothing beats the baseline the search says so in a line of its own, ``summary.json`` says
``"beats_baseline": false`` (and inside ``final``), the dashboard's answer says it, and
``search.predict`` warns (docs/data.md, "When nothing beats the baseline").
"""

from __future__ import annotations

import math
from typing import Any


def better_baseline(baselines: dict[str, float]) -> tuple[str, float]:
    """(name, L1) of the stronger of the two trivial maps on a split."""
    if baselines["black_l1"] <= baselines["mean_map_l1"]:
        return "the all-black map", baselines["black_l1"]
    return "the mean training map", baselines["mean_map_l1"]


def beats_on_val(best_val_l1: float | None, baselines: dict[str, float], margin: float) -> bool | None:
    """The search's judgement: None while no trial has finished."""
    if best_val_l1 is None:
        return None
    return best_val_l1 < better_baseline(baselines)[1] * (1.0 - margin)


def recommended(final: dict[str, Any] | None) -> dict[str, Any] | None:
    """The re-trained configuration with the lowest mean val L1 (selection never reads test)."""
    configs = [c for c in (final or {}).get("configurations", []) if (c.get("val_l1") or {}).get("mean") is not None]
    return min(configs, key=lambda c: c["val_l1"]["mean"]) if configs else None


def final_split(final: dict[str, Any], val_baselines: dict[str, float]) -> tuple[str, dict[str, float]]:
    """The split the final stage is judged on, and its baselines."""
    return ("test", final["test_baselines"]) if final.get("has_test") else ("val", val_baselines)


def beats_on_final(final: dict[str, Any] | None, val_baselines: dict[str, float]) -> bool | None:
    """The final stage's judgement (None without a re-trained configuration)."""
    chosen = recommended(final)
    if chosen is None:
        return None
    split, baselines = final_split(final, val_baselines)
    stat = chosen[f"{split}_l1"]
    if stat.get("mean") is None:
        return None
    upper = stat["mean"] + (stat["ci95"] if stat.get("ci95") is not None else math.inf)
    return upper < better_baseline(baselines)[1]


def study_verdict(summary: dict[str, Any]) -> bool | None:
    """A finished study's verdict, as summary.json holds it: the final stage's (test) when it ran, else the search's (val)."""
    final = summary.get("final") or {}
    return final["beats_baseline"] if final.get("beats_baseline") is not None else summary.get("beats_baseline")


def verdict_line(beats: bool | None, final: dict[str, Any] | None, best_val_l1: float | None,
                 val_baselines: dict[str, float], margin: float) -> str | None:
    """The line the search ends with when its answer does not beat the better baseline (None when it does)."""
    if final is not None and final.get("beats_baseline") is not None:
        if final["beats_baseline"]:
            return None
        split, baselines = final_split(final, val_baselines)
        name, value = better_baseline(baselines)
        stat = recommended(final)[f"{split}_l1"]
        upper = stat["mean"] + stat["ci95"] if stat.get("ci95") is not None else None
        reach = f"its 95% interval reaches {upper:.4f}" if upper is not None else "one seed gives no interval"
        return (f"no configuration beats {name} on this data: the recommended one's {split} L1 is "
                f"{stat['mean']:.4f} and {reach}, not below {name}'s {value:.4f} "
                "(docs/data.md, 'When nothing beats the baseline')")
    if beats is None or beats:
        return None
    name, value = better_baseline(val_baselines)
    return (f"no configuration beats {name} on this data: the best val L1 {best_val_l1:.4f} is not below "
            f"{name}'s {value:.4f} by more than the noise margin ({margin:.1%}) "
            "(docs/data.md, 'When nothing beats the baseline')")
