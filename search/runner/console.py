"""What the search prints: one line per finished trial, the first line's estimate, and the summary.

The summary is also ``summary.json``: the best trial, its config and val L1 against both dataset
baselines, counts by status, wall time, and the final stage's numbers to publish (last).
"""

from __future__ import annotations

import json
import math
import resource
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from search.runner.baseline import beats_on_val, verdict_line
from search.runner.final import every_run_errored, format_final
from search.runner.progress import SearchProgress
from search.store.results import RANKED, STATUSES, ResultsStore, best_trial
from trainables.config import RunSettings
from trainables.data import MAP_CHANNELS


def hp_line(hp: dict[str, Any], only: str | None = None) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    items = [(only, hp[only])] if only and only in hp else list(hp.items())
    return " ".join(f"{k}={fmt(v)}" for k, v in items)


class Printer:
    """One concise line per finished trial."""

    def __init__(self, start_count: int, progress: SearchProgress | None = None,
                 trial_line: Callable[[dict[str, Any]], tuple[str, str | None]] | None = None) -> None:
        self.count = start_count
        self.best = math.inf
        self.progress = progress
        self.trial_line = trial_line  # the strategy's: a prefix, and the one hyperparameter to show

    def seed_best(self, store: ResultsStore) -> None:
        best = best_trial(store.trials.values())
        if best is not None:
            self.best = min(self.best, best["best_val_l1"])

    def __call__(self, row: dict[str, Any]) -> None:
        self.count += 1
        value = row.get("best_val_l1")
        if row["status"] in RANKED and value is not None:
            self.best = min(self.best, value)
        config = json.loads(row["config_json"]) if row.get("config_json") else {}
        hp = {k[3:]: v for k, v in row.items() if k.startswith("hp_") and v is not None}
        where, varied = self.trial_line(row) if self.trial_line else ("", None)
        shown = f"{value:.4f}" if value is not None else "   -  "
        best = f"{self.best:.4f}" if math.isfinite(self.best) else "none yet"
        suffix, clear = "", ""
        if self.progress is not None:
            self.progress.on_trial(row)
            clear, suffix = self.progress.clear(), f" | {self.progress.line()}"
        print(f"{clear}[{self.count:3d}] {row['trial_id']} {where}{hp_line(hp, varied)} | val_l1 {shown} "
              f"{row['status']} ({row.get('epochs_run') or 0}/{config.get('epochs', '?')} ep) | best {best}"
              + suffix, flush=True)
        if row["status"] == "errored":
            print(error_line(row.get("error")) + " (more in trials.parquet's error column)", flush=True)


@dataclass
class Summary:
    study: str
    study_dir: str
    strategy: str
    family: str
    preset: str
    best_trial_id: str | None
    best_val_l1: float | None
    best_channel_l1: dict[str, float | None] | None  # the best trial's L1 per map channel (remembered, falsely_remembered)
    best_config: dict[str, Any] | None
    baselines: dict[str, float]
    counts: dict[str, int]
    trials: int
    wall_seconds: float
    total_wall_seconds: float
    finished: bool
    driver_peak_rss_mb: float
    final: dict[str, Any] | None = None  # the top configurations re-trained over seeds (search.runner.final)
    beats_baseline: bool | None = None  # on val, by more than the noise margin (search.runner.baseline)
    baseline_margin: float = 0.0  # that margin: sqrt 2 x the family's measured noise
    epochs_trained: int = 0  # every trial's epochs, earlier driver runs included (the final stage's apart)
    budget_epochs: int | None = None  # --budget-epochs, when given
    every_trial_errored: str | None = None  # when trials ran and every one errored: the first one's error, its last line
    every_final_run_errored: str | None = None  # likewise for the final stage's runs


def last_line(error: str | None) -> str:
    """An error's last non-blank line: where Python and Ray put what went wrong."""
    return next((line.strip() for line in reversed((error or "").splitlines()) if line.strip()), "no error text")


def cut(text: str, width: int = 200) -> str:
    """``text`` cut at ``width`` characters: Ray's error ends run to a paragraph, and a printed line quotes its start."""
    return text if len(text) <= width else text[:width - 3] + "..."


def error_line(error: str | None, width: int = 200) -> str:
    """An errored trial's or run's printed line under its own: the end of its error, cut at ``width`` characters (Ray
    Tune's traceback is not printed, ``run_tuner``; more of the text is kept where the line says)."""
    return "      error: " + cut(last_line(error), width)


def summarize(results: ResultsStore, *, study_dir: str, preset: str, record: dict[str, Any], wall: float,
              finished: bool, final: dict[str, Any] | None, margin: float, budget_epochs: int | None = None) -> Summary:
    counts = {status: 0 for status in STATUSES}
    first_error = None
    for row in results.trials.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        if row["status"] == "errored" and first_error is None:
            first_error = last_line(row.get("error"))
    best_row = best_trial(results.trials.values())
    total_wall = sum(s.get("wall_seconds") or 0.0 for s in record.get("segments", []))
    meta = results.meta
    return Summary(
        study=meta["study"], study_dir=study_dir, strategy=meta["strategy"], family=meta["family"], preset=preset,
        best_trial_id=best_row["trial_id"] if best_row else None,
        best_val_l1=best_row["best_val_l1"] if best_row else None,
        best_channel_l1={c: best_row.get(f"best_val_l1_{c}") for c in MAP_CHANNELS} if best_row else None,
        best_config=json.loads(best_row["config_json"]) if best_row else None,
        baselines=record["baselines"], counts=counts, trials=len(results.trials), wall_seconds=wall,
        total_wall_seconds=total_wall, finished=finished,
        driver_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, final=final,
        beats_baseline=beats_on_val(best_row["best_val_l1"] if best_row else None, record["baselines"], margin),
        baseline_margin=margin, epochs_trained=len(results.epochs), budget_epochs=budget_epochs,
        every_trial_errored=first_error if results.trials and counts["errored"] == len(results.trials) else None,
        every_final_run_errored=every_run_errored(final),
    )


def format_summary(summary: Summary) -> str:
    base = summary.baselines
    lines = [f"study {summary.study} ({summary.strategy}, {summary.family}, preset {summary.preset}): "
             f"{summary.trials} trials, " + ", ".join(f"{v} {k}" for k, v in summary.counts.items() if v)
             + f"; {summary.wall_seconds:.0f} s this run" + ("" if summary.finished else " (not finished)")]
    if summary.budget_epochs:
        lines.append(f"budget: {summary.epochs_trained} of {summary.budget_epochs} epochs spent "
                     f"({summary.epochs_trained / summary.budget_epochs:.2f}x; the final stage's apart)")
    if summary.best_val_l1 is not None:
        lines += _best_lines(summary)
    else:
        lines.append("no trial has finished yet")
    files = "trials.parquet, epochs.parquet, summary.json" + (", final.parquet" if summary.final else "")
    where = f"{summary.study_dir}/{files}" if "://" not in summary.study_dir else f"{files} in {summary.study_dir}"
    lines.append(f"results: {where}; dashboard: python -m dashboards.build {shlex.quote(summary.study_dir)} -o report.html")
    lines.extend(format_final(summary.final, base))  # last: the numbers to publish
    verdict = verdict_line(summary.beats_baseline, summary.final, summary.best_val_l1, base, summary.baseline_margin)
    if verdict:
        lines.append(verdict)
    return "\n".join(lines)


def _best_lines(summary: Summary) -> list[str]:
    base = summary.baselines
    better = min(base["black_l1"], base["mean_map_l1"])
    lines = [f"best val L1 {summary.best_val_l1:.4f} (trial {summary.best_trial_id}) against baselines: "
             f"all-black {base['black_l1']:.4f}, mean map {base['mean_map_l1']:.4f} "
             f"({(1 - summary.best_val_l1 / base['mean_map_l1']) * 100:+.0f}% vs mean map, "
             f"{(1 - summary.best_val_l1 / better) * 100:+.0f}% vs the better baseline)"]
    channels = summary.best_channel_l1 or {}
    if all(channels.get(c) is not None and f"black_l1_{c}" in base for c in MAP_CHANNELS):
        lines.append("per channel, remembered / falsely remembered: "
                     + " / ".join(f"{channels[c]:.4f}" for c in MAP_CHANNELS) + " against all-black "
                     + " / ".join(f"{base[f'black_l1_{c}']:.4f}" for c in MAP_CHANNELS))
    hp = dict(summary.best_config or {})
    lines.append("best config: " + hp_line({k: hp[k] for k in hp if k not in RunSettings.__dataclass_fields__}))
    return lines
