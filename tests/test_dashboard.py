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
    answer = text.split('<section id="answer">', 1)[1].split("</section>", 1)[0]
    assert answer.count("o configuration beats the all-black map on this data") == 4  # per study: warning and cell
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
    # Smoke models do not beat the all-black map: the answer says so first, and in place of each recommendation.
    assert answer.splitlines()[2].startswith("No configuration beats the all-black map on this data in study greedy-ref")
    assert "no configuration beats the all-black map on this data (the best found:" in tpe_row
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

    from search.store.results import TRIAL_COLUMNS, epoch_columns

    trials = pq.read_table(greedy_study / "trials.parquet")
    for name, dtype in TRIAL_COLUMNS:
        assert trials.schema.field(name).type == dtype, name
    epochs = pq.read_table(greedy_study / "epochs.parquet")
    assert epochs.schema == pa.schema(epoch_columns())
    frame = trials.to_pandas()
    round_trip = pa.Table.from_pandas(frame, schema=trials.schema, preserve_index=False)
    assert round_trip.equals(trials)


WRITER = """
import sys, pyarrow as pa
from pathlib import Path
from search.store.study import StudyStore
schema = pa.schema([("i", pa.int64()), ("payload", pa.string())])
path = Path(sys.argv[1])
n = 0
while True:
    n += 1
    StudyStore.at(path.parent).write_table(path.name, [{"i": n, "payload": "x" * 200} for _ in range(20000)], schema)
    print(n, flush=True)
"""


def test_a_reader_never_sees_a_half_written_file_even_when_the_writer_is_killed(tmp_path):
    import pyarrow.parquet as pq

    target = tmp_path / "t.parquet"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one whole version exists
        seen = set()
        reads = 0
        # Read while the writer replaces the file: until the reader has seen it change twice, then a little
        # longer (a different moment each attempt), so the kill lands while versions are being written.
        while len(seen) < 3 or reads % (5 + attempt * 3):
            table = pq.read_table(target)  # must never raise, whatever the writer is doing
            assert table.num_rows == 20000
            seen.add(table.column("i")[0].as_py())
            reads += 1
            assert proc.poll() is None and reads < 20000, "the writer stopped, or stopped writing new versions"
        os.kill(proc.pid, signal.SIGKILL)  # most likely mid-write: each version takes a while
        proc.wait()
        assert pq.read_table(target).num_rows == 20000


def test_best_gallery_skips_all_black_truths():
    """An all-black map predicted black has the lowest L1 and says nothing: it is not a 'best' example."""
    import numpy as np

    from dashboards.galleries import gallery_selection

    truth = np.zeros((6, 3, 8, 8), np.uint8)
    truth[3:, 0, :4] = 200  # images 3, 4, 5 have something to remember
    per_image = np.array([0.001, 0.002, 0.003, 0.05, 0.02, 0.09])
    chosen = gallery_selection(per_image, truth, k=2)
    assert chosen["best"] == [4, 3]
    assert chosen["worst"] == [5, 3]


def _fake_trials(rows: list[tuple[str, str, float | None, int, int]]) -> pd.DataFrame:
    """(trial_id, status, best_val_l1, epochs_run, minute it ended) rows as a trials table."""
    start = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame({
        "trial_id": [r[0] for r in rows], "status": [r[1] for r in rows],
        "best_val_l1": pd.Series([r[2] for r in rows], dtype="float64"),
        "epochs_run": pd.Series([r[3] for r in rows], dtype="int64"),
        "started_at": [start] * len(rows),
        "ended_at": [start + pd.Timedelta(minutes=r[4]) for r in rows],
    })


def test_efficiency_curve_is_a_step_function_that_stops_at_the_last_epoch():
    import numpy as np

    from dashboards.efficiency import best_so_far_by_epochs, best_so_far_on_grid, efficiency_band

    # Listed out of order on purpose: the curve follows the order trials ended in.
    trials = _fake_trials([("c", "completed", 0.30, 4, 3), ("a", "errored", None, 2, 1),
                           ("b", "stopped", 0.50, 3, 2), ("d", "diverged", 0.01, 1, 4),
                           ("e", "completed", 0.40, 2, 5)])
    spent, best = best_so_far_by_epochs(trials)
    assert spent.tolist() == [2, 5, 9, 10, 12]
    assert np.isnan(best[0]) and best[1:].tolist() == [0.50, 0.30, 0.30, 0.30]  # a diverged trial's L1 is not a result
    grid = np.array([0, 2, 4.9, 5, 8, 9, 12, 13])
    curve = best_so_far_on_grid(trials, grid)
    assert np.isnan(curve[:3]).all()  # nothing finished within 4.9 epochs
    assert curve[3:7].tolist() == [0.50, 0.50, 0.30, 0.30]
    assert np.isnan(curve[7])  # beyond the study's 12 epochs: no value, not the last one carried on
    assert np.isnan(best_so_far_on_grid(_fake_trials([]), grid)).all()

    # A second, shorter study (6 epochs): the band beyond epoch 6 is the first study alone.
    short = _fake_trials([("x", "completed", 0.20, 1, 1), ("y", "completed", 0.10, 5, 2)])
    band = efficiency_band([curve, best_so_far_on_grid(short, grid)])
    assert band["n"].tolist() == [0, 1, 1, 2, 1, 1, 1, 0]
    assert band["low"][1] == band["high"][1] == 0.20  # epoch 2: only the short study has a finished trial
    assert band["low"][3] == 0.20 and band["high"][3] == 0.50 and band["median"][3] == pytest.approx(0.35)
    assert band["low"][4] == band["high"][4] == band["median"][4] == 0.50  # epoch 8: the short one ended at 6
    assert np.isnan(band["median"][[0, 7]]).all()


def _fake_study(folder: Path, strategy: str, seed: int, family: str = "ae") -> Path:
    import json

    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps({
        "study": folder.name, "family": family, "strategy": strategy, "domain": "grid", "seed": seed,
        "baselines": {"black_l1": 0.9, "mean_map_l1": 0.6}}))
    rows = [(f"t{i}", "completed" if i % 3 else "stopped", 0.5 - 0.03 * i - 0.01 * seed, 2 + (i + seed) % 3, i)
            for i in range(6 + seed)]
    _fake_trials(rows).assign(hp_lr=[0.1, 0.01] * 3 + [0.1] * seed).to_parquet(folder / "trials.parquet")
    return folder


def test_efficiency_section_draws_one_band_per_strategy(tmp_path):
    import json

    from dashboards.build import build

    folders = [_fake_study(tmp_path / f"{strategy}-{seed}", strategy, seed)
               for strategy, seeds in (("tpe", (0, 1, 2)), ("random", (0, 1))) for seed in seeds]
    out = build(folders, tmp_path / "r.html")
    text = out.read_text()
    section = text.split('<section id="efficiency">', 1)[1].split("</section>", 1)[0]
    assert "plotly-graph-div" in section and 'class="empty"' not in section
    spec, _ = json.JSONDecoder().raw_decode(section.split('Plotly.newPlot(', 1)[1].split(",", 1)[1].lstrip())
    medians = sorted(trace["name"] for trace in spec if trace.get("showlegend") is not False)
    assert medians == ["random (2 studies)", "tpe (3 studies)"]
    assert sum(trace.get("fill") == "tonexty" for trace in spec) == 2  # one band each
    assert all(trace["line"]["shape"] == "hv" for trace in spec)
    assert "all-black map" in section and "mean training map" in section
    assert text.index('id="search-progress"') < text.index('id="efficiency"') < text.index('id="learning-curves"')
    # The same folders give the same file.
    assert build(folders, tmp_path / "again.html").read_bytes() == out.read_bytes()

    alone = build(folders[:1] + [_fake_study(tmp_path / "gan", "tpe", 0, family="gan")], tmp_path / "one.html")
    section = alone.read_text().split('<section id="efficiency">', 1)[1].split("</section>", 1)[0]
    assert 'class="empty"' in section and "several studies of one model family" in section and "--seed" in section


def test_studies_on_other_data_each_get_their_own_baselines_named(tmp_path):
    """Two studies on different data: each study's baselines are drawn and named with it, not the first one's."""
    import json

    from dashboards.build import build

    same = [_fake_study(tmp_path / name, "tpe", seed) for name, seed in (("a", 0), ("b", 1))]
    text = build(same, tmp_path / "same.html").read_text()
    assert "dotted: all-black map 0.9000; dashed: mean training map 0.6000." in text  # one data set: unnamed
    other = _fake_study(tmp_path / "other", "tpe", 2)
    record = json.loads((other / "study.json").read_text())
    (other / "study.json").write_text(json.dumps({**record, "baselines": {"black_l1": 0.4, "mean_map_l1": 0.3}}))
    text = build([same[0], other], tmp_path / "mixed.html").read_text()
    assert "all-black map 0.4000 (other)" in text.split('<p class="legend">Reference lines', 1)[1].split("</p>")[0]
    assert "all-black map 0.9000 (a)" in text and "all-black map 0.4000 (other)" in text
    assert "mean training map 0.3000 (other)" in text


def test_trials_whose_train_val_gap_keeps_growing_after_their_best_epoch_are_flagged():
    from dashboards.trials import overfitting_trials

    rows = []
    for epoch, (train, val) in enumerate([(0.20, 0.22), (0.15, 0.18), (0.10, 0.19), (0.06, 0.20)], start=1):
        rows.append({"trial_id": "fits", "epoch": epoch, "train_l1": train, "val_l1": val})  # gap .03 -> .09 -> .14
    for epoch, (train, val) in enumerate([(0.20, 0.22), (0.15, 0.18), (0.14, 0.19), (0.14, 0.185)], start=1):
        rows.append({"trial_id": "steady", "epoch": epoch, "train_l1": train, "val_l1": val})  # gap shrinks at the end
    for epoch, (train, val) in enumerate([(0.20, 0.22), (0.15, 0.18), (0.10, 0.19)], start=1):
        rows.append({"trial_id": "short", "epoch": epoch, "train_l1": train, "val_l1": val})  # one epoch after its best
    import pandas as pd

    assert overfitting_trials(pd.DataFrame(rows), ["fits", "steady", "short"]) == ["fits"]


def test_tensorboard_reads_a_studys_event_files(greedy_study):  # noqa: F811
    """docs/results.md's `tensorboard --logdir runs/<study>/ray`: TensorBoard's own reader opens the event files Ray wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = pd.read_parquet(greedy_study / "epochs.parquet")
    trials = pd.read_parquet(greedy_study / "trials.parquet").set_index("ray_trial_id")
    files = sorted((greedy_study / "ray" / "segment-0").glob("*/events.out.tfevents.*"))
    assert len(files) == len(trials)
    for events in files:
        reader = EventAccumulator(str(events))
        reader.Reload()
        ray_id = next(t for t in trials.index if t in events.parent.name)
        mine = epochs[epochs["trial_id"] == trials.loc[ray_id, "trial_id"]].sort_values("epoch")
        scalars = reader.Scalars("ray/tune/val_l1")
        assert [s.step for s in scalars] == mine["epoch"].tolist()
        assert [s.value for s in scalars] == pytest.approx(mine["val_l1"].tolist(), rel=1e-6)


def test_optuna_dashboard_serves_a_studys_optuna_storage(tpe_study):  # noqa: F811
    """docs/results.md's `optuna-dashboard sqlite:///runs/<study>/optuna.db`: its server answers for the study."""
    import json
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")),
                               f"sqlite:///{tpe_study / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    answer = json.loads(response.read())
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    assert [s["study_name"] for s in answer["study_summaries"]] == ["tpe-ae"]
