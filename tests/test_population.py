"""Population-based training end to end: a smoke GAN population through Ray, killed and resumed, with its final stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from search.store.schedules import lineage
from tests.conftest import ROOT, run_cli
from trainables.schedule import Schedule

PERTURBED = ["l1_weight", "g_lr", "d_lr", "g_beta1", "d_beta1"]


def _args(runs, study: str, *more: str) -> list[str]:
    return ["search.run", "--runs-dir", str(runs), "--preset", "smoke", "--strategy", "pbt", "--model", "gan",
            "--epochs", "4", "--population", "2", "--perturbation-interval", "2", "--final-top-k", "1",
            "--final-seeds", "2", "--study", study, *more]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A population of 2 members of 4 epochs, deciding at epoch 2; SIGKILLed once 5 member-epochs are recorded
    (both members at epoch 2, the decision made, one member into epoch 3), then run again to its end.

    The resumed run's new scheduler decides with the members out of step. Ray's set the next decision to the
    latest member's epoch, where no member was ever chosen to run again (3 resumes hung of 3 before
    search/strategies/population.py's _KeepsMember)."""
    runs = tmp_path_factory.mktemp("pbt")
    log_killed, log_resumed = runs / "epochs-killed.tsv", runs / "epochs-resumed.tsv"
    _kill(_args(runs, "pop"), "schedule-flushed:5", {"MEMSEARCH_EPOCH_LOG": str(log_killed)})
    before = pd.read_parquet(runs / "pop" / "schedules.parquet")
    result = run_cli(*_args(runs, "pop"), timeout=400, env={"MEMSEARCH_EPOCH_LOG": str(log_resumed)})
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "pop", before, log_resumed, result.stdout


def _kill(args: list[str], crash_at: str, env: dict[str, str] | None = None) -> None:
    """Run the driver until it SIGKILLs itself at ``crash_at``, then kill what it left behind (Ray's helpers)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MEMSEARCH_CRASH_AT": crash_at, **(env or {})})
    try:
        assert proc.wait(timeout=400) == -signal.SIGKILL, "the driver did not reach its crash point"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _explored(rows: pd.DataFrame) -> int:
    """How many exploits (a member taking a donor's weights at the epoch after the donor's) changed a perturbed
    hyperparameter from the donor's."""
    exploits = rows[rows["donor_member"].notna()]
    assert len(exploits) >= 1, rows
    changed = 0
    for _, row in exploits.iterrows():
        assert row["donor_member"] != row["member"]
        donor = rows[(rows["member"] == row["donor_member"]) & (rows["epoch"] == row["donor_epoch"])].iloc[0]
        assert row["epoch"] == row["donor_epoch"] + 1
        changed += any(row[f"hp_{n}"] != donor[f"hp_{n}"] for n in PERTURBED)
    return changed


def _reported(log) -> pd.DataFrame:
    return pd.read_csv(log, sep="\t", names=["trial_id", "epoch"])


def test_a_member_takes_a_donors_weights_with_changed_hyperparameters(killed_and_resumed):
    study, _, _, stdout = killed_and_resumed
    rows = pd.read_parquet(study / "schedules.parquet")
    assert sorted(rows["member"].unique()) == [0, 1] and rows.groupby("member")["epoch"].max().eq(4).all()
    assert _explored(rows), "an exploit kept every hyperparameter of its donor: nothing was explored"
    # Members are one trial each in the study's tables, whatever their hyperparameters became. One resume ends
    # the search: no member is left short of its last epoch (a fresh scheduler made a decision the killed run
    # had made already, and a member copied one that had finished: it ended at epoch 3, and the study unfinished).
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 2 and set(trials["trial_id"]) == set(rows["trial_id"])
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 4).all(), trials
    # Every epoch is in epochs.parquet, those trained before the kill but not flushed too (from the snapshots).
    epochs = pd.read_parquet(study / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(lambda e: sorted(e) == [1, 2, 3, 4]).all(), epochs
    assert "pbt: 2 members of 4 epochs" in stdout
    # Each decision is recorded before the members go on, and each recorded exploit is the one trained from.
    decisions = json.loads((study / "trials" / "decisions.json").read_text())
    assert sorted(decisions) == ["2"], decisions  # one decision, at epoch 2 (the killed run's, not made twice)
    for epoch, made in decisions.items():
        for member, outcome in made.items():
            row = rows[(rows["member"] == int(member)) & (rows["epoch"] == int(epoch) + 1)].iloc[0]
            assert [row["donor_member"], row["donor_epoch"]] == outcome["donor"], (row, outcome)
            assert all(row[f"hp_{n}"] == pytest.approx(v) for n, v in outcome["config"].items()), (row, outcome)


def test_a_member_killed_between_a_decision_and_its_first_epoch_from_the_donor_goes_on_from_the_donor(tmp_path):
    from trainables.population import pending_exploit, read_decisions, record_decision
    from trainables.storage import location_of

    root = location_of(str(tmp_path))
    assert read_decisions(root) == {} and pending_exploit(root, 1, 2) is None
    record_decision(root, 2, {1: {"donor": [0, 2], "config": {"l1_weight": 40.0}}})
    assert pending_exploit(root, 1, 2) == {"member": 0, "epoch": 2}  # decided at 2, its newest snapshot is 2
    assert pending_exploit(root, 1, 3) is None  # it has trained from the donor already
    assert pending_exploit(root, 0, 2) is None  # the donor itself goes on from its own weights
    record_decision(root, 4, {})  # a later decision in which member 1 kept its weights
    assert pending_exploit(root, 1, 4) is None
    assert read_decisions(root) == {2: {1: {"donor": [0, 2], "config": {"l1_weight": 40.0}}}, 4: {}}


def test_after_a_sigkill_no_member_restarts_from_epoch_0(killed_and_resumed):
    study, before, log_resumed, _ = killed_and_resumed
    reached = before.groupby("trial_id")["epoch"].max()
    assert (reached >= 2).all() and (reached == 3).any(), before  # every member trained two epochs, one three
    first = _reported(log_resumed).groupby("trial_id")["epoch"].min()
    for trial_id, epoch in first.items():
        assert epoch > 1 and epoch <= reached[trial_id] + 1, (trial_id, epoch, reached[trial_id])


def test_the_final_stage_replays_the_best_members_schedule_on_test(killed_and_resumed):
    study = killed_and_resumed[0]
    final = pd.read_parquet(study / "final.parquet")
    assert len(final) == 2 and (final["status"] == "completed").all() and final["test_l1"].notna().all()
    config = json.loads(final["config_json"].iloc[0])
    schedule = Schedule.parse(config["replay"])
    trials = pd.read_parquet(study / "trials.parquet")
    best = trials.sort_values("best_val_l1").iloc[0]
    member = json.loads(best["config_json"])["member"]
    rows = pd.read_parquet(study / "schedules.parquet").to_dict("records")
    path = lineage(rows, member, PERTURBED)
    assert [e for e, _ in path] == [1, 2, 3, 4]
    for epoch, values in path:  # the replay trains each epoch with the values the lineage had then
        assert schedule.in_effect(epoch) == pytest.approx(values)
    summary = json.loads((study / "summary.json").read_text())
    assert summary["final"]["configurations"][0]["test_l1"]["n"] == 2


def test_the_dashboard_draws_the_schedules(killed_and_resumed, tmp_path):
    from dashboards.build import build

    page = build([killed_and_resumed[0]], tmp_path / "report.html").read_text()
    assert "fig-schedules-0" in page and "took another member" in page
    assert "best trial" in page  # the gallery: the best member's predictions, read from its member folder


def test_predict_uses_the_best_members_networks(killed_and_resumed, tmp_path):
    """A population study's best trial keeps best.pt in its member's folder (member-<i>), not in its trial's."""
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(photos / "a.png")
    result = run_cli("search.predict", str(killed_and_resumed[0]), str(photos), "--out", str(tmp_path / "maps"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "maps" / "a_map.png").is_file()


def _pb2_args(runs, study: str) -> list[str]:
    return ["search.run", "--runs-dir", str(runs), "--preset", "smoke", "--strategy", "pb2", "--model", "gan",
            "--epochs", "8", "--population", "2", "--perturbation-interval", "2", "--final-top-k", "1",
            "--final-seeds", "1", "--study", study]


@pytest.fixture(scope="module")
def pb2_study(tmp_path_factory):
    runs = tmp_path_factory.mktemp("pb2")
    result = run_cli(*_pb2_args(runs, "pb2"), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "pb2"


def test_pb2_runs_a_population_with_its_final_stage(pb2_study):
    """PB2: values chosen by its Gaussian-process bandit inside the study's ranges. The bandit explores only from a
    donor that kept its values over the last interval (it fits the change of val L1 between decisions under one
    configuration); otherwise it copies the donor's values as they are. A donor that took new values at one decision
    has kept them by the next, so of three decisions (epochs 2, 4 and 6) a later one explores, whichever member
    reports first. Two members, so both train at once (no member waits for a worker)."""
    rows = pd.read_parquet(pb2_study / "schedules.parquet")
    assert len(rows) == 16 and _explored(rows), rows
    for name, (low, high) in {"l1_weight": (1.0, 200.0), "g_beta1": (0.0, 0.95)}.items():
        assert rows[f"hp_{name}"].between(low, high).all()
    final = pd.read_parquet(pb2_study / "final.parquet")
    assert len(final) == 1 and final["test_l1"].notna().all()


def test_a_resumed_pb2_population_chooses_as_the_uninterrupted_one(pb2_study, tmp_path):
    """SIGKILLed after its second decision (epoch 4), one member into epoch 5: the new driver's bandit reads the
    observations the killed one had made (bandit.json), so its decision at epoch 6 explores the same values as the
    uninterrupted run's, and every member's schedule, val L1 and final test L1 equal that run's. (A bandit started
    empty copied the donor's values instead.)"""
    _kill(_pb2_args(tmp_path, "pb2"), "schedule-flushed:9")
    assert list(tmp_path.rglob("bandit.json")), "the killed driver kept no bandit observations"
    result = run_cli(*_pb2_args(tmp_path, "pb2"), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: pb2's bandit" not in result.stdout  # it had every observation the killed driver made
    columns = ["member", "epoch", "donor_member", "donor_epoch", "val_l1", *[f"hp_{n}" for n in PERTURBED]]
    ref, got = (pd.read_parquet(study / "schedules.parquet").sort_values(["member", "epoch"])[columns]
                .reset_index(drop=True) for study in (pb2_study, tmp_path / "pb2"))
    pd.testing.assert_frame_equal(ref, got)
    ref_final, got_final = (pd.read_parquet(study / "final.parquet") for study in (pb2_study, tmp_path / "pb2"))
    assert got_final["test_l1"].tolist() == ref_final["test_l1"].tolist()


def test_lineage_follows_donors_back_to_epoch_1():
    def row(member, epoch, lr, donor=None):
        return {"member": member, "epoch": epoch, "hp_g_lr": lr,
                "donor_member": None if donor is None else donor[0], "donor_epoch": None if donor is None else donor[1]}

    rows = [row(0, 1, 0.1), row(0, 2, 0.1), row(0, 3, 0.1), row(0, 4, 0.1),
            row(1, 1, 0.5), row(1, 2, 0.5), row(1, 3, 0.2, donor=(0, 2)), row(1, 4, 0.2)]
    assert lineage(rows, 1, ["g_lr"]) == [(1, {"g_lr": 0.1}), (2, {"g_lr": 0.1}), (3, {"g_lr": 0.2}), (4, {"g_lr": 0.2})]
    assert Schedule.from_epochs(lineage(rows, 1, ["g_lr"])).steps == ((1, {"g_lr": 0.1}), (3, {"g_lr": 0.2}))


def test_a_gan_in_training_takes_new_rates_betas_and_l1_weight_but_not_a_new_architecture():
    import torch

    from trainables.config import RunSettings
    from trainables.config import GANConfig
    from trainables.gan import GANFamily

    family = GANFamily(GANConfig(g_width=32, d_width=32), RunSettings(width_divisor=16), torch.device("cpu"))
    family.retune({"g_lr": 0.005, "d_beta1": 0.5, "l1_weight": 10.0})
    assert family.g_opt.param_groups[0]["lr"] == 0.005 and family.d_opt.param_groups[0]["lr"] == 0.001
    assert family.d_opt.param_groups[0]["betas"] == (0.5, 0.999) and family.hp.l1_weight == 10.0
    with pytest.raises(ValueError, match="g_width cannot change while a gan model trains"):
        family.retune({"g_width": 64})


def test_a_replayed_schedule_changes_values_before_its_epochs(tiny_data, tmp_path):
    from trainables.gan import GANFamily
    from trainables.loop import run_trial

    schedule = Schedule(((1, {"g_lr": 0.002}), (2, {"g_lr": 0.0005, "l1_weight": 5.0})))
    seen = []

    def report(row):
        seen.append(row["epoch"])

    config = {"epochs": 2, "width_divisor": 16, "train_eval_size": 16, "checkpoint_root": str(tmp_path),
              "replay": schedule.dumps(), "g_lr": 0.002}
    applied = []
    original = GANFamily.retune

    def spy(self, changes):
        applied.append(dict(changes))
        original(self, changes)

    GANFamily.retune = spy
    try:
        run_trial(config, tiny_data, GANFamily, report=report)
    finally:
        GANFamily.retune = original
    assert seen == [1, 2] and applied == [{"g_lr": 0.002}, {"g_lr": 0.0005, "l1_weight": 5.0}]


def test_no_run_setting_shares_a_name_with_a_hyperparameter():
    """parse_config splits a trial's config by name: a run setting named like a family's hyperparameter (the
    diffusion's noise ``schedule``) would take its value."""
    from dataclasses import fields

    from trainables.config import RunSettings
    from trainables.families import CARDS

    settings = {f.name for f in fields(RunSettings)}
    for family in CARDS.values():
        assert not settings & {f.name for f in fields(family.config_cls)}, family.name


def test_a_schedule_row_the_killed_driver_never_received_comes_from_the_snapshot(tmp_path):
    """A member saved its first epoch after an exploit, and the driver died before its report arrived: without that
    row the lineage would lose the donor, and the final stage would replay the wrong weights' history."""
    from search.store.schedules import ScheduleCallback, read_rows
    from search.store.study import StudyStore

    store = StudyStore(tmp_path, "s")
    store.create()
    first = {"member": 1, "epoch": 1, "val_l1": 0.5, "member_hp": {"g_lr": 0.01}}
    ScheduleCallback(store, {"g_lr": "float"}, {1: "k1"}, [[first]])
    history = [first, {"member": 1, "epoch": 2, "val_l1": 0.4, "member_hp": {"g_lr": 0.002},
                       "donor_member": 0, "donor_epoch": 1},
               {"epoch": 3, "val_l1": 0.3}]  # a row without its member: a snapshot from before rows carried one
    ScheduleCallback(store, {"g_lr": "float"}, {1: "k1"}, [history])
    rows = sorted(read_rows(store), key=lambda r: r["epoch"])
    assert [(r["epoch"], r["trial_id"], r["hp_g_lr"], r["donor_member"]) for r in rows] == [
        (1, "k1", 0.01, None), (2, "k1", 0.002, 0)]
    assert lineage(rows, 1, ["g_lr"]) == [(2, {"g_lr": 0.002})], "epoch 1 is member 0's, not recorded here"
