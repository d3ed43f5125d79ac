"""Study results as Parquet, written incrementally and atomically while a search runs.

Schema version 2 (also in the README; version 2 added the per-channel L1 columns). ``trials.parquet``, one row per trial:

==================  ==================  ===============================================
column              type                meaning
==================  ==================  ===============================================
schema_version      int32               1
study               string              study name (its folder under the runs dir)
strategy            string              greedy | tpe | random
family              string              autoencoder | gan | diffusion
trial_id            string              stable key of what the trial trains (12 hex)
ray_trial_id        string              Ray Tune's id in the segment that ran it last
segment             int32               which driver run (0, 1, ...) ran it last
status              string              running | completed | stopped | diverged | errored
best_val_l1         float64             lowest validation L1 over its epochs
best_val_l1_remembered float64          at that best epoch: L1 of the red "remembered" channel
best_val_l1_falsely_remembered float64  ... and of the green "falsely remembered" channel
final_val_l1        float64             validation L1 at its last epoch
final_train_l1      float64             train L1 (fixed training subset) at its last epoch
final_val_spearman  float64             Spearman's rho of implied scores, last epoch
final_sampler_val_l1 float64            diffusion: val L1 with the final sampler
epochs_run          int64               epochs reported
epochs_planned      int64               the study's epoch budget
wall_seconds        float64             training wall time of the trial
device              string              cpu | cuda
node_id             string              Ray node that ran it
started_at          timestamp[us, UTC]  first start
ended_at            timestamp[us, UTC]  end (null while running)
error               string              error text of errored trials
greedy_sweep        int64               greedy only: sweep index
greedy_block        int64               greedy only: block index within the study
greedy_param        string              greedy only: the parameter the block varied
config_json         string              the complete resolved trial config (JSON)
hp_<name>           int64/float64/      one typed column per hyperparameter of the
                    string/bool         study's space (null where inactive)
==================  ==================  ===============================================

``epochs.parquet``, one row per reported epoch per trial: schema_version, study,
trial_id, epoch (int64), status, train_l1, val_l1, val_l1_remembered,
val_l1_falsely_remembered (the two meaningful channels), best_val_l1,
best_val_l1_remembered, best_val_l1_falsely_remembered (channels at the best epoch), val_spearman,
train_loss, g_loss, g_adv_loss, d_loss, noise_loss, final_val_l1 (float64, null where a
family does not report them), epoch_seconds, wall_seconds, peak_rss_mb (peak resident
memory of the process running the trial, reused across trials), gpu_peak_mb (the trial's
peak CUDA memory in tensors), gpu_reserved_mb (its process's peak on the device: allocator cache
and CUDA context included), gpu_util (the GPU's mean utilisation over the epoch, 0 to 1, whole
GPU: the trial's own only when it had the GPU alone) (float64), reported_at
(timestamp[us, UTC]).

Both files are rewritten whole (they are small) through the study store's atomic write
(:mod:`search.store.atomic`): a reader sees the old or the new file, never half of one, and a
crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

from search.faults import crash_point

if TYPE_CHECKING:
    from search.store.study import StudyStore

SCHEMA_VERSION = 2
TRIAL_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("schema_version", pa.int32()), ("study", pa.string()), ("strategy", pa.string()), ("family", pa.string()),
    ("trial_id", pa.string()), ("ray_trial_id", pa.string()), ("segment", pa.int32()), ("status", pa.string()),
    ("best_val_l1", pa.float64()), ("best_val_l1_remembered", pa.float64()),
    ("best_val_l1_falsely_remembered", pa.float64()), ("final_val_l1", pa.float64()), ("final_train_l1", pa.float64()),
    ("final_val_spearman", pa.float64()), ("final_sampler_val_l1", pa.float64()),
    ("epochs_run", pa.int64()), ("epochs_planned", pa.int64()), ("wall_seconds", pa.float64()),
    ("device", pa.string()), ("node_id", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")), ("ended_at", pa.timestamp("us", tz="UTC")),
    ("error", pa.string()), ("greedy_sweep", pa.int64()), ("greedy_block", pa.int64()), ("greedy_param", pa.string()),
    ("config_json", pa.string()),
]
EPOCH_METRICS = ["train_l1", "val_l1", "val_l1_remembered", "val_l1_falsely_remembered", "best_val_l1",
                 "best_val_l1_remembered", "best_val_l1_falsely_remembered", "val_spearman", "train_loss", "g_loss", "g_adv_loss",
                 "d_loss", "noise_loss", "final_val_l1", "epoch_seconds", "wall_seconds", "peak_rss_mb", "gpu_peak_mb",
                 "gpu_reserved_mb", "gpu_util"]
EPOCH_COLUMNS: list[tuple[str, pa.DataType]] = (
    [("schema_version", pa.int32()), ("study", pa.string()), ("trial_id", pa.string()), ("epoch", pa.int64()),
     ("status", pa.string())]
    + [(m, pa.float64()) for m in EPOCH_METRICS]
    + [("reported_at", pa.timestamp("us", tz="UTC"))]
)
HP_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
STATUSES = ("running", "completed", "stopped", "diverged", "errored")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ResultsStore:
    """The study's trials and epochs in memory, flushed to Parquet; appends on resume."""

    TRIALS, EPOCHS = "trials.parquet", "epochs.parquet"

    def __init__(self, store: "StudyStore", *, strategy: str, family: str, hp_kinds: dict[str, str]) -> None:
        self.store = store
        self.meta = {"study": store.name, "strategy": strategy, "family": family}
        self.hp_kinds = hp_kinds
        self.trial_schema = pa.schema(TRIAL_COLUMNS + [(f"hp_{k}", HP_TYPES[v]) for k, v in hp_kinds.items()])
        self.epoch_schema = pa.schema(EPOCH_COLUMNS)
        self.trials: dict[str, dict[str, Any]] = {}
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {}
        for row in _rows(store.read_table(self.TRIALS)):
            self.trials[row["trial_id"]] = row
        for row in _rows(store.read_table(self.EPOCHS)):
            self.epochs[(row["trial_id"], row["epoch"])] = row

    def upsert_trial(self, trial_id: str, **values: Any) -> dict[str, Any]:
        row = self.trials.setdefault(trial_id, {"schema_version": SCHEMA_VERSION, **self.meta, "trial_id": trial_id})
        row.update(values)
        return row

    def add_epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        row = {"schema_version": SCHEMA_VERSION, "study": self.meta["study"], "trial_id": trial_id,
               "epoch": int(result["epoch"]), "status": result.get("status"), "reported_at": utc_now()}
        row.update({m: _finite_or_none(result.get(m)) for m in EPOCH_METRICS})
        previous = self.epochs.get((trial_id, row["epoch"]))
        if previous is not None and result.get("replayed"):
            return  # a resumed trial replays epochs we already hold
        self.epochs[(trial_id, row["epoch"])] = row

    def hp_columns(self, hp: dict[str, Any]) -> dict[str, Any]:
        return {f"hp_{name}": hp.get(name) for name in self.hp_kinds}

    def record_start(self, trial_id: str, identity: "TrialIdentity", config: dict[str, Any], *, ray_trial_id: str | None,
                     segment: int, epochs_planned: int, block: Any = None) -> dict[str, Any]:
        """A trial (re)starts: its row says running, with its config, hyperparameters and greedy block."""
        existing = self.trials.get(trial_id, {})
        values = dict(
            ray_trial_id=ray_trial_id, segment=segment, status="running", epochs_planned=epochs_planned,
            started_at=existing.get("started_at") or utc_now(), ended_at=None, error=None,
            config_json=json.dumps(identity.full_config(config), sort_keys=True),
            **self.hp_columns(identity.hyperparameters(config)),
        )
        if block is not None:
            values.update(greedy_sweep=block.sweep, greedy_block=block.index, greedy_param=block.param)
        return self.upsert_trial(trial_id, **values)

    def flush(self) -> None:
        self.store.write_table(self.TRIALS, list(self.trials.values()), self.trial_schema)
        ordered = sorted(self.epochs.values(), key=lambda r: (r["trial_id"], r["epoch"]))
        self.store.write_table(self.EPOCHS, ordered, self.epoch_schema)
        crash_point("results-flushed")

    def finished_ids(self) -> set[str]:
        return {tid for tid, row in self.trials.items() if row["status"] not in ("running", None)}

    def greedy_blocks(self) -> dict[str, int]:
        """trial id -> greedy block of every trial that has one."""
        return {tid: int(row["greedy_block"]) for tid, row in self.trials.items() if row.get("greedy_block") is not None}

    def finished_epochs(self) -> list[tuple[str, int, float | None]]:
        """(trial id, epoch, best val L1) of every finished trial's epochs, in the order they were reported."""
        finished = self.finished_ids()
        rows = [r for (tid, _), r in self.epochs.items() if tid in finished]
        rows.sort(key=lambda r: (r["reported_at"], r["trial_id"], r["epoch"]))
        return [(r["trial_id"], int(r["epoch"]), r["best_val_l1"]) for r in rows]


def _rows(table: pa.Table | None) -> list[dict[str, Any]]:
    return table.to_pylist() if table is not None else []


def trial_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The trials.parquet columns a reported epoch updates."""
    return dict(
        best_val_l1=_finite_or_none(result.get("best_val_l1")),
        best_val_l1_remembered=_finite_or_none(result.get("best_val_l1_remembered")),
        best_val_l1_falsely_remembered=_finite_or_none(result.get("best_val_l1_falsely_remembered")),
        final_val_l1=_finite_or_none(result.get("val_l1")),
        final_train_l1=_finite_or_none(result.get("train_l1")),
        final_val_spearman=_finite_or_none(result.get("val_spearman")),
        final_sampler_val_l1=_finite_or_none(result.get("final_val_l1")),
        epochs_run=int(result.get("epoch", 0)), wall_seconds=_finite_or_none(result.get("wall_seconds")),
        device=result.get("device"), node_id=result.get("node_id"),
    )


def final_status(last: dict[str, Any], epochs_planned: int) -> str:
    """How a trial that ended normally ended, from its last reported epoch."""
    if last.get("status") == "diverged":
        return "diverged"
    if int(last.get("epoch", 0)) >= epochs_planned:
        return "completed"
    return "stopped"  # ended by the scheduler (ASHA) before its epoch budget


class TrialIdentity:
    """Maps a Ray trial's config to the study's view of it: trial key, full config, hyperparameters."""

    def __init__(self, full_config: Callable[[dict[str, Any]], dict[str, Any]],
                 key_of: Callable[[dict[str, Any]], str], hyperparameters: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.full_config, self.key_of, self.hyperparameters = full_config, key_of, hyperparameters


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text(errors="replace").strip()
        return text[-4000:]
    error = trial.get_error() if hasattr(trial, "get_error") else None
    return str(error) if error else "trial failed without an error message"


try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover - ray is a hard dependency
    Callback = object


EPOCH_LOG = "MEMSEARCH_EPOCH_LOG"  # a file: the driver appends "trial<TAB>epoch" for every live report


class ResultsCallback(Callback):
    """Ray Tune callback: keeps trials.parquet and epochs.parquet current while the search runs."""

    def __init__(self, store: ResultsStore, identity: TrialIdentity, *, segment: int, epochs_planned: int,
                 block_of: Callable[[str], Any] | None = None, flush_seconds: float = 5.0,
                 on_finish: tuple[Callable[[dict[str, Any]], None], ...] = (),
                 on_result: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.store, self.identity, self.segment, self.epochs_planned = store, identity, segment, epochs_planned
        self.block_of = block_of
        self.on_result = on_result
        self.flush_seconds = flush_seconds
        self.on_finish = on_finish
        self._last_flush = 0.0
        self._last_result: dict[str, dict[str, Any]] = {}
        self._ids: dict[str, str] = {}

    def _trial_id(self, trial: Any) -> str:
        if trial.trial_id not in self._ids:
            self._ids[trial.trial_id] = self.identity.key_of(trial.config)
        return self._ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        block = self.block_of(trial.trial_id) if self.block_of else None
        self.store.record_start(self._trial_id(trial), self.identity, trial.config, ray_trial_id=trial.trial_id,
                                segment=self.segment, epochs_planned=self.epochs_planned, block=block)
        self._maybe_flush(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        tid = self._trial_id(trial)
        self._last_result[tid] = result
        log = os.environ.get(EPOCH_LOG)
        if log:  # every epoch a trial reported to this driver, replays excluded (benchmarks/faults.py counts them)
            with open(log, "a") as handle:
                handle.write(f"{tid}\t{result.get('epoch')}\n")
        if result.get("notice"):  # the trial's checkpoint could not be used as it was
            print(f"trial {tid}: {result['notice']}", flush=True)
        self.store.add_epoch(tid, result)
        self.store.upsert_trial(tid, **trial_metrics(result))
        self._maybe_flush()
        if self.on_result:
            self.on_result(result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        tid = self._trial_id(trial)
        status = final_status(self._last_result.get(tid) or {}, self.epochs_planned)
        row = self.store.upsert_trial(tid, status=status, ended_at=utc_now())
        self._maybe_flush(force=True)
        worker = getattr(trial.temporary_state.location, "pid", None)  # which Ray Tune may hand the next trial
        if worker:
            crash_point("worker-handoff", pid=worker)
        for hook in self.on_finish:
            hook(row)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        tid = self._trial_id(trial)
        if tid not in self.store.trials:  # it failed before it started (its worker died as it was handed the trial)
            self.on_trial_start(iteration, trials, trial)
        row = self.store.upsert_trial(tid, status="errored", ended_at=utc_now(), error=_error_text(trial))
        self._maybe_flush(force=True)
        for hook in self.on_finish:
            hook(row)

    def on_experiment_end(self, trials, **info) -> None:
        self._maybe_flush(force=True)

    def _maybe_flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_flush >= self.flush_seconds:
            self.store.flush()
            self._last_flush = now
