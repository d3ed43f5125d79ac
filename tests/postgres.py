"""A real, throwaway PostgreSQL server for tests: ``from tests.postgres import postgres_url``.

The fixture ``postgres_url`` (session scope) runs ``initdb`` into a fresh temporary folder,
starts the server on a free loopback port with trust authentication, creates the database
``memsearch_test`` and yields ``postgresql+psycopg2://postgres@127.0.0.1:PORT/memsearch_test``;
at the end of the session it stops the server (``-m immediate``: nothing to keep) and deletes
the folder. ``postgres_server`` is the server itself: ``postgres_server.database("other")``
is the URL of another database, created empty on first use, for tests that need their own.

No PostgreSQL installed (``initdb``/``pg_ctl`` in ``/usr/lib/postgresql/*/bin`` or on PATH)
or no ``psycopg2``: the tests are skipped, unless ``MEMSEARCH_REQUIRE_POSTGRES`` is set (CI
sets it), which makes that a failure: CI must not pass by silently testing nothing.

PostgreSQL refuses to run as root; as root, initdb and pg_ctl run as the ``postgres`` system
user through ``runuser``, in a folder under /tmp owned by that user (pytest's own tmp folders
are 0700 root's and out of its reach).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "MEMSEARCH_REQUIRE_POSTGRES"
TEST_DATABASE = "memsearch_test"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def _unavailable(why: str) -> None:
    """Skip locally, fail where PostgreSQL is required."""
    if _required():
        pytest.fail(f"{why} ({REQUIRE_ENV} is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(f"{why}; set {REQUIRE_ENV}=1 to make this an error")


def find_tools() -> tuple[Path, Path, Path] | None:
    """(initdb, pg_ctl, postgres) of the newest PostgreSQL in /usr/lib/postgresql, else from PATH."""
    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d.parent.name)) or (0,)

    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if (initdb := shutil.which("initdb")) is not None:
        dirs.append(Path(initdb).resolve().parent)  # Debian puts symlinks on PATH; the server sits beside
    for bin_dir in dirs:
        tools = bin_dir / "initdb", bin_dir / "pg_ctl", bin_dir / "postgres"
        if all(t.is_file() for t in tools):
            return tools
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    pg_ctl: Path
    as_user: list[str]
    process: subprocess.Popen[bytes]
    postgres: Path = Path("postgres")
    databases: set[str] = field(default_factory=set)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")  # CREATE DATABASE can't run in a transaction
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def database(self, name: str) -> str:
        """URL of database ``name``, created on first use."""
        if name not in self.databases:
            self.create_database(name)
            self.databases.add(name)
        return self.url(name)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (a fast shutdown: sessions ended, as a restart does), wait ``down_s``, start it again on
        the same data and port."""
        self.stop(mode="fast")
        time.sleep(down_s)
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(_server_command(self.as_user, self.postgres, self.data, self.port, self.root),
                                            cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        if not _wait_ready(self.process, self.port, time.monotonic() + 60):
            raise RuntimeError("PostgreSQL did not start again:\n" + (self.root / "server.log").read_text(errors="replace"))

    def stop(self, mode: str = "immediate") -> None:
        """Shutdown (immediate: SIGQUIT to the postmaster), and reap it: no process outlives the tests."""
        if self.process.poll() is None:
            subprocess.run([*self.as_user, str(self.pg_ctl), "stop", "-D", str(self.data), "-m", mode, "-w"],
                           cwd=self.root, capture_output=True, timeout=60)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}{done.stderr}")


def _wait_ready(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once the server accepts connections; False if it exited (e.g. the port was taken)."""
    import psycopg2

    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:  # not listening yet, or "the database system is starting up"
            time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL did not accept connections on 127.0.0.1:{port} within 60 s")


def _server_command(as_user: list[str], postgres: Path, data: Path, port: int, root: Path) -> list[str]:
    return [*as_user, str(postgres), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
            "-c", f"unix_socket_directories={root}",
            # Throwaway data: durability off makes schema creation and commits fast (a fast stop still saves it).
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]


def start_server() -> PostgresServer:
    """initdb and start a server in a fresh folder under /tmp; the caller must ``stop()`` it and delete ``root``.

    The postmaster runs as our child process (through ``runuser`` as root), not daemonised by
    ``pg_ctl start``: a daemon is re-parented to PID 1, which in some containers never reaps
    it and leaves a zombie ``postgres`` behind after every test session.
    """
    tools = find_tools()
    if tools is None:
        _unavailable("PostgreSQL is not installed (no initdb/pg_ctl/postgres in /usr/lib/postgresql/*/bin or on PATH)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl, postgres = tools
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="memsearch-pg-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        if os.geteuid() == 0:  # postgres refuses root: "cannot be run as root"
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
            os.chown(root, user.pw_uid, user.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        data = root / "data"
        _run([*as_user, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
              "--locale=C", "--no-sync"], root, "initdb")
        with open(root / "server.log", "ab") as log:
            for _ in range(3):  # the free port can be taken between our probe and the server's bind
                port = free_port()
                process = subprocess.Popen(_server_command(as_user, postgres, data, port, root),
                                           cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                if _wait_ready(process, port, time.monotonic() + 60):
                    return PostgresServer(root, port, pg_ctl, as_user, process, postgres)
        raise RuntimeError("PostgreSQL failed to start 3 times:\n" + (root / "server.log").read_text(errors="replace"))
    except BaseException:
        if process is not None and process.poll() is None:
            PostgresServer(root, 0, pg_ctl, as_user, process, postgres).stop()
        shutil.rmtree(root, ignore_errors=True)
        raise


_shared: PostgresServer | None = None


def _session_server(request: pytest.FixtureRequest) -> PostgresServer:
    """One server per test session, whichever fixture (and however many importing modules) asks first.

    A module that imports only ``postgres_url`` does not see ``postgres_server``, so the URL
    fixture cannot simply depend on it by name; and each importing module defines its own
    copy of the fixtures, which must not start a server each.
    """
    global _shared
    if _shared is None:
        server = start_server()

        def stop() -> None:
            global _shared
            _shared = None
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)

        request.addfinalizer(stop)
        _shared = server
    return _shared


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """A running PostgreSQL for the session; stopped and deleted at the end."""
    return _session_server(request)


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """URL of the ``memsearch_test`` database on the session's server (created empty, shared by the session)."""
    return _session_server(request).database(TEST_DATABASE)
