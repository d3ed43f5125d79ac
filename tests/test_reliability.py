"""Failures inside a search: a killed Ray worker, a diverging configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli


def _worker_pids(session: int) -> list[int]:
    """Trial workers of the search started in process session ``session`` only: never another
    search's on the same machine (a user's, or a benchmark running beside the tests)."""
    out = subprocess.run(["pgrep", "-s", str(session), "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_killed_worker_errors_its_trial_and_the_search_goes_on(tmp_path):
    args = [sys.executable, "-m", "search.run", "--runs-dir", str(tmp_path), "--preset", "smoke", "--final-top-k", "0", "--strategy", "random",
            "--model", "autoencoder", "--samples", "2", "--epochs", "60", "--max-concurrent", "1",
            "--max-failures", "0", "--scheduler", "none", "--study", "w"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _worker_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _worker_pids(proc.pid), "no trial worker appeared"
        time.sleep(3)  # let it train a few epochs
        for pid in _worker_pids(proc.pid)[:1]:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    trials = pd.read_parquet(tmp_path / "w" / "trials.parquet")
    assert sorted(trials["status"]) == ["completed", "errored"], trials[["status", "error"]]
    error = trials.loc[trials["status"] == "errored", "error"].iloc[0]
    assert error and len(error) > 20
    assert "errored" in out


def test_a_search_whose_every_trial_errors_exits_1_naming_the_first_error(tmp_path):
    """Every trial's worker dies at its first checkpoint (as when each one is killed for its memory): the summary says
    no trial finished, and the command ends with one line naming the first trial's error and exits 1, so a script or a
    Ray job sees the failure (it exited 0, as a search that selected something)."""
    result = run_cli("search.run", "--runs-dir", str(tmp_path), "--preset", "smoke", "--strategy", "random",
                     "--model", "autoencoder", "--samples", "2", "--epochs", "2", "--max-failures", "0", "--scheduler", "none",
                     "--study", "dead",
                     timeout=240, env={"MEMSEARCH_CRASH_AT": "checkpoint-tmp:1"})
    trials = pd.read_parquet(tmp_path / "dead" / "trials.parquet")
    assert (trials["status"] == "errored").all() and len(trials) == 2, trials[["status", "error"]]
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "no trial has finished yet" in result.stdout and "final:" not in result.stdout
    assert "| best none yet" in result.stdout and "best inf" not in result.stdout  # each trial's line, none finished
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every trial of study dead errored (2 of 2), so the search selected nothing"), last
    from search.runner.console import cut

    ends = [cut(error.strip().splitlines()[-1].strip()) for error in trials["error"]]  # each error's last line, cut
    assert all(ends) and any(end in last for end in ends), (ends, last)
    # each errored trial's line says how its error ends; Ray Tune's traceback and its own list of trial names are not printed
    assert result.stdout.count("      error: ") == 2 and "more in trials.parquet's error column" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr and "Trials did not complete" not in result.stderr, result.stderr[-3000:]
    from dashboards.build import build  # the dashboard's answer says so too, not "no trial has finished yet"

    page = build([tmp_path / "dead"], tmp_path / "report.html").read_text()
    assert "every trial errored (2 of 2" in page and "no trial has finished yet" not in page


def test_a_final_stage_whose_every_run_errors_exits_1_and_the_same_command_retries_it(tmp_path):
    """The search selects, then every final-stage run's worker dies as it measures the test split: the command ends
    with one line naming the first run's error and exits 1 (it exited 0 with nothing measured on test). Run again
    without the fault, the same command keeps the search's trials, re-runs the final stage and exits 0 with test
    numbers."""
    args = ["search.run", "--runs-dir", str(tmp_path), "--preset", "smoke", "--strategy", "random", "--model",
            "autoencoder", "--samples", "1", "--epochs", "2", "--max-failures", "0", "--scheduler", "none",
            "--final-top-k", "1", "--final-seeds", "2", "--study", "lost"]
    result = run_cli(*args, timeout=240, env={"MEMSEARCH_CRASH_AT": "final-test:1"})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    final = pd.read_parquet(tmp_path / "lost" / "final.parquet")
    assert (final["status"] == "errored").all() and len(final) == 2, final[["status", "epochs_run"]]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every final-stage run of study lost errored (2 of 2), so nothing was measured"), last
    assert "Traceback" not in last and "run the same command again" in last and "ends: no error text" not in last
    quoted = last.split("error ends: ", 1)[1].split(" (Ray's error files", 1)[0]  # Ray's paragraph, cut as a trial's
    assert len(quoted) <= 200, quoted
    assert "Traceback" not in result.stderr and result.stdout.count("      error: ") == 2, result.stdout + result.stderr
    for key in final["trial_id"]:  # each run checkpointed its first epoch before it died: the retry starts there
        assert (tmp_path / "lost" / "trials" / key / "latest.pt").exists(), key
    trials = pd.read_parquet(tmp_path / "lost" / "trials.parquet")
    assert (trials["status"] == "completed").all(), trials[["status", "error"]]
    from dashboards.build import build  # the dashboard's answer says why there are no test numbers

    page = build([tmp_path / "lost"], tmp_path / "report.html").read_text()
    assert "every final-stage run errored (2 of 2" in page and "the final stage has not run" not in page

    again = run_cli(*args, timeout=240)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    final = pd.read_parquet(tmp_path / "lost" / "final.parquet")
    assert (final["status"] == "completed").all() and final["test_l1"].notna().all(), final[["status", "test_l1"]]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "lost" / "trials.parquet")[["trial_id", "best_val_l1"]],
                                  trials[["trial_id", "best_val_l1"]])


def test_a_diverging_config_ends_diverged_and_the_block_resolves(tmp_path):
    space = tmp_path / "explode.toml"
    space.write_text("""
family = "autoencoder"
order = ["lr", "norm"]
[fixed]
optimizer = "sgd"
momentum = 0.9
[params.lr]
values = [1e12, 1e13]
default = 1e12
[params.norm]
values = ["none"]
default = "none"
""")
    result = run_cli("search.run", "--runs-dir", str(tmp_path), "--preset", "smoke", "--final-top-k", "0", "--strategy", "greedy",
                     "--model", "autoencoder", "--space", str(space), "--epochs", "3", "--study", "nan", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "nan" / "trials.parquet")
    assert (trials["status"] == "diverged").all() and len(trials) == 2
    assert (trials["epochs_run"] < 3).all()  # ended at once, not retried
    state = json.loads((tmp_path / "nan" / "greedy_state.json").read_text())
    assert state["finished"] and state["blocks"][0]["adopted"] == 1e12  # a bad result, still a result
    assert "2 diverged" in result.stdout


def test_a_trial_that_errors_before_it_starts_is_recorded_with_its_config(tmp_path):
    """Ray can report a trial failed before its start was reported (its worker died as the trial was handed to it):
    the row still says what the trial was, so the study can be read and the dashboard can draw it."""
    from types import SimpleNamespace

    from search.runner.recording import ResultsCallback
    from search.store.results import ResultsStore, TrialIdentity
    from search.store.study import StudyStore

    store = StudyStore(tmp_path, "s")
    store.create()
    results = ResultsStore(store, strategy="random", family="autoencoder", hp_kinds={"lr": "float"})
    identity = TrialIdentity(full_config=dict, key_of=lambda c: f"key-{c['lr']}", hyperparameters=lambda c: {"lr": c["lr"]})
    callback = ResultsCallback(results, identity, segment=3, epochs_planned=6)
    trial = SimpleNamespace(trial_id="ray-1", config={"lr": 0.5}, error_file=None, get_error=lambda: "worker died")
    callback.on_trial_error(0, [], trial)
    row = results.trials["key-0.5"]
    assert (row["status"], row["segment"], row["error"]) == ("errored", 3, "worker died")
    assert '"lr": 0.5' in row["config_json"] and row["hp_lr"] == 0.5


def test_a_driver_killed_after_asha_stopped_a_trial_keeps_its_last_epoch(tmp_path):
    """ASHA stops a trial after its epoch 2; the trial's checkpoint is paced and holds epoch 1 only; the driver is
    killed after the searcher recorded the end and before the results callback did. The epoch Ray marked done was
    flushed before the searcher heard of it, so the resumed study records the trial as stopped after 2 epochs,
    both epochs in epochs.parquet, as an uninterrupted run would."""
    from search.runner.reconcile import reconcile
    from search.runner.recording import ResultsCallback
    from search.store.results import ResultsStore, TrialIdentity
    from search.store.study import StudyStore
    from search.strategies.base import SearcherRecord
    from trainables.checkpoints import CHECKPOINT_FORMAT

    store = StudyStore(tmp_path, "s")
    store.create()
    identity = TrialIdentity(full_config=dict, key_of=lambda c: f"key-{c['lr']}", hyperparameters=lambda c: {})
    results = ResultsStore(store, strategy="tpe", family="autoencoder", hp_kinds={})
    callback = ResultsCallback(results, identity, segment=0, epochs_planned=4, flush_seconds=3600.0)
    trial = SimpleNamespace(trial_id="ray-1", config={"lr": 0.5})
    rows = [{"epoch": e, "val_l1": 0.9 - e / 10, "best_val_l1": 0.9 - e / 10, "status": "running"} for e in (1, 2)]
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, dict(rows[0]))  # not flushed: within the flush interval
    callback.on_trial_result(0, [], trial, dict(rows[1], done=True))  # ASHA's stop: flushed now
    checkpoints = store.trial_checkpoints("key-0.5")
    checkpoints.folder.make_dirs()
    checkpoints.save_latest({"format": CHECKPOINT_FORMAT, "epoch": 1, "history": rows[:1]})

    # A second trial ended before its first row was ever flushed: only its checkpoint and the searcher know it.
    complete = [{"epoch": e, "val_l1": 0.5, "best_val_l1": 0.5, "status": "running" if e < 4 else "completed"}
                for e in (1, 2, 3, 4)]
    other = store.trial_checkpoints("key-0.7")
    other.folder.make_dirs()
    other.save_latest({"format": CHECKPOINT_FORMAT, "epoch": 4, "history": complete})

    reopened = ResultsStore(store, strategy="tpe", family="autoencoder", hp_kinds={})  # the killed driver's files
    assert reopened.trials["key-0.5"]["status"] == "running"
    done = {"key-0.5": SearcherRecord(config={"lr": 0.5}, errored=False),
            "key-0.7": SearcherRecord(config={"lr": 0.7}, errored=False)}
    lines = reconcile(reopened, identity, done, store, segment=1, epochs_planned=4)
    assert lines == ["trial key-0.5: finished before the driver was killed; recorded as stopped after 2 epochs "
                     "(from its checkpoint)", "trial key-0.7: finished before the driver was killed; recorded as "
                     "completed after 4 epochs (from its checkpoint)"]
    row = ResultsStore(store, strategy="tpe", family="autoencoder", hp_kinds={}).trials["key-0.5"]
    assert (row["status"], row["epochs_run"], row["best_val_l1"]) == ("stopped", 2, pytest.approx(0.7))
    assert sorted(e for (t, e) in reopened.epochs if t == "key-0.5") == [1, 2]


def test_a_population_members_unflushed_epochs_are_recorded_from_its_snapshot(tmp_path):
    """A member resumes from its snapshot without replaying its epochs to Ray (PBT would decide on them again):
    the epochs the killed driver trained but never flushed to epochs.parquet come from the snapshot's history."""
    from search.runner.reconcile import reconcile
    from search.store.results import ResultsStore, TrialIdentity
    from search.store.study import StudyStore

    store = StudyStore(tmp_path, "s")
    store.create()
    results = ResultsStore(store, strategy="pbt", family="gan", hp_kinds={})
    results.add_epoch("m0", {"epoch": 1, "val_l1": 0.5, "status": "running"})
    history = [{"epoch": e, "val_l1": 0.5 - e / 10, "status": "running"} for e in (1, 2, 3)]
    identity = TrialIdentity(full_config=dict, key_of=str, hyperparameters=lambda c: {})
    lines = reconcile(results, identity, {}, store, segment=1, epochs_planned=4, continuing={"m0": history})
    assert lines == ["trial m0: 2 epoch rows restored from its snapshot"]
    assert sorted(e for (_, e) in results.epochs) == [1, 2, 3] and results.epochs[("m0", 1)]["val_l1"] == 0.5
    reopened = ResultsStore(store, strategy="pbt", family="gan", hp_kinds={})
    assert sorted(e for (_, e) in reopened.epochs) == [1, 2, 3], "flushed to epochs.parquet"
    assert reconcile(reopened, identity, {}, store, segment=2, epochs_planned=4, continuing={"m0": history}) == []


def test_a_worker_killed_as_it_is_handed_the_next_trial_loses_no_trial(tmp_path):
    """Ray Tune reuses a finished trial's worker for the next trial; the driver kills that worker right at the hand-off
    (crash point ``worker-handoff``). The next trial is retried on a new worker (search/runner/ray_fixes.py), so the
    study ends with every trial as an uninterrupted one would: none errored, the searcher told of no failure."""
    result = run_cli("search.run", "--runs-dir", str(tmp_path), "--preset", "smoke", "--final-top-k", "0",
                     "--strategy", "tpe", "--model", "autoencoder", "--samples", "3", "--max-concurrent", "1",
                     "--study", "handoff", env={"MEMSEARCH_CRASH_AT": "worker-handoff:1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "handoff" / "trials.parquet")
    assert len(trials) == 3 and set(trials["status"]) <= {"completed", "stopped"}, trials[["status", "error"]]
    import optuna

    study = optuna.load_study(study_name="handoff", storage=f"sqlite:///{tmp_path / 'handoff' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_a_sigterm_swallowed_inside_a_destructor_still_stops_the_run(ray_local, tmp_path):
    """A SIGTERM that lands while Ray runs an object's __del__ raises a KeyboardInterrupt Python only prints; the
    driver still stops at the controller's next step (search.runner.tuning.StopWhenInterrupted)."""
    from ray import tune

    from search.runner import tuning

    def trainable(config):
        for epoch in range(1, 200):
            time.sleep(0.05)
            tune.report({"epoch": epoch})

    class Swallowed(tune.Callback):  # what the signal handler leaves behind when its exception is lost
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result["epoch"] == 2:
                tuning._interrupted.set()

    seen = []

    class Seen(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen.append(result["epoch"])

    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), run_config=tune.RunConfig(
        storage_path=str(tmp_path), verbose=0, callbacks=[Swallowed(), Seen(), tuning.StopWhenInterrupted()]))
    assert tuning.run_tuner(tuner) is None  # interrupted, as a Ctrl-C
    assert max(seen) < 199


def test_ray_tunes_trial_tracebacks_are_left_out_while_a_tuner_runs_and_a_users_own_setting_stands(monkeypatch):
    import logging

    from search.runner.console import error_line
    from search.runner.tuning import trial_errors_in_our_lines

    ray_list = logging.LogRecord("ray.tune.tune", logging.ERROR, "", 0, "Trials did not complete: %s", (["t"],), None)
    monkeypatch.delenv("TUNE_PRINT_ALL_TRIAL_ERRORS", raising=False)
    with trial_errors_in_our_lines():
        assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"  # Ray Tune's controller then logs no traceback
        assert not logging.getLogger("ray.tune.tune").filter(ray_list)
    assert "TUNE_PRINT_ALL_TRIAL_ERRORS" not in os.environ and logging.getLogger("ray.tune.tune").filter(ray_list)
    with pytest.raises(KeyboardInterrupt), trial_errors_in_our_lines():  # Ctrl-C or SIGTERM mid-run
        raise KeyboardInterrupt
    assert "TUNE_PRINT_ALL_TRIAL_ERRORS" not in os.environ and logging.getLogger("ray.tune.tune").filter(ray_list)
    monkeypatch.setenv("TUNE_PRINT_ALL_TRIAL_ERRORS", "1")  # a user's own: Ray prints as they chose
    with trial_errors_in_our_lines():
        assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "1" and logging.getLogger("ray.tune.tune").filter(ray_list)
    line = error_line("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: " + "v" * 300 + "\n\n")
    assert line.startswith("      error: ValueError: vvv") and line.endswith("...") and len(line) == len("      error: ") + 200
    assert error_line("OSError: disk full") == "      error: OSError: disk full"
