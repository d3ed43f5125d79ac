"""ASHA's rungs survive a resumed search: rebuilt from the study's finished trials."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from search.runner.scheduler import ResumableASHA

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


def _block_scheduler(blocks: dict[str, int]) -> ResumableASHA:
    scheduler = ResumableASHA(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, group_of=blocks.get)
    scheduler.set_search_properties("best_val_l1", "min")
    return scheduler


def _run(scheduler: ResumableASHA, results: list[tuple[str, int, float]]) -> dict[str, str]:
    """Feed results in the given order; each trial's first STOP (or CONTINUE if never stopped)."""
    decisions: dict[str, str] = {}
    for trial_id, epoch, value in results:
        trial = SimpleNamespace(trial_id=trial_id)
        if trial_id not in scheduler._trial_info:
            scheduler.on_trial_add(None, trial)
        if decisions.get(trial_id) == TrialScheduler.STOP:
            continue
        decisions[trial_id] = scheduler.on_trial_result(None, trial, {"epoch": epoch, "best_val_l1": value})
    return decisions


def test_greedy_block_decisions_do_not_depend_on_which_trial_reports_first():
    """Three trials of one block, the held value's history in an earlier block: any interleaving, same decisions."""
    blocks = {"held": 0, "x": 1, "y": 1, "z": 1}
    history = [("held", 1, 0.50), ("held", 2, 0.40)]
    x = [("x", 1, 0.45), ("x", 2, 0.30)]  # better than the held value at both milestones
    y = [("y", 1, 0.48), ("y", 2, 0.39)]  # a little better: between x and the held value
    z = [("z", 1, 0.60), ("z", 2, 0.55)]  # worse: stopped at the first milestone
    orders = [x + y + z, y + x + z, z + y + x, [x[0], y[0], z[0], x[1], y[1]], [y[0], x[0], z[0], y[1], x[1]]]
    outcomes = []
    for order in orders:
        scheduler = _block_scheduler(blocks)
        scheduler.seed_rungs(history, {"held": 0})
        outcomes.append(_run(scheduler, order))
    assert all(o == outcomes[0] for o in outcomes)
    assert outcomes[0] == {"x": TrialScheduler.CONTINUE, "y": TrialScheduler.CONTINUE, "z": TrialScheduler.STOP}
    # Plain asynchronous ASHA on the same results: y is cut when x reported first, not otherwise.
    plain = []
    for order in orders[:2]:
        scheduler = _scheduler()
        scheduler.seed_rungs(history)
        plain.append(_run(scheduler, order))
    assert plain[0]["y"] == TrialScheduler.STOP and plain[1]["y"] == TrialScheduler.CONTINUE


def test_trials_of_one_block_never_stop_one_another():
    scheduler = _block_scheduler({"a": 0, "b": 0})
    decisions = _run(scheduler, [("a", 1, 0.2), ("b", 1, 0.9), ("a", 2, 0.1), ("b", 2, 0.9)])
    assert decisions == {"a": TrialScheduler.CONTINUE, "b": TrialScheduler.CONTINUE}
    plain = _run(_scheduler(), [("a", 1, 0.2), ("b", 1, 0.9)])
    assert plain["b"] == TrialScheduler.STOP  # what asynchronous ASHA would have done
