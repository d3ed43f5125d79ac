"""The search command end to end, as a user runs it: strategies, ASHA, resumption, results, bad input."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from search.store.results import SCHEMA_VERSION
from tests.conftest import ROOT, assert_clean_error, run_cli

SMOKE = ("--preset", "smoke", "--final-top-k", "0")  # the final stage has its own test


def search(runs: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_cli("search.run", "--runs-dir", str(runs), *SMOKE, *args, timeout=timeout)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def greedy_study(runs_dir) -> Path:
    """An uninterrupted greedy GAN smoke study without ASHA (the reference for resumption)."""
    result = search(runs_dir, "--strategy", "greedy", "--model", "gan", "--scheduler", "none", "--study", "greedy-ref")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs_dir / "greedy-ref"


@pytest.fixture(scope="session")
def tpe_study(runs_dir) -> Path:
    result = search(runs_dir, "--strategy", "tpe", "--model", "autoencoder", "--samples", "6", "--epochs", "3",
                    "--study", "tpe-ae", "--final-top-k", "2", "--final-seeds", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    (runs_dir / "tpe-ae" / "stdout.txt").write_text(result.stdout)
    return runs_dir / "tpe-ae"


def test_the_top_configurations_are_retrained_over_seeds_and_measured_on_test(tpe_study):
    final = pd.read_parquet(tpe_study / "final.parquet")
    trials = pd.read_parquet(tpe_study / "trials.parquet")
    best_two = trials[trials["status"].isin(["completed", "stopped"])].sort_values("best_val_l1")["trial_id"].head(2)
    assert list(final["source_trial_id"].drop_duplicates()) == list(best_two)
    assert sorted(final["seed"].unique()) == [1000, 1001] and len(final) == 4
    assert (final["status"] == "completed").all() and (final["epochs_run"] == 3).all()  # no early stopping
    assert final["test_l1"].notna().all() and final["selected_val_l1"].notna().all()
    assert not set(final["trial_id"]) & set(trials["trial_id"])  # new seeds: new runs, not the search's
    summary = json.loads((tpe_study / "summary.json").read_text())["final"]
    first = summary["configurations"][0]
    mine = final[final["rank"] == 1]["test_l1"]
    assert first["test_l1"]["n"] == 2 and abs(first["test_l1"]["mean"] - mine.mean()) < 1e-12
    assert first["test_l1"]["ci95"] > 0 and summary["test_baselines"]["black_l1"] > 0
    stdout = (tpe_study / "stdout.txt").read_text()
    # The first promise and the progress on every trial line.
    assert "estimate: 6 trials + 4 final runs of up to 3 epochs, 2 at a time" in stdout
    trial_lines = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(trial_lines) == 6 and trial_lines[-1].split(" | ")[-1].startswith("6/6 trials + 4 final runs")
    assert all("elapsed" in line for line in trial_lines)
    last_lines = stdout.strip().splitlines()[-5:]
    assert last_lines[0].startswith("final: the top 2 configurations re-trained with 2 new seeds each")
    assert "test L1" in last_lines[1] and "±" in last_lines[1] and "all-black" in last_lines[-2]
    # Smoke-sized models after 3 epochs paint noise far above the all-black map: the search says so, last.
    assert summary["beats_baseline"] is False and summary["recommended_rank"] in (1, 2)
    assert last_lines[-1].startswith("no configuration beats the all-black map on this data: the recommended one's "
                                     "test L1 is"), last_lines[-1]


def test_greedy_run_prints_lines_and_writes_results(greedy_study):
    summary = json.loads((greedy_study / "summary.json").read_text())
    assert summary["finished"] and summary["strategy"] == "greedy" and summary["family"] == "gan"
    assert set(summary["baselines"]) == {f"{b}{c}" for b in ("black_l1", "mean_map_l1")
                                         for c in ("", "_remembered", "_falsely_remembered")}
    assert summary["best_val_l1"] is not None and summary["counts"]["completed"] == summary["trials"]
    # Judged on val by more than the GAN's noise margin (sqrt 2 x its noise figure): smoke models do not beat black.
    from trainables.gan import GANFamily

    assert summary["beats_baseline"] is False and abs(summary["baseline_margin"] - GANFamily.noise * 2 ** 0.5) < 1e-12
    trials = pd.read_parquet(greedy_study / "trials.parquet")
    assert (trials["schema_version"] == SCHEMA_VERSION).all()
    # smoke: the first three parameters of the order -> blocks 0, 1, 2 with 3, 1 and 1 new configs
    assert trials.groupby("greedy_block")["greedy_param"].first().tolist() == ["l1_weight", "p_translation", "map_loss"]
    assert trials["trial_id"].is_unique and len(trials) == 5
    assert trials["hp_g_width"].dtype == "int64" and trials["hp_g_lr"].dtype == "float64"
    assert str(trials["started_at"].dtype) == "datetime64[us, UTC]"
    epochs = pd.read_parquet(greedy_study / "epochs.parquet")
    assert len(epochs) == 10 and set(epochs["trial_id"]) == set(trials["trial_id"])
    assert epochs["epoch"].dtype == "int64" and epochs["val_l1"].dtype == "float64"
    # Where each epoch went: its training steps and its measuring are parts of it, its snapshot follows.
    phases = epochs[["train_seconds", "eval_seconds", "checkpoint_seconds"]]
    assert phases.notna().all().all() and (phases >= 0).all().all()
    assert (epochs["train_seconds"] + epochs["eval_seconds"] <= epochs["epoch_seconds"] + 1e-6).all()
    from benchmarks.profile import profile

    spent = profile(greedy_study)  # the search's slot-seconds, split by what they held, add up
    assert spent["trials"] == 5 and spent["epochs"] == 10
    assert abs(sum(spent["search"].values()) - spent["slot_seconds"]) < 1e-6 and min(spent["search"].values()) >= 0
    # Per-channel L1 beside the overall L1: the overall is the mean of the three channels (blue is
    # black in every map), so the two meaningful channels bound it.
    for column in ("val_l1_remembered", "val_l1_falsely_remembered"):
        assert epochs[column].notna().all() and trials[f"best_{column}"].notna().all()
    assert (epochs["val_l1"] * 3 >= epochs["val_l1_remembered"] + epochs["val_l1_falsely_remembered"] - 1e-6).all()
    for trial_id in trials["trial_id"]:
        assert (greedy_study / "trials" / trial_id / "predictions.npz").exists()


def test_ray_tools_open_a_finished_study(greedy_study):
    """Ray Tune users' own tools read a study: ExperimentAnalysis, progress.csv, TensorBoard event files."""
    from ray.tune import ExperimentAnalysis

    trials = pd.read_parquet(greedy_study / "trials.parquet")
    segment = greedy_study / "ray" / "segment-0"
    frame = ExperimentAnalysis(str(segment)).dataframe(metric="val_l1", mode="min")
    assert len(frame) == len(trials) and frame["val_l1"].notna().all()
    assert set(frame["trial_id"]) == set(trials["ray_trial_id"])
    last = frame.set_index("trial_id")["val_l1"]
    ours = trials.set_index("ray_trial_id")["final_val_l1"]
    assert (last.loc[ours.index] == ours).all()  # the same numbers as trials.parquet
    for folder in (p for p in segment.iterdir() if p.is_dir()):
        assert (folder / "result.json").exists() and (folder / "progress.csv").exists()
        assert list(folder.glob("events.out.tfevents.*"))


def test_tpe_asha_and_resume_with_more_samples(tpe_study, runs_dir):
    trials = pd.read_parquet(tpe_study / "trials.parquet")
    assert len(trials) == 6
    summary = json.loads((tpe_study / "summary.json").read_text())
    assert summary["counts"]["stopped"] >= 1, "ASHA should stop some of 6 trials at a 1-epoch grace period"
    import optuna

    storage = f"sqlite:///{tpe_study / 'optuna.db'}"
    assert len(optuna.load_study(study_name="tpe-ae", storage=storage).trials) == 6
    # --samples is the study's total: asking for 8 runs 2 more, informed by the first 6.
    result = search(runs_dir, "--strategy", "tpe", "--model", "autoencoder", "--samples", "8", "--epochs", "3",
                    "--study", "tpe-ae")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 of 8 trials already done, 2 to run" in result.stdout
    after = pd.read_parquet(tpe_study / "trials.parquet")
    assert len(after) == 8 and set(trials["trial_id"]) <= set(after["trial_id"])
    # Besides the 8 trained trials the storage may hold draws of configurations the study already had,
    # told their known value at once and redrawn (search/strategies/optuna_study.py).
    stored = optuna.load_study(study_name="tpe-ae", storage=storage).trials
    trained = [t for t in stored if not t.user_attrs.get("duplicate")]
    assert len(trained) == 8 and all(t.state.is_finished() for t in stored)
    assert set(after["segment"]) == {0, 1}


def test_a_study_keeps_the_domain_it_started_with(tpe_study, runs_dir):
    assert json.loads((tpe_study / "study.json").read_text())["domain"] == "grid", "the grid greedy walks, by default"
    result = search(runs_dir, "--strategy", "tpe", "--model", "autoencoder", "--samples", "6", "--epochs", "3",
                    "--study", "tpe-ae", "--domain", "ranges")
    assert_clean_error(result, "domain: study has 'grid', this run 'ranges'")


def test_random_strategy_on_diffusion(runs_dir):
    result = search(runs_dir, "--strategy", "random", "--model", "palette", "--samples", "2", "--study", "rnd-diff")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_parquet(runs_dir / "rnd-diff" / "trials.parquet")
    assert len(trials) == 2 and trials["family"].eq("diffusion").all()
    assert "best val L1" in result.stdout and "mean map" in result.stdout


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def _finished(study: Path) -> int:
    try:
        trials = pd.read_parquet(study / "trials.parquet")
    except (FileNotFoundError, OSError):
        return 0
    return int((trials["status"] != "running").sum())


def _crash(args: list[str], crash_at: str) -> None:
    """Run the driver until it SIGKILLs itself at a named crash point (trainables.faults), then clear Ray's leftovers."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MEMSEARCH_CRASH_AT": crash_at}, start_new_session=True)
    try:
        assert proc.wait(timeout=240) == -signal.SIGKILL, f"the driver did not reach crash point {crash_at}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's helpers left behind by the dead driver
        except ProcessLookupError:
            pass


def test_killed_driver_resumes_without_losing_or_repeating_trials(runs_dir, greedy_study):
    args = ["search.run", "--runs-dir", str(runs_dir), *SMOKE, "--strategy", "greedy", "--model", "gan",
            "--scheduler", "none", "--study", "greedy-killed"]
    study = runs_dir / "greedy-killed"
    # Killed in the narrowest window: greedy has recorded its third finished trial, the
    # results callback has not: trials.parquet still says "running" for it.
    _crash(args, "searcher-complete:3")
    before = pd.read_parquet(study / "trials.parquet")
    state = json.loads((study / "greedy_state.json").read_text())
    assert len(state["evaluated"]) == 3 and (before["status"] == "running").sum() >= 1
    result = run_cli(*args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished before the driver was killed; recorded as completed" in result.stdout
    resumed = pd.read_parquet(study / "trials.parquet")
    reference = pd.read_parquet(greedy_study / "trials.parquet")
    assert resumed["trial_id"].is_unique
    assert set(resumed["trial_id"]) == set(reference["trial_id"])
    assert (resumed["status"] == "completed").all()
    state, ref_state = (json.loads((s / "greedy_state.json").read_text()) for s in (study, greedy_study))
    assert [(b["param"], b["adopted"]) for b in state["blocks"]] == [(b["param"], b["adopted"]) for b in ref_state["blocks"]]
    # A trial finished before the kill kept its row (not re-run): same end time as before.
    done_before = before[before["status"] != "running"].set_index("trial_id")["ended_at"]
    assert (resumed.set_index("trial_id").loc[done_before.index, "ended_at"] == done_before).all()
    epochs = pd.read_parquet(study / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    # The same numbers as the run that was never killed, bit for bit.
    curve = epochs.set_index(["trial_id", "epoch"])["val_l1"].sort_index()
    ref_curve = pd.read_parquet(greedy_study / "epochs.parquet").set_index(["trial_id", "epoch"])["val_l1"].sort_index()
    pd.testing.assert_series_equal(curve, ref_curve, check_exact=True)


def test_greedy_with_asha_walks_the_same_path_one_or_two_trials_at_a_time(runs_dir):
    """Determinism on one machine, ASHA included: a trial's curve does not depend on what runs beside
    it, and greedy's early stopping judges a trial against earlier blocks only, so which of a
    block's trials reports first changes nothing (asynchronous ASHA stopped different trials)."""
    studies = {}
    for name, extra in (("greedy-asha-two", ()), ("greedy-asha-one", ("--max-concurrent", "1"))):
        result = search(runs_dir, "--strategy", "greedy", "--model", "gan", "--study", name, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        studies[name] = runs_dir / name
    two, one = (pd.read_parquet(studies[n] / "trials.parquet").set_index("trial_id").sort_index()
                for n in ("greedy-asha-two", "greedy-asha-one"))
    assert list(two.index) == list(one.index) and len(two) == 5
    pd.testing.assert_frame_equal(two[["status", "epochs_run", "best_val_l1", "greedy_block"]],
                                  one[["status", "epochs_run", "best_val_l1", "greedy_block"]], check_exact=True)
    curves = [pd.read_parquet(studies[n] / "epochs.parquet").set_index(["trial_id", "epoch"])["val_l1"].sort_index()
              for n in ("greedy-asha-two", "greedy-asha-one")]
    pd.testing.assert_series_equal(curves[0], curves[1], check_exact=True)
    states = [json.loads((studies[n] / "greedy_state.json").read_text())["blocks"] for n in studies]
    assert [(b["param"], b["adopted"]) for b in states[0]] == [(b["param"], b["adopted"]) for b in states[1]]


def test_a_second_driver_on_the_same_study_is_refused(runs_dir, greedy_study):
    with open(greedy_study / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = search(runs_dir, "--strategy", "greedy", "--model", "gan", "--scheduler", "none", "--study", "greedy-ref")
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert_clean_error(result, "in use by another driver")


def test_a_study_with_another_model_is_refused(runs_dir, greedy_study):
    before = (greedy_study / "trials.parquet").read_bytes()
    result = search(runs_dir, "--strategy", "greedy", "--model", "autoencoder", "--study", "greedy-ref")
    assert_clean_error(result, "created with other settings", "family")
    assert (greedy_study / "trials.parquet").read_bytes() == before


def test_a_run_that_chooses_otherwise_than_the_last_says_so(greedy_study):
    """The scheduler, the budget, the final stage's size... may change between a study's runs; a change is said."""
    from search.runner.options import SearchOptions
    from search.runner.plan import changed_choices

    record = json.loads((greedy_study / "study.json").read_text())
    made = record["choices"]  # the last run's
    assert made["scheduler"] == "none" and made["final_top_k"] == 0  # the fixture's command line
    same = SearchOptions(strategy="greedy", model="gan", scheduler="none", final_top_k=0)
    assert changed_choices(record, same) is None and changed_choices({"segments": [{}]}, same) is None
    other = SearchOptions(strategy="greedy", model="gan", final_top_k=0, final_seeds=5, budget_epochs=40)
    line = changed_choices(record, other)
    assert line.startswith("note: this run changes what the study's last run used: --scheduler none -> asha, ")
    assert "--budget-epochs default -> 40" in line and "--final-seeds 3 -> 5" in line and "--final-top-k" not in line
    walked = SearchOptions(strategy="greedy", model="gan", scheduler="none", final_top_k=0, max_sweeps=2)
    assert changed_choices(record, walked).endswith("--max-sweeps default -> 2 (trials so far keep what they ran with; "
                                                    "the rest follow this run)")  # a strategy's own option too


def test_unwritable_runs_dir_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = search(blocker / "runs", "--strategy", "greedy", "--model", "gan")
    assert_clean_error(result, "cannot write to the study folder")


def _as_in_a_terminal() -> None:
    """SIGHUP at its default, as a shell in a terminal leaves it (the tests may run under nohup, which ignores it)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _sigterm_when(args: list[str], ready, env: dict | None = None, everyone: bool = False,
                  sig: int = signal.SIGTERM) -> subprocess.CompletedProcess:
    """Start the driver, send it ``sig`` (``everyone``: SIGTERM to it and its Ray, as a pod's end does) once
    ``ready(stdout so far)`` holds; returns how it ended, once its process session (the driver, its Ray, their
    workers) is empty."""
    proc = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=_as_in_a_terminal)
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        _wait_for(lambda: ready("".join(said)), timeout=180)
        if everyone:
            subprocess.run(["pkill", "-TERM", "-s", str(proc.pid)], check=False)
        else:
            proc.send_signal(sig)
        proc.wait(timeout=45)  # Ray's client held a driver whose GCS was gone for 60 s
        err = proc.stderr.read()
        _wait_for(lambda: not subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).stdout, timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(said), err)


def test_sigterm_anywhere_stops_cleanly_and_the_study_resumes_equal(runs_dir, tmp_path):
    """SIGTERM to the driver and its Ray at once (as a Slurm job's end does: its GCS gone, Ray's client held the driver
    60 s, then exited 1), while a worker writes a checkpoint, SIGHUP during trials (a terminal that hung up), and
    SIGTERM during the final stage: each time the
    driver exits 130 with its one line (or at once with Ray's 1, should its raylet die first) and nothing of its Ray is
    left running; resumed, the study equals an uninterrupted one."""
    common = ["--runs-dir", str(runs_dir), "--preset", "smoke", "--strategy", "greedy", "--model", "autoencoder",
              "--scheduler", "none", "--epochs", "3", "--final-top-k", "1", "--final-seeds", "2"]
    reference = run_cli("search.run", *common, "--study", "term-ref", timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]
    args = [*common, "--study", "term"]
    study = runs_dir / "term"
    flag = tmp_path / "paused"
    stops = [  # (when, extra environment, to everyone in the driver's session, the signal)
        (lambda out: "| val_l1" in out, {}, True, signal.SIGTERM),  # the first trial has finished, another trains
        (lambda out: flag.exists(), {"MEMSEARCH_PAUSE_AT": "checkpoint-tmp:2", "MEMSEARCH_PAUSE_FLAG": str(flag)}, False,
         signal.SIGTERM),
        (lambda out: _finished(study) >= 3, {}, False, signal.SIGHUP),  # a terminal's hang-up (a dropped SSH session)
        (lambda out: "final: re-training" in out, {}, False, signal.SIGTERM),
    ]
    for ready, env, everyone, sig in stops:
        ended = _sigterm_when(args, ready, env, everyone, sig)
        if everyone and ended.returncode == 1:  # its raylet died before the driver ran its handler: Ray's core worker
            continue                            # ends the driver at once with 1 (Ray's, docs/reliability.md)
        assert ended.returncode == 130, ended.stderr[-2000:]
        assert ended.stderr.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in ended.stderr
    assert not json.loads((study / "summary.json").read_text())["finished"]
    resumed = run_cli("search.run", *args, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for table, key in (("trials.parquet", ["trial_id"]), ("epochs.parquet", ["trial_id", "epoch"]),
                       ("final.parquet", ["rank", "seed"])):
        ref, got = (pd.read_parquet(folder / table).sort_values(key).reset_index(drop=True)
                    for folder in (runs_dir / "term-ref", study))
        columns = {"trials.parquet": ["trial_id", "status", "epochs_run", "best_val_l1"],
                   "epochs.parquet": ["trial_id", "epoch", "val_l1", "train_l1"],
                   "final.parquet": ["rank", "trial_id", "seed", "best_epoch", "selected_val_l1", "test_l1"]}[table]
        pd.testing.assert_frame_equal(ref[columns], got[columns])


def test_predict_uses_the_best_trial_so_far_of_a_search_that_has_not_ended(greedy_study, tmp_path, capsys):
    """summary.json is written as a search ends: a search still running, or stopped, has none (or last run's), yet
    its trials.parquet names its best so far, which predict uses and says so."""
    import shutil

    import numpy as np
    from PIL import Image

    from search.predict import predict_images

    running = tmp_path / "running"
    shutil.copytree(greedy_study, running)
    (running / "summary.json").unlink()
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(photo)
    written, errors = predict_images(running, [photo], tmp_path / "maps", progress=False)
    out = capsys.readouterr().out
    best = json.loads((greedy_study / "summary.json").read_text())["best_trial_id"]
    assert written == 1 and not errors and f"model: the search's best trial {best}" in out
    assert "search has not ended (it runs, or was stopped): its best trial so far" in out


def test_a_checkpoint_outside_its_study_folder_predicts_at_the_size_it_was_trained_at(greedy_study, capsys):
    from search.predict import _trained_size
    from trainables.checkpoints import load_state

    best = next((greedy_study / "trials").glob("*/best.pt"))
    state = load_state(best)
    assert state["image_size"] == 64  # the smoke preset's --size, recorded by the trial
    assert _trained_size({**state, "image_size": 96}, best) == 96 and "note" not in capsys.readouterr().out
    del state["image_size"]  # a checkpoint from before: the default size, said
    assert _trained_size(state, best) == 64 and "does not record the image size" in capsys.readouterr().out


def test_predict_never_writes_two_inputs_to_one_name_and_checks_its_out_and_device(tmp_path):
    from search.predict import _check_out, _device, _output_stems
    from trainables.images import DataError

    names = ["a-2.jpg", "a.jpg", "a.png", "A.tif", "b.png"]  # a-2 is taken by a file of its own; A and a are one on macOS
    stems = _output_stems([Path(n) for n in names])
    assert len({s.casefold() for s in stems}) == len(names) and stems[:2] == ["a-2", "a"] and stems[-1] == "b", stems
    (tmp_path / "photos").mkdir()
    for out, needle in ((str(tmp_path / "photos"), "is a folder of the photos"), ("s3://bucket/maps", "local folder")):
        with pytest.raises(DataError, match=needle):
            _check_out(out, [str(tmp_path / "photos")])
    _check_out(str(tmp_path / "maps"), [str(tmp_path / "photos")])
    with pytest.raises(DataError, match="not a device"):
        _device("gpu")
    assert _device("cpu").type == "cpu"


def test_budget_follows_the_dataset_size():
    """A small dataset is trained as much as a large one under the cpu preset; thesis keeps 100 epochs."""
    from search.runner.options import PRESETS

    cpu = PRESETS["cpu"]
    assert cpu.epochs_for(1280) == cpu.epochs
    assert cpu.epochs_for(300) > cpu.epochs and cpu.epochs_for(300) * 300 >= cpu.min_images
    assert cpu.epochs_for(300) * 300 >= cpu.epochs * 1280  # no fewer images than on the full synthetic set
    assert cpu.grace_for(cpu.epochs_for(300)) > cpu.grace_period
    assert PRESETS["thesis"].epochs_for(300) == PRESETS["thesis"].epochs == 100


def test_predict_maps_for_a_folder_of_odd_images(greedy_study, tmp_path):
    """Any size and format; a corrupt file is reported and the rest are still written."""
    import csv as csv_module

    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (100, 37), "photo.JPG": (300, 200), "grey.png": (64, 64), "alpha.png": (50, 80),
             "tiny.bmp": (9, 13), "deep.tif": (40, 40)}
    for name, (w, h) in sizes.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if name == "grey.png":
            image = image.convert("L")
        elif name == "alpha.png":
            image = image.convert("RGBA")
        elif name == "deep.tif":
            image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
        image.save(photos / name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "maps"
    result = run_cli("search.predict", str(greedy_study), str(photos), "--out", str(out), "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr  # one input could not be used
    assert "Traceback" not in result.stderr and "broken.jpg" in result.stderr and "cannot be decoded" in result.stderr
    assert f"wrote {len(sizes)} maps" in result.stdout
    best_trial = json.loads((greedy_study / "summary.json").read_text())["best_trial_id"]
    assert f"model: the search's best trial {best_trial} (val L1 " in result.stdout  # which model made the maps
    # The smoke study's best does not beat the all-black map: predict says so before it writes its maps.
    assert result.stderr.startswith("warning: study greedy-ref: no configuration beats"), result.stderr
    for name, size in sizes.items():
        stem = Path(name).stem
        with Image.open(out / f"{stem}_map.png") as vms, Image.open(out / f"{stem}_overlay.png") as overlay:
            assert vms.size == size and overlay.size == size and vms.mode == "RGB"
    with open(out / "scores.csv", newline="") as handle:
        rows = {Path(r["file"]).name: r for r in csv_module.DictReader(handle)}
    assert set(rows) == set(sizes) | {"broken.jpg"}
    assert "cannot be decoded" in rows["broken.jpg"]["error"]
    for name in sizes:
        assert rows[name]["error"] == "" and 0.0 <= float(rows[name]["memorability"]) <= 1.0
        assert (int(rows[name]["width"]), int(rows[name]["height"])) == sizes[name]
    # The map is the model's: the score in the CSV is the mean of its red channel at the model's size.
    with Image.open(out / "grey_map.png") as vms:
        assert abs(np.asarray(vms)[..., 0].mean() / 255 - float(rows["grey.png"]["memorability"])) < 0.02
    # A checkpoint instead of the study, and a clear message for what is not a study or checkpoint.
    best = sorted((greedy_study / "trials").glob("*/best.pt"))[0]
    again = run_cli("search.predict", str(best), str(photos / "wide.png"), "--out", str(tmp_path / "one"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "one" / "wide_map.png").exists()
    assert_clean_error(run_cli("search.predict", str(tmp_path), str(photos), "--out", str(out)), "not a study folder")
