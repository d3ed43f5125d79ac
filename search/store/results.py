"""Study results as Parquet, written incrementally and atomically while a search runs.

The columns and their meanings are below (``TRIAL_COLUMNS``, ``epoch_columns``, ``MEANINGS``), with each
strategy's own columns and each family's metrics; docs/results.md renders them from here.

Both files are rewritten whole (they are small) through the study store's atomic write
(:mod:`trainables.storage`): a reader sees the old or the new file, never half of one, and a
crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pyarrow as pa

from trainables.faults import crash_point

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
    ("error", pa.string()),
]  # then the strategy's own columns (Strategy.columns: greedy's greedy_sweep, greedy_block, greedy_param), then:
TRIAL_COLUMNS_AFTER = [("config_json", pa.string())]
# Every epoch row's metrics: the shared loop's, and between them every registered family's own losses
# (trainables.families: its card's metrics), so a family's losses are columns without an edit here.
EPOCH_METRICS_BEFORE = ["train_l1", "val_l1", "val_l1_remembered", "val_l1_falsely_remembered", "best_val_l1",
                        "best_val_l1_remembered", "best_val_l1_falsely_remembered", "val_spearman"]
EPOCH_METRICS_AFTER = ["final_val_l1", "epoch_seconds", "train_seconds", "eval_seconds", "checkpoint_seconds",
                       "wall_seconds", "peak_rss_mb", "gpu_peak_mb", "gpu_reserved_mb", "gpu_util"]


def epoch_metrics() -> list[str]:
    from trainables.families import epoch_metrics as families

    return EPOCH_METRICS_BEFORE + [m for m in families() if m not in EPOCH_METRICS_BEFORE + EPOCH_METRICS_AFTER] \
        + EPOCH_METRICS_AFTER
def epoch_columns() -> list[tuple[str, pa.DataType]]:
    return ([("schema_version", pa.int32()), ("study", pa.string()), ("trial_id", pa.string()), ("epoch", pa.int64()),
             ("status", pa.string())]
            + [(m, pa.float64()) for m in epoch_metrics()]
            + [("reported_at", pa.timestamp("us", tz="UTC"))])
MEANINGS = {
    "schema_version": "the schema's version (2 added the per-channel L1 columns)",
    "study": "the study's name (its folder under the runs dir)",
    "strategy": "the search strategy", "family": "the model family",
    "trial_id": "the trial's key: a hash of what it trains (hyperparameters, seed, width divisor, data)",
    "ray_trial_id": "Ray Tune's id of the trial in the driver run that ran it last",
    "segment": "which driver run (0, 1, ...) ran it last",
    "status": "running, completed, stopped (ended early by ASHA), diverged or errored",
    "best_val_l1": "the lowest validation L1 over its epochs",
    "best_val_l1_remembered": "at the best epoch: the L1 of the red remembered channel",
    "best_val_l1_falsely_remembered": "at the best epoch: the L1 of the green falsely remembered channel",
    "final_val_l1": "validation L1 at its last epoch (epochs.parquet: diffusion's val L1 with the final sampler)",
    "final_train_l1": "train L1 (a fixed training subset) at its last epoch",
    "final_val_spearman": "Spearman's rho between the image scores the predicted and true maps imply, last epoch",
    "final_sampler_val_l1": "diffusion: val L1 with the final sampler",
    "epochs_run": "epochs reported", "epochs_planned": "the epochs a trial may train",
    "wall_seconds": "training wall time (epochs.parquet: since the trial started)",
    "device": "cpu or cuda", "node_id": "the Ray node that ran it",
    "started_at": "its first start", "ended_at": "its end (null while running)",
    "error": "the error text of an errored trial",
    "config_json": "the whole resolved trial config (JSON)",
    "hp_<name>": "one typed column per hyperparameter of the space (null where inactive, such as hp_beta1 under SGD)",
    "epoch": "the epoch (1, 2, ...)",
    "train_l1": "train L1 (a fixed training subset)", "val_l1": "validation L1, maps in [-1, 1]",
    "val_l1_remembered": "val L1 of the red remembered channel",
    "val_l1_falsely_remembered": "val L1 of the green falsely remembered channel",
    "val_spearman": "Spearman's rho between the image scores the predicted and true maps imply",
    "train_loss": "the training loss the family minimises",
    "epoch_seconds": "the epoch's wall time: training and measuring (its checkpoint follows)",
    "train_seconds": "of it, the training steps",
    "eval_seconds": "of it, the measuring: BatchNorm re-estimation, train and val L1 (on evaluation epochs), at the "
                    "last epoch the final sampler and the selected model's test L1",
    "checkpoint_seconds": "after it, the epoch's checkpoint snapshot the trial waits for (the file is written in the background)",
    "peak_rss_mb": "peak resident memory of the process running the trial (Ray reuses processes: the peak so far)",
    "gpu_peak_mb": "the trial's peak CUDA memory in tensors",
    "gpu_reserved_mb": "its process's peak on the device, PyTorch's cache and the CUDA context included",
    "gpu_util": "the GPU's mean utilisation over the epoch, 0 to 1 (the whole GPU's)",
    "reported_at": "when the epoch was reported",
}
HP_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
STATUSES = ("running", "completed", "stopped", "diverged", "errored")
RANKED = ("completed", "stopped")  # the statuses whose best val L1 ranks a trial (a diverged one's does not)


def ranked_trials(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """trials.parquet's rows that completed or were stopped with a best val L1, best first (a tie by trial id): the
    order of summary.json's best trial, the final stage's top configurations, predict's model and --from-study."""
    return sorted((r for r in rows if r["status"] in RANKED and r.get("best_val_l1") is not None),
                  key=lambda r: (r["best_val_l1"], r["trial_id"]))


def best_trial(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The search's best trial (``ranked_trials``' first), or None where no trial has finished."""
    ranked = ranked_trials(rows)
    return ranked[0] if ranked else None


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

    def __init__(self, store: "StudyStore", *, strategy: str, family: str, hp_kinds: dict[str, str],
                 columns: dict[str, str] | None = None) -> None:
        self.store = store
        self.meta = {"study": store.name, "strategy": strategy, "family": family}
        self.hp_kinds = hp_kinds
        self.columns = dict(columns or {})  # the strategy's own: name -> int, float, str or bool
        self.trial_schema = pa.schema(TRIAL_COLUMNS + [(k, HP_TYPES[v]) for k, v in self.columns.items()]
                                      + TRIAL_COLUMNS_AFTER + [(f"hp_{k}", HP_TYPES[v]) for k, v in hp_kinds.items()])
        self.epoch_schema = pa.schema(epoch_columns())
        self.epoch_metrics = epoch_metrics()
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
        row.update({m: _finite_or_none(result.get(m)) for m in self.epoch_metrics})
        previous = self.epochs.get((trial_id, row["epoch"]))
        if previous is not None and result.get("replayed"):
            return  # a resumed trial replays epochs we already hold
        self.epochs[(trial_id, row["epoch"])] = row

    def hp_columns(self, hp: dict[str, Any]) -> dict[str, Any]:
        return {f"hp_{name}": hp.get(name) for name in self.hp_kinds}

    def record_start(self, trial_id: str, identity: "TrialIdentity", config: dict[str, Any], *, ray_trial_id: str | None,
                     segment: int, epochs_planned: int, columns: dict[str, Any] | None = None) -> dict[str, Any]:
        """A trial (re)starts: its row says running, with its config, hyperparameters and the strategy's columns."""
        existing = self.trials.get(trial_id, {})
        values = dict(
            ray_trial_id=ray_trial_id, segment=segment, status="running", epochs_planned=epochs_planned,
            started_at=existing.get("started_at") or utc_now(), ended_at=None, error=None,
            config_json=json.dumps(identity.full_config(config), sort_keys=True),
            **self.hp_columns(identity.hyperparameters(config)),
        )
        values.update(columns or {})
        return self.upsert_trial(trial_id, **values)

    def flush(self) -> None:
        """Epochs first: a driver killed between the two writes leaves trials.parquet behind epochs.parquet, never
        ahead of it (a trial's row never claims epochs that are not recorded)."""
        ordered = sorted(self.epochs.values(), key=lambda r: (r["trial_id"], r["epoch"]))
        self.store.write_table(self.EPOCHS, ordered, self.epoch_schema)
        self.store.write_table(self.TRIALS, list(self.trials.values()), self.trial_schema)
        crash_point("results-flushed")

    def finished_ids(self) -> set[str]:
        return {tid for tid, row in self.trials.items() if row["status"] not in ("running", None)}

    def column_values(self, column: str) -> dict[str, Any]:
        """trial id -> its value of ``column``, for every trial that has one (a strategy's group: greedy's block)."""
        return {tid: row[column] for tid, row in self.trials.items() if row.get(column) is not None}

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
