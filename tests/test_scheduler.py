"""ASHA's rungs survive a resumed search: rebuilt from the study's finished trials."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from search.scheduler import ResumableASHA

# Two finished trials as epochs.parquet holds them, in the order they were reported.
FINISHED = [("a", 1, 0.50), ("b", 1, 0.90), ("a", 2, 0.40), ("b", 2, 0.85), ("a", 3, 0.35), ("a", 4, 0.30)]


def _scheduler() -> ResumableASHA:
    scheduler = ResumableASHA(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
    scheduler.set_search_properties("best_val_l1", "min")
    return scheduler


def _decision(scheduler: ResumableASHA, epoch: int, value: float) -> str:
    trial = SimpleNamespace(trial_id="new")
    scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, "best_val_l1": value})


def test_seeded_rungs_hold_what_the_finished_trials_recorded():
    scheduler = _scheduler()
    assert scheduler.seed_rungs(FINISHED) == 5  # a and b at milestones 1 and 2, a at 4
    rungs = scheduler.rungs()
    assert rungs[1] == {"study:a": 0.50, "study:b": 0.90}
    assert rungs[2] == {"study:a": 0.40, "study:b": 0.85}
    assert rungs[4] == {"study:a": 0.30}


def test_a_resumed_search_stops_what_the_uninterrupted_one_would():
    """The defect: a fresh ASHA after a resume has empty rungs and lets a bad trial through."""
    assert _decision(_scheduler(), 1, 0.95) == TrialScheduler.CONTINUE  # empty rungs: nothing to compare with
    seeded = _scheduler()
    seeded.seed_rungs(FINISHED)
    assert _decision(seeded, 1, 0.95) == TrialScheduler.STOP
    good = _scheduler()
    good.seed_rungs(FINISHED)
    assert _decision(good, 1, 0.45) == TrialScheduler.CONTINUE
