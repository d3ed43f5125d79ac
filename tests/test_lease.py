"""The study lease (search/lease.py) on a real SQLite file and a real PostgreSQL server.

Every behaviour runs on both backends (``storage`` is parametrised); a killed holder is a
real SIGKILLed process, a takeover race is real threads on real connections.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, text, update
from sqlalchemy.engine import make_url

from search.store.lease import TABLE_NAME, LeaseHeld, LeaseHolder, StudyLease, leases, metadata, safe_url
from tests.postgres import postgres_url  # noqa: F401 - pytest fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path) -> str:
    """An Optuna-style storage URL; PostgreSQL's server starts only if a test asks for it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study() -> str:
    return f"study-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared by the session's tests


@pytest.fixture
def db(storage):
    """A plain engine on the storage, for what another machine would write (or a test inspects)."""
    engine = create_engine(storage)
    metadata.create_all(engine, checkfirst=True)
    yield engine
    engine.dispose()


def row_of(db, study: str):
    with db.connect() as conn:
        return conn.execute(select(leases).where(leases.c.study_name == study)).first()


def insert_stale(db, study: str, silent_for: float, host: str = "deadhost", pid: int = 4242) -> None:
    """The row a driver leaves when its machine dies: its last heartbeat, ``silent_for`` ago."""
    beat = time.time() - silent_for
    with db.begin() as conn:
        conn.execute(insert(leases).values(study_name=study, holder=f"{host}:{pid}:deadbeef", host=host, pid=pid,
                                           heartbeat=beat, acquired_at=beat - 600))


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_acquire_and_release(storage, study, db):
    lease = StudyLease(storage, study, timeout=5.0)
    assert lease.acquire() is None and lease.held
    row = row_of(db, study)
    assert (row.holder, row.host, row.pid) == (lease.holder, lease.host, os.getpid())
    assert abs(row.heartbeat - time.time()) < 5
    lease.release()
    assert not lease.held and row_of(db, study) is None
    lease.release()  # idempotent


def test_second_driver_is_refused_with_a_clear_message(storage, study, db):
    first = StudyLease(storage, study, timeout=60.0)
    first.acquire()
    shown = storage
    if storage.startswith("postgresql"):  # a password in the URL (trust auth ignores it) never reaches the message
        shown = make_url(storage).set(password="s3cret-pw").render_as_string(hide_password=False)
    try:
        with pytest.raises(LeaseHeld) as refused:
            StudyLease(shown, study, timeout=60.0).acquire()
        message = str(refused.value)
        assert f"study {study!r}" in message
        assert f"host {first.host}, pid {os.getpid()}" in message
        assert "last heartbeat 0 s ago" in message
        assert "expires after 60 s" in message and "MEMSEARCH_LEASE_TIMEOUT" in message
        assert "s3cret-pw" not in message and safe_url(shown) in message
        assert refused.value.holder.holder == first.holder
        assert row_of(db, study).holder == first.holder  # the refused driver changed nothing
    finally:
        first.release()


def test_stale_lease_is_taken_over(storage, study, db):
    insert_stale(db, study, silent_for=73.0)
    lease = StudyLease(storage, study, timeout=1.0)
    took = lease.acquire()
    try:
        assert isinstance(took, LeaseHolder) and lease.took_over == took
        assert (took.host, took.pid) == ("deadhost", 4242)
        assert took.describe() == "driver deadhost:4242, silent for 73 s"
        assert row_of(db, study).holder == lease.holder
    finally:
        lease.release()
    assert row_of(db, study) is None


CHILD = """
import sys, time
from search.store.lease import StudyLease
StudyLease(sys.argv[1], sys.argv[2], timeout=1.0, heartbeat_every=0.2).acquire()
print("acquired", flush=True)
time.sleep(120)
"""


def test_a_driver_killed_on_this_machine_is_taken_over_at_once(storage, study):
    child = subprocess.Popen([sys.executable, "-c", CHILD, storage, study], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "acquired"
        alive = StudyLease(storage, study, timeout=60.0)
        with pytest.raises(LeaseHeld, match=f"pid {child.pid}"):
            alive.acquire()  # its process runs: refused
    finally:
        child.send_signal(signal.SIGKILL)  # no release, no cleanup
        child.wait()
        child.stdout.close()
    # Same machine, same boot, its pid gone: no need to wait out the 60 s.
    lease = StudyLease(storage, study, timeout=60.0)
    took = lease.acquire()
    assert took is not None and took.pid == child.pid and "no longer running" in took.describe()
    lease.release()


def test_another_machines_fresh_lease_is_refused_even_if_its_pid_is_unknown_here(storage, study, db):
    insert_stale(db, study, silent_for=0.5, pid=2**22 + 12345)  # no such pid here; another machine's boot id
    with pytest.raises(LeaseHeld, match="deadhost"):
        StudyLease(storage, study, timeout=60.0).acquire()


def test_heartbeat_keeps_a_live_lease(storage, study, db):
    with StudyLease(storage, study, timeout=1.0, heartbeat_every=0.15) as alive:
        beats = {row_of(db, study).heartbeat}
        for _ in range(600):  # the heartbeat moves on its own, however loaded the machine (at most a minute)
            if len(beats) >= 3:
                break
            time.sleep(0.1)
            beats.add(row_of(db, study).heartbeat)
        assert len(beats) >= 3, beats
        time.sleep(1.6)  # longer than the timeout: only the heartbeat keeps it fresh
        with pytest.raises(LeaseHeld):
            StudyLease(storage, study, timeout=1.0).acquire()
        assert alive.held
    assert row_of(db, study) is None


def test_release_lets_the_next_driver_in_at_once(storage, study):
    with StudyLease(storage, study, timeout=60.0):
        pass
    nxt = StudyLease(storage, study, timeout=60.0)
    assert nxt.acquire() is None  # a plain acquisition, no takeover, no waiting
    nxt.release()


def test_one_winner_when_drivers_race_for_a_dead_lease(storage, study, db):
    insert_stale(db, study, silent_for=30.0)
    racers = [StudyLease(storage, study, timeout=1.0) for _ in range(4)]
    start = threading.Barrier(len(racers))
    outcomes: dict[int, object] = {}

    def race(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = racers[i].acquire()
        except LeaseHeld as err:
            outcomes[i] = err

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(racers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        winners = [i for i, o in outcomes.items() if isinstance(o, LeaseHolder)]
        assert len(outcomes) == len(racers) and len(winners) == 1, outcomes
        assert all(isinstance(o, LeaseHeld) for i, o in outcomes.items() if i != winners[0])
        assert row_of(db, study).holder == racers[winners[0]].holder
    finally:
        for r in racers:
            r.release()


def test_lost_lease_is_noticed(storage, study, db, caplog):
    noticed = threading.Event()
    victim = StudyLease(storage, study, timeout=60.0, heartbeat_every=30.0, on_lost=noticed.set)
    victim.acquire()
    with db.begin() as conn:  # the victim's network was down past the timeout (as another driver judged it)...
        conn.execute(update(leases).where(leases.c.study_name == study).values(heartbeat=time.time() - 100))
    thief = StudyLease(storage, study, timeout=1.0)
    assert thief.acquire().holder == victim.holder  # ...and another driver took the study over
    with caplog.at_level(logging.WARNING, logger="search.store.lease"):
        assert victim.beat() is False  # the victim's next heartbeat finds the row gone
        assert victim.beat() is False
    assert victim.lost and not victim.held and noticed.is_set()
    assert len([r for r in caplog.records if "lost the lease" in r.message]) == 1  # warned once
    victim.release()
    assert row_of(db, study).holder == thief.holder  # releasing a lost lease leaves the new holder's row
    thief.release()


def test_heartbeat_thread_notices_a_takeover(storage, study, db):
    victim = StudyLease(storage, study, timeout=5.0, heartbeat_every=0.1)
    victim.acquire()
    with db.begin() as conn:  # what a takeover writes
        conn.execute(update(leases).where(leases.c.study_name == study).values(holder="elsewhere:1:00000000"))
    assert wait_for(lambda: victim.lost, 3)
    victim.release()
    assert row_of(db, study).holder == "elsewhere:1:00000000"


def test_heartbeat_survives_database_errors(storage, study, db, caplog):
    lease = StudyLease(storage, study, timeout=30.0, heartbeat_every=0.1)
    lease.acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="search.store.lease"):
            with db.begin() as conn:  # every heartbeat now fails with a real database error
                conn.execute(text(f"ALTER TABLE {TABLE_NAME} RENAME TO {TABLE_NAME}_away"))
            time.sleep(0.6)
            with db.begin() as conn:
                conn.execute(text(f"ALTER TABLE {TABLE_NAME}_away RENAME TO {TABLE_NAME}"))
            assert wait_for(lambda: any("works again" in r.message for r in caplog.records), 3)
        failures = [r for r in caplog.records if "heartbeat for study" in r.message and "failed" in r.message]
        assert len(failures) == 1  # one warning per outage, not one per tick
        assert lease.held and lease._thread is not None and lease._thread.is_alive()
        assert time.time() - row_of(db, study).heartbeat < 1
    finally:
        lease.release()


def test_timeout_settings(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("MEMSEARCH_LEASE_TIMEOUT", "12")
    lease = StudyLease(url, "s")
    assert (lease.timeout, lease.heartbeat_every) == (12.0, 2.0)
    monkeypatch.setenv("MEMSEARCH_LEASE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MEMSEARCH_LEASE_TIMEOUT"):
        StudyLease(url, "s")
    with pytest.raises(ValueError, match="shorter than"):
        StudyLease(url, "s", timeout=1.0, heartbeat_every=1.0)
    assert safe_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
