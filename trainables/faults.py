"""Named crash points, for proving that a driver killed at any moment loses and repeats nothing.

The driver calls :func:`crash_point` at the moments where a kill is most dangerous: after a
searcher has recorded a finished trial but before the results are written, with a Parquet
or JSON file half written (its temporary file complete, not yet moved into place), and so
on. Normally the call does nothing. ``benchmarks.faults`` sets ``MEMSEARCH_CRASH_AT`` to
``<point>:<n>`` and the driver SIGKILLs itself the n-th time it reaches that point: no
cleanup, no ``finally``, exactly what a power cut or the OOM killer would leave.

Points (the names ``MEMSEARCH_CRASH_AT`` accepts):

===========================  ===============================================================
``searcher-complete``        greedy or Optuna has recorded a finished trial; Ray's results
                             callback has not yet run (the window Ray's call order leaves)
``greedy-state-tmp``         ``greedy_state.json``'s temporary file is written, not moved
``parquet-tmp``              a ``trials.parquet``/``epochs.parquet`` temporary file is written, not moved
``results-flushed``          both Parquet files are written
``study-json-tmp``           ``study.json``/``summary.json``'s temporary file is written, not moved
``schedule-flushed``         a population member's epoch is in ``schedules.parquet`` (pbt, pb2)
``worker-handoff``           a trial has ended and Ray Tune is about to hand its worker the next trial:
                             the driver SIGKILLs that *worker*, not itself
``checkpoint-tmp``           in a trial's worker: ``latest.pt``'s temporary file is written, not moved
``final-test``               in a final-stage run's worker: its last epoch has trained, and ``best.pt`` is
                             about to be measured on the test split
===========================  ===============================================================

``MEMSEARCH_PAUSE_AT=<point>:<n>`` holds the process there instead (it touches the file
``$MEMSEARCH_PAUSE_FLAG`` and sleeps), so a test can act at that moment: SIGTERM the driver while a
worker is mid-write.
"""

from __future__ import annotations

import os
import signal
import time

POINTS = ("searcher-complete", "greedy-state-tmp", "parquet-tmp", "results-flushed", "study-json-tmp",
          "schedule-flushed", "worker-handoff", "checkpoint-tmp", "final-test")
PAUSE_S = 120.0
_counts: dict[str, int] = {}


def _target(variable: str = "MEMSEARCH_CRASH_AT") -> tuple[str, int] | None:
    spec = os.environ.get(variable)
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{variable}={spec!r}: expected <point>:<n> with a point among {', '.join(POINTS)}")
    return name, int(count)


def _reached(variable: str, name: str) -> bool:
    target = _target(variable)
    if target is None or target[0] != name:
        return False
    key = f"{variable}:{name}"
    _counts[key] = _counts.get(key, 0) + 1
    return _counts[key] == target[1]


def _first(flag: str | None) -> bool:
    """With ``MEMSEARCH_CRASH_ONCE`` (a file's path), only the first process of a run to get here crashes: a point
    reached in trials' workers (each of which counts for itself) kills one worker, not every worker after it."""
    if not flag:
        return True
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def crash_point(name: str, pid: int | None = None) -> None:
    """SIGKILL this process (or the process ``pid``: a trial's worker) the n-th time it reaches ``name`` when
    ``MEMSEARCH_CRASH_AT=name:n``; hold it there when ``MEMSEARCH_PAUSE_AT=name:n``."""
    if _reached("MEMSEARCH_CRASH_AT", name) and _first(os.environ.get("MEMSEARCH_CRASH_ONCE")):
        os.kill(pid or os.getpid(), signal.SIGKILL)
    if _reached("MEMSEARCH_PAUSE_AT", name):
        flag = os.environ.get("MEMSEARCH_PAUSE_FLAG")
        if flag:
            with open(flag, "w") as handle:
                handle.write(str(os.getpid()))
        time.sleep(PAUSE_S)
