"""A study lease in the Optuna storage: at most one driver runs a given study at a time.

Why: the per-folder ``study_lock`` (``flock`` on ``<runs-dir>/<study>/.lock``) only guards
drivers that share a folder. Two drivers on two machines, each with its own ``--runs-dir``
but the same ``--storage postgresql://...``, would both run the same Optuna study: both
re-queue each other's RUNNING trials as "interrupted", double the budget and corrupt the
search. The one thing they share is the storage database, so the exclusion lives there, in a
small table ``memsearch_study_leases`` with one row per study that is being run.

Why a lease and not a lock: a lock is released by its holder, and a machine that loses power
or its network never releases anything; a row lock or advisory lock held on a connection only
goes away when the server notices the connection is dead, which over TCP can take hours. A
lease is a row with a *heartbeat*: the holder refreshes it every ``heartbeat_every`` seconds
(``timeout / 6`` by default), and anyone who finds it silent for longer than ``timeout``
(``MEMSEARCH_LEASE_TIMEOUT``, 60 s by default) may take it over. Taking over is a
compare-and-swap, ``UPDATE ... WHERE holder = :old AND heartbeat = :old_heartbeat``, so of two
drivers racing for the same dead lease exactly one wins; taking a free lease is an
``INSERT`` whose primary-key conflict tells the loser someone else holds it.

What happens when the holder
  * exits cleanly (or raises): ``release()`` deletes the row; the next driver starts at once.
  * is SIGKILLed on the machine where the next driver starts (same host and boot id, its pid
    gone): taken over at once, so re-running a killed command just works.
  * is SIGKILLed elsewhere, or its machine dies: the row stays; the next driver is refused
    with a message naming the holder until the heartbeat is ``timeout`` old, then takes it
    over and says whose lease it took.
  * loses the network: its heartbeats fail (logged, retried every tick, never fatal). If it
    comes back within ``timeout`` nothing happened. If not, another driver may take the
    lease over; the first heartbeat after the network returns then updates no row, and the
    lease is marked ``lost`` (one warning, ``on_lost`` called): the caller must stop
    scheduling trials, since someone else now runs the study.

Clocks: heartbeats are the client's ``time.time()``, compared by other clients. Machines are
assumed NTP-synchronised; the timeout (a minute) is far larger than any plausible skew
(milliseconds). A clock far behind makes its holder look dead sooner; one far ahead makes it
look alive longer — a heartbeat from the future counts as fresh.

Works on any SQLAlchemy URL that Optuna's ``RDBStorage`` accepts (tested on SQLite and
PostgreSQL). The table is created on first use (``checkfirst``) next to Optuna's tables.
"""

from __future__ import annotations

import _thread
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import (Column, Double, Integer, MetaData, String, Table, create_engine, delete, inspect, insert,
                        select, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from search.errors import StudyError

log = logging.getLogger(__name__)

TABLE_NAME = "memsearch_study_leases"
DEFAULT_TIMEOUT = 60.0
TIMEOUT_ENV = "MEMSEARCH_LEASE_TIMEOUT"

metadata = MetaData()
leases = Table(
    TABLE_NAME, metadata,
    Column("study_name", String(512), primary_key=True),  # Optuna's own limit on study names
    Column("holder", String(512), nullable=False),        # host:pid:boot id:random, unique per StudyLease
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("heartbeat", Double, nullable=False),          # epoch seconds, the holder's clock
    Column("acquired_at", Double, nullable=False),
)


class LeaseHeld(Exception):
    """Another live driver holds the study's lease."""

    def __init__(self, message: str, holder: LeaseHolder) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LeaseHolder:
    """A lease row as another driver saw it; ``silent_for`` is its heartbeat's age then."""

    holder: str
    host: str
    pid: int
    heartbeat: float
    acquired_at: float
    silent_for: float

    def describe(self) -> str:
        """One line for the log, e.g. ``driver gpu-3:4711, silent for 73 s``."""
        if _dead_here(self.holder, self.pid):
            return f"driver {self.host}:{self.pid}, no longer running on this machine"
        return f"driver {self.host}:{self.pid}, silent for {self.silent_for:.0f} s"


def _boot_id() -> str:
    """This machine's current boot (Linux), so a holder can be recognised as a process of this very machine."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return "unknown"


_BOOT_ID = _boot_id()


def _dead_here(holder: str, pid: int) -> bool:
    """The holder ran on this machine, in this boot, and its process is gone: no need to wait for the timeout.

    The common case after a SIGKILL or a crash: the user re-runs the command on the same
    machine at once. Hostnames can repeat across machines, boot ids do not; a holder from
    another machine (or an earlier boot, or an unknown one) is only judged by its heartbeat.
    """
    parts = holder.split(":")
    if _BOOT_ID == "unknown" or len(parts) < 4 or parts[-2] != _BOOT_ID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def safe_url(url: str) -> str:
    """The storage URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL: show nothing that could be a secret
        return "<unparsable storage URL>"


def lease_timeout() -> float:
    """``MEMSEARCH_LEASE_TIMEOUT`` (seconds), 60 when unset."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: must be positive")
    return value


def _engine_for(url: str) -> Engine:
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"timeout": 60}  # as the driver's RDBStorage: wait for writers, don't fail
    elif parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        connect_args = {"connect_timeout": 10}  # a heartbeat must not hang for minutes on a dead route
    # pre_ping: after a network loss the pooled connection is dead; replace it, don't fail the tick.
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


class StudyLease:
    """Exclusive right to run ``study_name`` on the storage at ``url``, kept alive by a heartbeat.

    ``acquire()`` takes it (or raises ``LeaseHeld``), ``release()`` gives it back; also a
    context manager. ``lost`` turns true if another driver took it over meanwhile (see the
    module docstring); ``on_lost`` is then called once, from the heartbeat thread.
    """

    def __init__(self, url: str, study_name: str, *, timeout: float | None = None,
                 heartbeat_every: float | None = None, on_lost: Callable[[], None] | None = None) -> None:
        self.url = url
        self.study_name = study_name
        self.timeout = lease_timeout() if timeout is None else float(timeout)
        self.heartbeat_every = self.timeout / 6 if heartbeat_every is None else float(heartbeat_every)
        if not self.timeout > 0:
            raise ValueError(f"lease timeout must be positive, got {self.timeout}")
        if not 0 < self.heartbeat_every < self.timeout:
            raise ValueError(f"heartbeat_every ({self.heartbeat_every} s) must be positive and shorter than "
                             f"the timeout ({self.timeout} s), or a live lease would look dead")
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.holder = f"{self.host}:{self.pid}:{_BOOT_ID}:{uuid.uuid4().hex[:8]}"
        self.on_lost = on_lost
        self.took_over: LeaseHolder | None = None
        self._engine = _engine_for(url)
        self._held = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public -------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Acquired, not released, not lost."""
        return self._held and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        """Another driver took the lease over while we held it (our heartbeat found no row)."""
        return self._lost.is_set()

    def acquire(self) -> LeaseHolder | None:
        """Take the lease; returns the dead holder it took over, if any. Raises ``LeaseHeld``."""
        if self.held:
            return None
        self._stop_heartbeat()  # a lost lease's thread, if it has not noticed yet
        self._held = False
        self._lost.clear()
        self._create_table()
        # Each round either wins, raises, or saw the row change under it (insert lost a race,
        # the holder released, another taker won the swap): then look again. A few rounds
        # settle any real contention.
        for _ in range(10):
            now = time.time()
            if self._try_insert(now):
                return self._won(None)
            row = self._read()
            if row is None:
                continue  # released between our insert and our read
            age = now - row.heartbeat
            holder = LeaseHolder(row.holder, row.host, row.pid, row.heartbeat, row.acquired_at, max(0.0, age))
            if age <= self.timeout and not _dead_here(row.holder, row.pid):
                raise LeaseHeld(self._held_message(holder), holder)
            if self._try_take_over(row.holder, row.heartbeat, now):
                return self._won(holder)
        raise RuntimeError(f"could not settle the lease of study {self.study_name!r} in {safe_url(self.url)} "
                           "after 10 rounds of contention")

    def release(self) -> None:
        """Stop heartbeating and delete our row (a lost lease's row is the new holder's: kept). Idempotent."""
        self._stop_heartbeat()
        if self._held:
            self._held = False
            try:
                with self._engine.begin() as conn:
                    conn.execute(delete(leases).where(leases.c.study_name == self.study_name,
                                                      leases.c.holder == self.holder))
            except SQLAlchemyError as err:
                # Never mask the caller's own error on the way out; the row simply expires.
                log.warning("could not release the lease of study %r in %s (%s); it expires after %g s",
                            self.study_name, safe_url(self.url), err, self.timeout)
        self._engine.dispose()

    def beat(self) -> bool:
        """Refresh the heartbeat now; False (and ``lost``) if the row is no longer ours."""
        with self._engine.begin() as conn:
            result = conn.execute(update(leases)
                                  .where(leases.c.study_name == self.study_name, leases.c.holder == self.holder)
                                  .values(heartbeat=time.time()))
        if result.rowcount == 1:
            return True
        self._mark_lost()
        return False

    def __enter__(self) -> StudyLease:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------

    def _create_table(self) -> None:
        try:
            metadata.create_all(self._engine, tables=[leases], checkfirst=True)
        except SQLAlchemyError:
            # Two first drivers can both pass the check; the loser's CREATE fails. Fine if it exists now.
            if not inspect(self._engine).has_table(TABLE_NAME):
                raise

    def _try_insert(self, now: float) -> bool:
        try:
            with self._engine.begin() as conn:  # its own transaction: on PostgreSQL a conflict aborts it
                conn.execute(insert(leases).values(study_name=self.study_name, holder=self.holder, host=self.host,
                                                   pid=self.pid, heartbeat=now, acquired_at=now))
            return True
        except IntegrityError:
            return False

    def _read(self) -> Any:
        with self._engine.connect() as conn:
            return conn.execute(select(leases).where(leases.c.study_name == self.study_name)).first()

    def _try_take_over(self, old_holder: str, old_heartbeat: float, now: float) -> bool:
        # Compare-and-swap: only if the row is still exactly the stale one we read. Floats
        # round-trip exactly through SQLite REAL and PostgreSQL DOUBLE PRECISION.
        with self._engine.begin() as conn:
            result = conn.execute(update(leases)
                                  .where(leases.c.study_name == self.study_name, leases.c.holder == old_holder,
                                         leases.c.heartbeat == old_heartbeat)
                                  .values(holder=self.holder, host=self.host, pid=self.pid, heartbeat=now,
                                          acquired_at=now))
        return result.rowcount == 1

    def _won(self, took_over: LeaseHolder | None) -> LeaseHolder | None:
        self._held = True
        self.took_over = took_over
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat_loop, name="memsearch-lease-heartbeat", daemon=True)
        self._thread.start()
        return took_over

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():  # on_lost may release()
            # Bounded: a tick stuck on a dead network must not hang the driver's exit.
            self._thread.join(timeout=self.heartbeat_every + 15)
            self._thread = None

    def _heartbeat_loop(self) -> None:
        failing = False
        while not self._stop.wait(self.heartbeat_every):
            try:
                if not self.beat():
                    return
            except Exception as err:  # noqa: BLE001 - a broken heartbeat must never crash the driver
                if not failing:
                    log.warning("lease heartbeat for study %r failed (%s); retrying every %g s. If this lasts "
                                "%g s another driver may take the study over.", self.study_name,
                                err, self.heartbeat_every, self.timeout)
                failing = True
                continue
            if failing:
                log.warning("lease heartbeat for study %r works again", self.study_name)
                failing = False

    def _mark_lost(self) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        self._stop.set()
        log.warning("lost the lease of study %r in %s: another driver took it over after our heartbeat was "
                    "silent for more than %g s; this driver must stop.", self.study_name,
                    safe_url(self.url), self.timeout)
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:  # noqa: BLE001 - runs on the heartbeat thread; report, don't kill it silently
                log.exception("on_lost callback of the study lease failed")

    def _held_message(self, h: LeaseHolder) -> str:
        left = max(0.0, self.timeout - h.silent_for)
        return (f"study {self.study_name!r} in {safe_url(self.url)} is being run by another driver "
                f"(host {h.host}, pid {h.pid}), last heartbeat {h.silent_for:.0f} s ago. Wait for it to finish, "
                f"or if that driver died its lease expires after {self.timeout:g} s without a heartbeat "
                f"({TIMEOUT_ENV}), in about {left:.0f} s; then run again.")


def take_lease(url: str, name: str, say: Callable[[str], None]) -> StudyLease:
    """The study's lease in its Optuna storage: one driver per study across machines, not only per folder.

    Refused with a StudyError naming the holder; a driver whose lease is taken over (its heartbeats
    stopped reaching the storage) is interrupted, as Ctrl-C would."""
    def lost() -> None:
        print(f"error: another driver took over the lease of study {name} in {safe_url(url)} (this driver's heartbeats "
              "stopped reaching the storage for longer than the lease timeout); stopping this one.",
              file=sys.stderr, flush=True)
        _thread.interrupt_main()

    try:
        lease = StudyLease(url, name, on_lost=lost)
        took_over = lease.acquire()
    except LeaseHeld as err:
        raise StudyError(str(err)) from None
    except (SQLAlchemyError, ValueError) as err:
        raise StudyError(f"cannot take the study lease in the Optuna storage {safe_url(url)} ({err}).") from None
    if took_over is not None:
        say(f"took over the lease of study {name} from {took_over.describe()} (its driver stopped)")
    return lease
