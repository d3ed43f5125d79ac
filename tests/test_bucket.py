"""A study in a bucket: a real S3-compatible server (moto, authentication on), a two-node Ray cluster
whose nodes run from different working directories, and nothing of the study on any local disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from trainables.storage import LocationError
from trainables.opening import open_location
from tests.conftest import assert_clean_error, run_cli
from tests.postgres import postgres_url  # noqa: F401 - pytest fixture
from tests.s3 import s3_server  # noqa: F401 - pytest fixture
from tests.test_cluster import local_cluster

STUDY_FILES = ("study.json", "summary.json", "trials.parquet", "epochs.parquet", "greedy_state.json",
               "val_data.npz", "latest.pt", "previous.pt", "best.pt", "predictions.npz")


def test_bad_bucket_inputs_get_one_message_and_touch_nothing(s3_server, postgres_url, monkeypatch, tmp_path):  # noqa: F811
    s3 = s3_server
    s3.client().put_object(Bucket=s3.bucket, Key="kept/untouched.txt", Body=b"mine")
    for name, value in s3.credentials().items():
        monkeypatch.setenv(name, value)
    silent = __import__("socket").socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    cases = {
        "foo://bucket/runs": "Unrecognized filesystem type",
        f"s3://KEY:SECRET@{s3.bucket}/runs": "carries credentials in the URI",
        s3.uri("runs", bucket="no-such-bucket"): "bucket 'no-such-bucket' does not exist",
        s3.uri("runs").replace("scheme=http", "scheme=http&colour=blue"): "unknown S3 option(s) colour",
        s3.uri("runs").replace(s3.endpoint, f"127.0.0.1:{silent.getsockname()[1]}"): "did not answer within 5 s",
    }
    for uri, needle in cases.items():
        with pytest.raises(LocationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            open_location(uri)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(LocationError, match="access to bucket 'memsearch-test' was refused"):
        open_location(s3.uri("runs"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(LocationError, match="No credentials were found in the environment"):
        open_location(s3.uri("runs"))
    silent.close()
    # From the command line: one message, before Ray starts, and a bucket study needs a database for its lease.
    common = ["search.run", "--strategy", "greedy", "--model", "autoencoder", "--preset", "smoke", "--study", "bad"]
    assert_clean_error(run_cli(*common, "--runs-dir", s3.uri("runs", bucket="no-such-bucket"),
                               "--storage", postgres_url, env=s3.env(), timeout=60),
                       "bucket 'no-such-bucket' does not exist")
    assert_clean_error(run_cli(*common, "--runs-dir", s3.uri("runs"), "--storage", "postgresql://nobody@127.0.0.1:1/none",
                               env=s3.env(), timeout=60), "cannot reach the database of --storage")
    assert_clean_error(run_cli(*common, "--runs-dir", s3.uri("runs"), env=s3.env(), timeout=60),
                       "is a bucket, which has no file lock", "give --storage with a database URL")
    assert s3.keys("") == ["kept/untouched.txt"]


def test_a_trial_folder_in_a_bucket_keeps_its_fallback(s3_server, monkeypatch):
    from trainables.checkpoints import TrialStore

    for name, value in s3_server.credentials().items():
        monkeypatch.setenv(name, value)
    store = TrialStore(open_location(s3_server.uri("unit/trials")) / "abc")
    with store.locked():
        store.save_latest({"format": 2, "epoch": 1})
        store.save_latest({"format": 2, "epoch": 2})
    assert store.load_latest()["epoch"] == 2
    assert s3_server.keys("unit/trials/abc/") == ["unit/trials/abc/latest.pt", "unit/trials/abc/previous.pt"]
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="unit/trials/abc/latest.pt", Body=b"cut in ha")
    fresh = TrialStore(open_location(s3_server.uri("unit/trials")) / "abc")
    assert fresh.load_latest()["epoch"] == 1
    assert "latest.pt is unreadable" in fresh.notice and "resumed from previous.pt (epoch 1)" in fresh.notice


def _search(runs: str, storage: str, data: str, study: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "--strategy", "greedy", "--model", "autoencoder", "--preset", "smoke",
            "--final-top-k", "1", "--final-seeds", "1", "--scheduler", "none", "--max-concurrent", "2",
            "--runs-dir", runs, "--storage", storage, "--data", data, "--study", study]


def _table(s3, study: str, name: str) -> pd.DataFrame:
    from search.store.study import StudyStore

    return StudyStore(open_location(s3.uri("runs")), study).read_table(name).to_pandas()


def _local_study_files(root: Path, since: float) -> list[str]:
    return [str(path) for path in root.rglob("*")
            if path.name in STUDY_FILES and path.is_file() and path.stat().st_mtime >= since]


def test_a_bucket_study_runs_on_two_nodes_without_a_shared_disk(s3_server, postgres_url, tiny_data_dir, tmp_path,
                                                                monkeypatch, request):
    s3 = s3_server
    started = time.time()
    for name, value in s3.credentials().items():
        monkeypatch.setenv(name, value)
    open_location(s3.uri("data"))  # the data in the bucket too: the driver fetches it, no node needs a copy
    import pyarrow.fs as pafs

    data = open_location(s3.uri("data/tiny"))
    pafs.copy_files(str(tiny_data_dir), data.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=data.fs)
    folders = {name: tmp_path / name for name in ("head", "worker", "driver")}
    for folder in folders.values():
        folder.mkdir()
    # Every process of the test writes its temporary files and Ray's results folder in the test's own folders
    # (TMPDIR a short one of its own: Ray's socket paths must stay under 108 bytes), which are then the one place
    # checked for study files that should have gone to the bucket.
    scratch = Path(tempfile.mkdtemp(prefix="mb-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    (tmp_path / "home").mkdir()
    env = {**s3.env(), "RAY_AUTH_MODE": "disabled", "TMPDIR": str(scratch), "HOME": str(tmp_path / "home")}
    with local_cluster(env, (folders["head"], folders["worker"])) as (address, _):
        runs = s3.uri("runs")

        def command(study: str) -> list[str]:
            return [*_search(runs, postgres_url, s3.uri("data/tiny"), study), "--address", address]

        reference = subprocess.run(command("reference"), cwd=folders["driver"], env=env, capture_output=True,
                                   text=True, timeout=300)
        assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-3000:]
        # Two nodes: the first line's epoch is measured as a Ray task with a trial's resources, not in the driver
        assert "one epoch of the study default measured on a Ray worker at" in reference.stdout, reference.stdout[:3000]
        # The same study, its driver SIGKILLed once two trials have finished, then resumed to the end.
        driver = subprocess.Popen(command("killed"), cwd=folders["driver"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        seen = []
        for line in driver.stdout:
            seen.append(line)
            if line.startswith("[  2]"):
                os.killpg(driver.pid, signal.SIGKILL)
                break
        driver.wait(60)
        assert driver.returncode == -signal.SIGKILL, "".join(seen[-30:])
        resumed = subprocess.run(command("killed"), cwd=folders["driver"], env=env, capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]

    ref, killed = (_table(s3, study, "trials.parquet") for study in ("reference", "killed"))
    columns = ["trial_id", "status", "epochs_run", "best_val_l1"]
    pd.testing.assert_frame_equal(ref.sort_values("trial_id")[columns].reset_index(drop=True),
                                  killed.sort_values("trial_id")[columns].reset_index(drop=True))
    ref_epochs, killed_epochs = (_table(s3, study, "epochs.parquet").sort_values(["trial_id", "epoch"])
                                 for study in ("reference", "killed"))
    assert ref_epochs["val_l1"].tolist() == killed_epochs["val_l1"].tolist()
    assert pd.concat([ref, killed])["node_id"].nunique() == 2, "the trials ran on one node only"
    keys = s3.keys("runs/killed/")
    assert "runs/killed/final.parquet" in keys and any(k.endswith("/best.pt") for k in keys)
    assert any(k.startswith("runs/killed/ray/") for k in keys), "Ray Tune's files are not in the bucket"
    assert not _local_study_files(tmp_path, started) + _local_study_files(scratch, started)

    from dashboards.build import build
    from search.predict import predict_images

    page = build([s3.uri("runs/killed"), s3.uri("runs/reference")], tmp_path / "report.html")
    assert "killed" in page.read_text()
    images = sorted((tiny_data_dir / "images").iterdir())[:3]
    written, errors = predict_images(s3.uri("runs/killed"), images, tmp_path / "maps", progress=False)
    assert (written, errors) == (3, [])


def test_a_bucket_that_stops_answering_for_30_s_costs_a_line_not_the_search(s3_server, postgres_url,  # noqa: F811
                                                                             monkeypatch):
    """The S3 endpoint goes away for 30 s while trials run (a proxy in front of moto refuses and resets every
    connection, moto keeps its objects): the driver and the trials wait with a line and go on; the study ends equal
    to one the outage did not touch, with nothing half-written."""
    import threading

    from tests.proxy import Outage

    s3 = s3_server
    for name, value in s3.credentials().items():
        monkeypatch.setenv(name, value)
    proxy = Outage(s3.port)
    runs = s3.uri("outage").replace(s3.endpoint, f"127.0.0.1:{proxy.port}")
    env = {**s3.env(), "RAY_AUTH_MODE": "disabled"}

    def command(study: str) -> list[str]:
        return [sys.executable, "-m", "search.run", "--strategy", "greedy", "--model", "autoencoder", "--preset", "smoke",
                "--final-top-k", "0", "--scheduler", "none", "--epochs", "3", "--runs-dir", runs,
                "--storage", postgres_url, "--study", study, "--store-retry", "120"]

    try:
        calm = subprocess.run(command("calm"), env=env, capture_output=True, text=True, timeout=300)
        assert calm.returncode == 0, calm.stdout[-2000:] + calm.stderr[-3000:]
        driver = subprocess.Popen(command("outage"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        said, back = [], threading.Timer(30.0, proxy.up)
        for line in driver.stdout:
            said.append(line)
            if line.startswith("[  1]") and not back.is_alive() and not back.finished.is_set():
                proxy.down()
                back.start()
        driver.wait(timeout=300)
        back.join()
        out = "".join(said)
        assert driver.returncode == 0, out[-2000:] + driver.stderr.read()[-3000:]
        assert "bucket: " in out and "retrying for up to 120 s" in out and "answered again after" in out, out
    finally:
        proxy.close()
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass
    from search.store.study import StudyStore

    def table(study: str, name: str) -> pd.DataFrame:
        return StudyStore(open_location(s3.uri("outage")), study).read_table(name).to_pandas()

    for name, key, columns in (("trials.parquet", ["trial_id"], ["trial_id", "status", "epochs_run", "best_val_l1"]),
                               ("epochs.parquet", ["trial_id", "epoch"], ["trial_id", "epoch", "val_l1"])):
        calm_rows, outage_rows = (table(s, name).sort_values(key)[columns].reset_index(drop=True)
                                  for s in ("calm", "outage"))
        pd.testing.assert_frame_equal(calm_rows, outage_rows)
