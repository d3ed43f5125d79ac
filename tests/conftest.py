"""Shared fixtures: a tiny synthetic dataset on disk, and one local Ray for the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Under pytest-xdist (``-n 2``, pyproject's addopts) each test file goes whole to one worker, so its module fixtures
# are built once; files that share session fixtures (the studies of test_search, one PostgreSQL server) share one.
SHARED_WORKER = {"test_dashboard": "test_search", "test_lease": "postgres", "test_postgres_search": "postgres"}


@pytest.hookimpl(optionalhook=True)  # a known hook only where pytest-xdist is installed
def pytest_xdist_make_scheduler(config, log):
    """xdist's per-file scheduling with SHARED_WORKER's files joined (its --dist loadgroup sets the group through
    ``item._nodeid``, which pytest 9.2's items no longer read)."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtures(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            stem = Path(nodeid.split("::", 1)[0]).stem
            return SHARED_WORKER.get(stem, stem)  # a file's group is its name, or the name of the file it shares with

    return SharedFixtures(config, log)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated datasets go to a temporary cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MEMSEARCH_CACHE")
    os.environ["MEMSEARCH_CACHE"] = str(cache)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    yield cache
    if old is None:
        os.environ.pop("MEMSEARCH_CACHE", None)
    else:
        os.environ["MEMSEARCH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    from trainables.synthetic import SyntheticSpec, generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", SyntheticSpec(n_train=48, n_val=16, seed=3, n_test=16))


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir):
    from trainables.data import load_dataset

    return load_dataset(tiny_data_dir)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the tests that need it; shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` as a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=full_env)


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """One clear message, a non-zero exit and no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert result.stderr.strip().startswith("error:"), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
