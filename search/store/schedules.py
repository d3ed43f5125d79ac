"""Population members' schedules: ``schedules.parquet``, what each member trained with at each epoch.

Written by population-based training (search/strategies/population.py) as members report, schema
version 1, one row per member and epoch:

==============  =======  =====================================================================
column          type     meaning
==============  =======  =====================================================================
schema_version  int32    1
study           string   study name
member          int64    the member's index (0 .. population - 1; 0 started at the base config)
trial_id        string   the member's trial key in trials.parquet and epochs.parquet
epoch           int64    the epoch trained with these values
donor_member    int64    set on the first epoch after an exploit: whose weights it continued from
donor_epoch     int64    ... and that member's epoch (its snapshot ``member-<i>/epoch-<e>.pt``)
val_l1          float64  the member's val L1 at this epoch (what the scheduler ranks)
hp_<name>       typed    each perturbed hyperparameter's value during this epoch
==============  =======  =====================================================================

A member's *lineage* is the chain of epochs its weights went through: its own epochs back to its
last exploit, then its donor's up to the donor epoch, and so on back to epoch 1. The final stage
replays the best members' lineages (:func:`lineage`, :func:`best_schedules`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

from trainables.faults import crash_point
from search.store.results import HP_TYPES, _finite_or_none, ranked_trials

if TYPE_CHECKING:
    from search.store.results import ResultsStore
    from search.store.study import StudyStore

try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover - ray is a hard dependency
    Callback = object

TABLE = "schedules.parquet"
SCHEMA_VERSION = 1
BASE_COLUMNS = [("schema_version", pa.int32()), ("study", pa.string()), ("member", pa.int64()),
                ("trial_id", pa.string()), ("epoch", pa.int64()), ("donor_member", pa.int64()),
                ("donor_epoch", pa.int64()), ("val_l1", pa.float64())]


def schema(kinds: dict[str, str]) -> pa.Schema:
    return pa.schema(BASE_COLUMNS + [(f"hp_{name}", HP_TYPES[kind]) for name, kind in kinds.items()])


def read_rows(store: "StudyStore") -> list[dict[str, Any]]:
    table = store.read_table(TABLE)
    return table.to_pylist() if table is not None else []


class ScheduleCallback(Callback):
    """Ray Tune callback: a row per member and epoch, with the hyperparameters its trial's config held then."""

    def __init__(self, store: "StudyStore", kinds: dict[str, str], keys: dict[int, str],
                 snapshots: list[list[dict[str, Any]]] = ()) -> None:
        """``snapshots``: the histories in the members' snapshots a resumed population starts from; the rows a
        killed driver never received (a member saved its epoch, its report was lost) are taken from them."""
        self.store, self.kinds, self.keys = store, kinds, keys
        self.rows = {(r["member"], r["epoch"]): r for r in read_rows(store)}
        recovered = {(int(r["member"]), int(r["epoch"])): r for history in snapshots for r in history
                     if "member_hp" in r}  # snapshots written before rows carried their member have none
        missing = [key for key in recovered if key not in self.rows]
        for member, epoch in missing:
            self.rows[(member, epoch)] = self._row(recovered[(member, epoch)], {})
        if missing:
            self.store.write_table(TABLE, [self.rows[k] for k in sorted(self.rows)], schema(self.kinds))

    def _row(self, result: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        member, epoch = int(result["member"]), int(result["epoch"])
        row = {"schema_version": SCHEMA_VERSION, "study": self.store.name, "member": member,
               "trial_id": self.keys.get(member), "epoch": epoch, "donor_member": result.get("donor_member"),
               "donor_epoch": result.get("donor_epoch"), "val_l1": _finite_or_none(result.get("val_l1"))}
        held = result.get("member_hp") or {}  # what the epoch trained with (an exploit may have changed the config since)
        row.update({f"hp_{name}": held.get(name, config.get(name)) for name in self.kinds})
        return row

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "member" not in result:
            return
        self.rows[(int(result["member"]), int(result["epoch"]))] = self._row(result, trial.config)
        self.flush()

    def on_experiment_end(self, trials, **info) -> None:
        self.flush()

    def flush(self) -> None:
        self.store.write_table(TABLE, [self.rows[k] for k in sorted(self.rows)], schema(self.kinds))
        crash_point("schedule-flushed")


def _present(value: Any) -> bool:
    """Not null (None, or NaN where pandas read a null integer)."""
    return value is not None and value == value


def last_hyperparameters(rows: list[dict[str, Any]], names: list[str]) -> dict[int, dict[str, Any]]:
    """Each member's hyperparameters at its newest epoch in ``rows`` (a resumed population continues with them)."""
    latest: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["member"], r["epoch"])):
        latest[row["member"]] = {name: row[f"hp_{name}"] for name in names if row.get(f"hp_{name}") is not None}
    return latest


def lineage(rows: list[dict[str, Any]], member: int, names: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(epoch, hyperparameters) along the weights' history of ``member``, epoch 1 first."""
    by_member: dict[int, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_member.setdefault(row["member"], {})[row["epoch"]] = row
    epochs: dict[int, dict[str, Any]] = {}
    current, end = member, max(by_member.get(member, {0: None}))
    seen = set()
    while current is not None and (current, end) not in seen:
        seen.add((current, end))
        mine = {e: r for e, r in by_member.get(current, {}).items() if e <= end}
        exploits = [e for e, r in mine.items() if _present(r.get("donor_member"))]
        start = max(exploits) if exploits else 1
        for epoch in range(start, end + 1):
            if epoch in mine and epoch not in epochs:
                epochs[epoch] = {n: mine[epoch][f"hp_{n}"] for n in names if _present(mine[epoch].get(f"hp_{n}"))}
        if not exploits:
            break
        donor = mine[start]
        current, end = int(donor["donor_member"]), int(donor["donor_epoch"])
    return sorted(epochs.items())


def best_schedules(store: "StudyStore", results: "ResultsStore", k: int, base: dict[str, Any],
                   member_of: Callable[[dict[str, Any]], int]) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` best members by best val L1: (trial id, a config replaying its lineage from epoch 1)."""
    from trainables.schedule import Schedule

    rows = read_rows(store)
    names = [c[3:] for c in (rows[0] if rows else {}) if c.startswith("hp_")]
    finished = ranked_trials(results.trials.values())
    top = []
    for row in finished[:k]:
        path = lineage(rows, member_of(row), names)
        if not path:
            continue
        schedule = Schedule.from_epochs(path)
        first = schedule.in_effect(1)
        top.append((row["trial_id"], {**base, **first, "replay": schedule.dumps()}))
    return top
