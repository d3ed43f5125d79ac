"""The Ray Tune callback that keeps a study's results current while its trials run: every reported epoch and every
trial's start and end go into the :class:`~search.store.results.ResultsStore`, flushed to Parquet (at most every few
seconds, and whenever a trial starts or ends), with the printed line of each finished trial after the flush."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from trainables.faults import crash_point
from search.store.results import ResultsStore, TrialIdentity, final_status, trial_metrics, utc_now


def error_text(trial: Any) -> str:
    """A Ray Tune trial's error: the end of its error file, else the error Ray holds."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text(errors="replace").strip()
        return text[-4000:]
    error = trial.get_error() if hasattr(trial, "get_error") else None
    return str(error) if error else "trial failed without an error message"


EPOCH_LOG = "MEMSEARCH_EPOCH_LOG"  # a file: the driver appends "trial<TAB>epoch" for every live report


class ResultsCallback(Callback):
    """Ray Tune callback: keeps trials.parquet and epochs.parquet current while the search runs."""

    def __init__(self, store: ResultsStore, identity: TrialIdentity, *, segment: int, epochs_planned: int,
                 columns_of: Callable[[str], dict[str, Any]] | None = None, flush_seconds: float = 5.0,
                 on_finish: tuple[Callable[[dict[str, Any]], None], ...] = (),
                 on_result: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.store, self.identity, self.segment, self.epochs_planned = store, identity, segment, epochs_planned
        self.columns_of = columns_of
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
        columns = self.columns_of(trial.trial_id) if self.columns_of else None
        self.store.record_start(self._trial_id(trial), self.identity, trial.config, ray_trial_id=trial.trial_id,
                                segment=self.segment, epochs_planned=self.epochs_planned, columns=columns)
        self._maybe_flush(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        tid = self._trial_id(trial)
        self._last_result[tid] = result
        log = os.environ.get(EPOCH_LOG)
        if log and not result.get("replayed"):  # every epoch a trial trained and reported to this driver
            with open(log, "a") as handle:
                handle.write(f"{tid}\t{result.get('epoch')}\n")
        if result.get("notice"):  # the trial's checkpoint could not be used as it was
            print(f"trial {tid}: {result['notice']}", flush=True)
        self.store.add_epoch(tid, result)
        self.store.upsert_trial(tid, **trial_metrics(result))
        # A trial's last result (ASHA stops it: Ray marks it done before the searcher hears of the end; or it
        # ended) reaches the disk before the searcher records the end: a driver killed in between leaves the
        # searcher's record and the epochs that led to it, whatever the trial's paced checkpoint holds.
        self._maybe_flush(force=bool(result.get("done")) or result.get("status") in ("completed", "diverged"))
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
        row = self.store.upsert_trial(tid, status="errored", ended_at=utc_now(), error=error_text(trial))
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
