"""Waiting out a server that stops answering: the bucket a study lives in, the database that holds its lease and its
Optuna study. A call that fails because the server does not answer (refused, reset, timed out) is made again,
1 s, 2 s, ... up to 10 s apart, for up to ``--store-retry`` seconds (``MEMSEARCH_STORE_RETRY_S``, 300 by default),
with a line when the wait starts and one when the server answers again; then the search goes on. A server that
answers no (a missing object, refused credentials, a bad query) is not waited for. When the wait runs out, the
error says so and how to resume. Each attempt is whole: a write is one upload or one transaction, so nothing is
half-written in between (trainables/storage.py, search/strategies/optuna_study.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Callable

RETRY_ENV = "MEMSEARCH_STORE_RETRY_S"
DEFAULT_RETRY_S = 300.0
_inside = threading.local()  # a retried call that makes another retried call waits once, in the outer one
_said: deque[str] = deque(maxlen=20)  # the lines said, for a trial to pass on in its next report (a worker's
                                      # own output is not the driver's)


def _say(line: str) -> None:
    print(line, flush=True)
    _said.append(line)


def said_since_last() -> list[str]:
    """The waiting lines said in this process since the last call (a trial's next row carries them to the driver)."""
    lines = list(_said)
    _said.clear()
    return lines


def retry_seconds() -> float:
    """How long a server that stops answering is waited for (``--store-retry``)."""
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


def carried() -> str | None:
    """This process's ``--store-retry`` (None: the default), for a worker to :func:`adopt`: a Ray job's workers run
    the job's environment, not the driver's, so the driver hands it to each trial."""
    return os.environ.get(RETRY_ENV)


def adopt(value: str | None) -> None:
    """Wait as long as the driver does (:func:`carried`)."""
    if value is not None:
        os.environ[RETRY_ENV] = value


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def retrying(what: str, call: Callable[[], Any], transient: Callable[[BaseException], bool],
             say: Callable[[str], None] = _say,
             recover: Callable[[], None] | None = None) -> Any:
    """``call()``, again while ``transient(error)`` says the server did not answer, for up to :func:`retry_seconds`;
    ``recover()`` after each such failure (a database session to drop).

    ``what`` names the call in the lines said ("bucket: writing trials.parquet"). When the wait runs out, the last
    error is raised with its cause: the caller's usual handling (one message, exit 2) follows."""
    if getattr(_inside, "active", False):
        return call()
    deadline, pause, since = None, 1.0, None
    _inside.active = True
    try:
        while True:
            try:
                result = call()
            except Exception as err:  # noqa: BLE001 - transient() decides; anything else is raised as it was
                if not transient(err):
                    raise
                if recover is not None:
                    recover()
                now = time.monotonic()
                deadline = deadline or now + retry_seconds()
                if now + pause > deadline:
                    raise
                if since is None:
                    since = now
                    say(f"{what} failed ({first_line(err.__cause__ or err)}); retrying for up to "
                        f"{retry_seconds():.0f} s (--store-retry)")
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if since is not None:
                say(f"{what}: answered again after {time.monotonic() - since:.0f} s")
            return result
    finally:
        _inside.active = False
