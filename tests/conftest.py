"""Shared fixtures: a tiny synthetic dataset on disk, and one local Ray for the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
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
