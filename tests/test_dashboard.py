"""Dashboards from real searches, checked in a real headless Chromium; Parquet round trips."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from tests.conftest import ROOT, assert_clean_error, run_cli
from tests.test_search import greedy_study, runs_dir, tpe_study  # noqa: F401 - shared session fixtures

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]


def chromium_path() -> str:
    """Debian's Chromium; installed here when missing (root with apt), as the test set-up."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True)
        path = shutil.which("chromium")
        if path:
            return path
    pytest.fail("headless Chromium is needed for the dashboard test: apt-get install chromium")


@pytest.fixture(scope="module")
def report(greedy_study, tpe_study, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = run_cli("dashboards.build", str(greedy_study), str(tpe_study), "-o", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def test_report_has_every_section_with_data(report, greedy_study):  # noqa: F811
    text = report.read_text()
    for anchor in ("final-results", "l1-comparison", "search-progress", "learning-curves", "greedy-path", "hyperparameter-effects",
                   "galleries"):
        section = text.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]
        assert 'class="empty"' not in section or anchor == "hyperparameter-effects", anchor
        assert "plotly-graph-div" in section or anchor == "galleries", anchor
    assert text.count('data-kind="best"') == 2 and "most informative" in text
    assert "all-black map" in text and "mean training map" in text
    final = text.split('<section id="final-results">', 1)[1].split("</section>", 1)[0]
    assert "tpe-ae #1" in final and "error_y" in final and "(test)" in final  # error bars, test baselines
    assert "<script src=" not in text and "<link" not in text  # self-contained: opens offline
    assert "parallel coordinates" in text and "parameter importance" in text
    # Rebuilding gives the same file.
    first, second = report.with_name("first.html"), report.with_name("second.html")
    for out in (first, second):
        assert run_cli("dashboards.build", str(greedy_study), "-o", str(out), timeout=120).returncode == 0
    assert first.read_bytes() == second.read_bytes()


def test_report_renders_in_headless_chromium_without_errors(report):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    shot = report.with_name("report.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(report.as_uri())
        page.wait_for_selector(".plotly-graph-div .main-svg")
        plots = page.locator(".plotly-graph-div").count()
        # The answer comes first: per study the configuration to use and its headline numbers.
        first_section = page.evaluate("document.querySelector('section').id")
        answer = page.locator("#answer").inner_text()
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert first_section == "answer"
    tpe_row = next(line for line in answer.splitlines() if line.startswith("tpe-ae"))
    assert "test L1" in tpe_row and "±" in tpe_row and "x all-black" in tpe_row and "2 seeds" in tpe_row
    greedy_row = next(line for line in answer.splitlines() if line.startswith("greedy-ref"))
    assert "no test numbers" in greedy_row and "l1_weight=" in greedy_row
    assert plots >= 6
    assert shot.stat().st_size > 50_000
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_a_running_study_renders(greedy_study, tmp_path):  # noqa: F811
    partial = tmp_path / "partial"
    shutil.copytree(greedy_study, partial)
    trials = pd.read_parquet(partial / "trials.parquet")
    trials.loc[trials.index[-2:], "status"] = "running"
    trials.loc[trials.index[-2:], "ended_at"] = pd.NaT
    trials.to_parquet(partial / "trials.parquet")
    (partial / "greedy_state.json").unlink()
    out = tmp_path / "r.html"
    result = run_cli("dashboards.build", str(partial), "-o", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'id="galleries"' in out.read_text()


def test_builder_refuses_a_folder_that_is_not_a_study(tmp_path):
    result = run_cli("dashboards.build", str(tmp_path), "-o", str(tmp_path / "x.html"), timeout=60)
    assert_clean_error(result, "not a study folder")


def test_parquet_round_trips_with_documented_dtypes(greedy_study):  # noqa: F811
    import pyarrow.parquet as pq

    from search.results import EPOCH_COLUMNS, TRIAL_COLUMNS

    trials = pq.read_table(greedy_study / "trials.parquet")
    for name, dtype in TRIAL_COLUMNS:
        assert trials.schema.field(name).type == dtype, name
    epochs = pq.read_table(greedy_study / "epochs.parquet")
    assert epochs.schema == pa.schema(EPOCH_COLUMNS)
    frame = trials.to_pandas()
    round_trip = pa.Table.from_pandas(frame, schema=trials.schema, preserve_index=False)
    assert round_trip.equals(trials)


WRITER = """
import sys, pyarrow as pa
from pathlib import Path
from search.results import write_table_atomic
schema = pa.schema([("i", pa.int64()), ("payload", pa.string())])
path = Path(sys.argv[1])
n = 0
while True:
    n += 1
    write_table_atomic([{"i": n, "payload": "x" * 200} for _ in range(20000)], schema, path)
    print(n, flush=True)
"""


def test_a_reader_never_sees_a_half_written_file_even_when_the_writer_is_killed(tmp_path):
    import pyarrow.parquet as pq

    target = tmp_path / "t.parquet"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one whole version exists
        seen = set()
        deadline = time.monotonic() + 2.0 + attempt * 0.37
        while time.monotonic() < deadline:
            table = pq.read_table(target)  # must never raise, whatever the writer is doing
            assert table.num_rows == 20000
            seen.add(table.column("i")[0].as_py())
        os.kill(proc.pid, signal.SIGKILL)  # most likely mid-write: each version takes a while
        proc.wait()
        assert pq.read_table(target).num_rows == 20000
        assert len(seen) >= 1


def test_best_gallery_skips_all_black_truths():
    """An all-black map predicted black has the lowest L1 and says nothing: it is not a 'best' example."""
    import numpy as np

    from dashboards.build import gallery_selection

    truth = np.zeros((6, 3, 8, 8), np.uint8)
    truth[3:, 0, :4] = 200  # images 3, 4, 5 have something to remember
    per_image = np.array([0.001, 0.002, 0.003, 0.05, 0.02, 0.09])
    chosen = gallery_selection(per_image, truth, k=2)
    assert chosen["best"] == [4, 3]
    assert chosen["worst"] == [5, 3]
