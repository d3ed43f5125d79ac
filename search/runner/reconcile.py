"""Start-up reconciliation: what a killed driver left half recorded is completed before anything new runs.

A finished trial is recorded in three places, in this order: the trial's own checkpoint
(``latest.pt``, every epoch, written by the worker), the searcher's state (greedy's
``greedy_state.json`` or the Optuna study, when Ray calls ``on_trial_complete``) and the
study's Parquet files (when Ray then calls the results callback; epochs are flushed every
few seconds). A driver killed between two of these leaves them disagreeing:

- the searcher counts the trial as done but ``trials.parquet`` still says ``running``
  (or lacks the row, when the kill hit the Parquet write): the searcher will never propose
  it again, so without repair it would stay ``running`` for good. It is closed here from its
  checkpoint: epochs, metrics and how it ended (completed, stopped by ASHA, diverged; errored
  when the searcher recorded a failure);
- ``epochs.parquet`` lacks the last epochs of a trial: they are filled in from the checkpoint;
- a trial the searcher counts as done with neither a row nor a checkpoint folder here was
  run by another driver sharing the Optuna storage (another machine): left to that one;
- the searcher does not count a ``running`` trial as done: nothing to do here; the searcher
  proposes it again and it resumes from its checkpoint, replaying the epochs it had reported.
"""

from __future__ import annotations

from typing import Any

from search.store.results import ResultsStore, TrialIdentity, utc_now, final_status, trial_metrics
from search.store.study import StudyStore
from search.strategies.base import SearcherRecord


def reconcile(store: ResultsStore, identity: TrialIdentity, searcher_done: dict[str, SearcherRecord],
              study: StudyStore, *, segment: int, epochs_planned: int,
              continuing: dict[str, list[dict[str, Any]]] | None = None) -> list[str]:
    """Bring ``store`` in line with the searcher and the checkpoints; returns one line per repair.

    ``continuing``: trial key -> the epochs in the checkpoint it resumes from, for trials that will not replay
    them (population members, search/strategies/population.py); the ones ``store`` lacks are recorded here."""
    lines: list[str] = []
    for tid, history in (continuing or {}).items():
        missing = [r for r in history if (tid, int(r["epoch"])) not in store.epochs]
        for result in missing:
            store.add_epoch(tid, dict(result, replayed=True))
        if missing:
            lines.append(f"trial {tid}: {len(missing)} epoch rows restored from its snapshot")
    for tid, record in searcher_done.items():
        row = store.trials.get(tid)
        if row is not None and row["status"] != "running":
            continue
        if record.history is None and row is None and not study.has_trial_folder(tid):
            continue  # run by another driver on a shared storage (another machine's --runs-dir): not ours to record
        lines += _close(store, identity, tid, record, row, study, segment=segment, epochs_planned=epochs_planned)
    lines += _missing_epochs(store, study)
    if lines:
        store.flush()
    return lines


def _close(store: ResultsStore, identity: TrialIdentity, tid: str, record: SearcherRecord, row: dict[str, Any] | None,
           study: StudyStore, *, segment: int, epochs_planned: int) -> list[str]:
    """A trial the searcher saw end that the Parquet files still call running (or lack): recorded from its
    checkpoint and what was flushed of it."""
    lines = []
    if record.history is not None:  # the strategy read it from its own checkpoints (population members)
        history = record.history
    else:
        trial_store = study.trial_checkpoints(tid)
        checkpoint = trial_store.load_latest()
        history = checkpoint["history"] if checkpoint else []
        if trial_store.notice:  # its newest checkpoint was unreadable: the record may miss its last epochs
            lines.append(f"trial {tid}: {trial_store.notice}; its record may miss the epochs after that")
    if row is None:
        store.record_start(tid, identity, record.config, ray_trial_id=None, segment=segment,
                           epochs_planned=epochs_planned, columns=record.columns)
    for result in history:
        store.add_epoch(tid, dict(result, replayed=True))
    # Its last epoch: the checkpoint's (paced, it may lag) or the last reported row the flush on a trial's
    # last result put on disk before the searcher heard of its end (ResultsCallback), whichever is later.
    if history and int(history[-1]["epoch"]) > ((row or {}).get("epochs_run") or 0):
        store.upsert_trial(tid, **trial_metrics(history[-1]))
    last = max([*history, *(r for (t, _), r in store.epochs.items() if t == tid)],
               key=lambda r: int(r["epoch"]), default=None) or {}
    if record.errored and last.get("status") not in ("completed", "diverged"):
        status = "errored"
        store.upsert_trial(tid, status=status, ended_at=utc_now(),
                           error="the trial failed; its error text was lost when the driver was killed "
                                 "before recording it (see the worker logs under ray/)")
    else:
        status = final_status(last, epochs_planned)
        store.upsert_trial(tid, status=status, ended_at=utc_now())
    return lines + [f"trial {tid}: finished before the driver was killed; recorded as {status} "
                    f"after {int(last.get('epoch', 0))} epochs (from its checkpoint)"]


def _missing_epochs(store: ResultsStore, study: StudyStore) -> list[str]:
    """Finished trials whose last epochs missed the Parquet flush: filled in from their checkpoints."""
    lines = []
    for tid, row in store.trials.items():
        if row["status"] == "running" or not row.get("epochs_run"):
            continue
        held = sum(1 for (t, _) in store.epochs if t == tid)
        if held >= row["epochs_run"]:
            continue
        checkpoint = study.trial_checkpoints(tid).load_latest()
        for result in (checkpoint["history"] if checkpoint else []):
            store.add_epoch(tid, dict(result, replayed=True))
        restored = sum(1 for (t, _) in store.epochs if t == tid) - held
        lost = row["epochs_run"] - held - restored
        lines.append(f"trial {tid}: {restored} epoch rows restored from its checkpoint"
                     + (f"; {lost} were lost with the driver" if lost > 0 else ""))
    return lines
