"""The progress line: trials done / planned, epochs, elapsed and time left from the measured rate."""

from __future__ import annotations

import math

import io

from ray.tune.search import Searcher

from search.runner.progress import SearchProgress, asha_epochs, duration, estimate_line, within_budget
from search.strategies.greedy_searcher import GreedySearcher
from tests.test_greedy import report_space
from trainables.families import find_family
from trainables.measure import measure_epoch_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_left_follows_the_measured_rate_and_the_finished_trials_length():
    clock = Clock()
    stream = io.StringIO()
    progress = SearchProgress(lambda: 10, epochs_per_trial=8, done_trials=0, final_runs=2, stream=stream,
                              live=False, clock=clock)
    assert "after the first epoch" in progress.line()
    for _ in range(8):  # one trial of 8 epochs in 40 s: 0.2 epochs per second
        clock.now += 5
        progress.on_epoch({"epoch": 1})
    progress.on_trial({"epochs_run": 8})
    # 9 trials of 8 epochs + 2 final runs of 8 = 88 epochs at 0.2/s = 440 s
    assert progress.remaining_seconds() == 440
    assert progress.line() == "1/10 trials + 2 final runs, 8 epochs trained, 40s elapsed, about 7m20s left"
    # A trial stopped early by ASHA after 2 epochs: trials now expected to run 5 epochs on average.
    for _ in range(2):
        clock.now += 5
        progress.on_epoch({"epoch": 1})
    progress.on_trial({"epochs_run": 2})
    assert progress.remaining_seconds() == (8 * 5 + 16) / (10 / 50)
    progress.on_epoch({"epoch": 1, "replayed": True})  # a resumed trial's replayed epoch trains nothing
    assert progress.epochs == 10
    assert stream.getvalue() == "" and progress.clear() == ""  # not a terminal: no live line


def test_under_a_budget_the_plan_and_the_time_left_stop_at_the_budget():
    # The case: 26 trials of 40 epochs planned, --budget-epochs 80: two trials, not 26.
    assert within_budget([26], 40, 80) == [2]
    assert within_budget([4, 3, 3], 8, 50) == [4, 2]  # greedy's blocks: 6 trials of 8 epochs fit in 50, a 7th not
    assert within_budget([4, 3], 8, None) == [4, 3] and within_budget([4], 8, 0) == []
    assert within_budget([0], 2, 8) == [4]  # an Optuna study the budget alone ends
    # Under ASHA (grace 1, factor 2, 2 epochs) half the trials stop after one epoch: 1.5 epochs a trial.
    assert asha_epochs(2, 1, 2) == 1.5 and within_budget([0], asha_epochs(2, 1, 2), 8) == [5]
    assert asha_epochs(8, 1, 2) == 1 + 1 / 2 + 2 / 4 + 4 / 8 and asha_epochs(8, 8, 3) == 8
    clock = Clock()
    progress = SearchProgress(lambda: 26, epochs_per_trial=40, done_trials=0, final_runs=0, live=False, clock=clock,
                              budget_left=80)
    assert progress.line().startswith("0/2 trials")
    for _ in range(10):  # 10 epochs in 50 s: 0.2 epochs a second
        clock.now += 5
        progress.on_epoch({"epoch": 1})
    assert progress.remaining_seconds() == (80 - 10) / 0.2  # to the budget, not to 26 trials' 1040 epochs

    # An Optuna study without --samples plans as many trials as the budget affords, and counts down to it.
    clock = Clock()
    progress = SearchProgress(None, epochs_per_trial=8, done_trials=0, final_runs=2, live=False, clock=clock,
                              budget_left=232)
    assert progress.line().startswith("0/29 trials + 2 final runs")
    for epochs_run in (8, 3, 3, 2):  # 16 epochs in 80 s, four trials of 4 epochs on average
        for _ in range(epochs_run):
            clock.now += 5
            progress.on_epoch({"epoch": 1})
        progress.on_trial({"epochs_run": epochs_run})
    assert progress.planned_trials() == 4 + (232 - 16) // 4
    assert progress.remaining_seconds() == (232 - 16 + 2 * 8) / 0.2
    assert SearchProgress(None, epochs_per_trial=8, done_trials=3, final_runs=0, live=False).planned_trials() == 3


def test_a_terminal_gets_a_live_line_that_the_next_printed_line_replaces():
    stream = io.StringIO()
    progress = SearchProgress(lambda: 3, epochs_per_trial=2, done_trials=0, final_runs=0, stream=stream, live=True)
    progress.on_epoch({"epoch": 1})
    assert stream.getvalue().startswith("\r0/3 trials, 1 epochs trained")
    assert progress.clear() == "\r\033[K" and progress.clear() == ""


def test_greedy_plans_every_block_it_has_still_to_open():
    space = report_space()
    searcher = GreedySearcher(space)
    planned = searcher.planned_total()
    trial = 0
    while True:  # the held value always wins: the path is the defaults'
        proposals = []
        while (config := searcher.suggest(f"t{trial}")) not in (None, Searcher.FINISHED):
            proposals.append((f"t{trial}", config))
            trial += 1
        if config == Searcher.FINISHED:
            break
        for trial_id, config in proposals:
            held = all(config[k] == v for k, v in searcher.state.current.items() if k in config)
            searcher.on_trial_complete(trial_id, {"best_val_l1": 0.1 if held else 0.2})
        assert searcher.planned_total() == planned
    assert len(searcher.state.evaluated) == planned == searcher.planned_total()


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0, 59, 61, 3599, 3600, 7322)] == ["0s", "59s", "1m01s", "59m59s", "1h00m", "2h02m"]


def test_estimate_counts_rounds_of_parallel_trials_block_by_block():
    # blocks of 3, 1 and 2 trials, 2 at a time: 2 + 1 + 1 rounds; 3 final runs: 2 rounds; 6 rounds x 4 epochs x 5 s
    line = estimate_line(blocks=[3, 1, 2], epochs=4, final_runs=3, concurrency=2, epoch_s=5.0, startup_s=0.0)
    assert line.startswith("estimate: 6 trials + 3 final runs of up to 4 epochs, 2 at a time")
    assert "5.0 s" in line and "about 2m00s" in line


def test_one_epoch_is_measured_on_this_machine_leaving_the_callers_torch_as_it_was(tiny_data):
    """A local search's driver measures its estimate itself (search.runner.cluster): its thread count and random
    stream must come back unchanged."""
    from dataclasses import asdict

    import torch

    from search.study_file import load_space
    from trainables.config import RunSettings

    space = load_space("autoencoder")
    config = {**space.default_config(), **asdict(RunSettings(epochs=2, width_divisor=16, threads=1))}
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(2)
    try:
        seconds = measure_epoch_seconds(find_family("autoencoder"), config, tiny_data)
        assert torch.get_num_threads() == 2 and torch.equal(torch.get_rng_state(), rng)
    finally:
        torch.set_num_threads(threads)
    assert seconds > 0 and math.isfinite(seconds)


def test_estimate_gives_a_range_up_to_the_widest_models():
    line = estimate_line(blocks=[2], epochs=2, final_runs=0, concurrency=2, epoch_s=5.0, widest_epoch_s=15.0,
                         startup_s=0.0)
    assert "of its widest models 15.0 s: about 10s to 30s" in line


def test_under_a_budget_with_early_stops_the_estimate_gives_the_trials_range_and_the_budgets_time():
    # The GAN's tpe search of benchmarks.publish: 232 epochs, trials of 8 epochs, ASHA from epoch 3 halving:
    # 29 trials if none is stopped, 46 at ASHA's 5 epochs a trial, 77 if every trial stopped at epoch 3 (the budget
    # is a cap: none starts that does not fit); the time is the budget's epochs, 2 at a time (116 x 9.4 s),
    # plus a round of final runs, whatever the trial count.
    blocks = within_budget([0], asha_epochs(8, 3, 2), 232)
    line = estimate_line(blocks=blocks, epochs=8, final_runs=2, concurrency=2, epoch_s=9.4, startup_s=0.0,
                         budget_epochs=232, fewest=sum(within_budget([0], 8, 232)),
                         most=sum(within_budget([0], 3, 232)))
    assert line.startswith("estimate: 29 to 77 trials (about 46 if ASHA stops its usual share) + 2 final runs of up "
                           "to 8 epochs")
    assert line.endswith(f"about {duration((116 + 8) * 9.4)} for the budget's 232 epochs (the more ASHA stops early, "
                         "the more trials)")
    # At B/2 (120 epochs).
    half = estimate_line(blocks=within_budget([0], asha_epochs(8, 3, 2), 120), epochs=8, final_runs=2, concurrency=2,
                         epoch_s=9.4, budget_epochs=120, fewest=15, most=sum(within_budget([0], 3, 120)))
    assert half.startswith("estimate: 15 to 40 trials (about 24 ")
    # Without early stops the rounds, already cut to the budget, give the time.
    line = estimate_line(blocks=[3], epochs=8, final_runs=0, concurrency=2, epoch_s=10.0, startup_s=0.0,
                         early_stops=False, budget_epochs=20)
    assert line.endswith("about 2m40s")


def test_a_short_trial_measures_an_epoch_as_search_trials_run_it(tiny_data):
    from search.study_file import load_space
    from trainables.measure import measure_trial_epoch

    space = load_space("autoencoder")
    config = {**space.default_config(), "width_divisor": 16, "train_eval_size": 16, "epochs": 100}
    row = measure_trial_epoch(find_family("autoencoder"), config, tiny_data)
    assert row["epoch"] == 2 and row["status"] == "completed"  # its own 2 epochs, not the config's 100
    assert row["epoch_seconds"] > 0 and math.isfinite(row["epoch_seconds"]) and row["device"] == "cpu"


def test_a_log_gets_a_progress_line_when_none_was_printed_for_five_minutes():
    # A population's members all end at once: without this a log says nothing for the whole search.
    clock, stream = Clock(), io.StringIO()
    progress = SearchProgress(lambda: 8, epochs_per_trial=8, done_trials=0, final_runs=2, stream=stream, live=False,
                              clock=clock)
    for _ in range(10):  # 10 epochs, 30 s each: the 10th ends at 300 s
        clock.now += 30
        progress.on_epoch({"epoch": 1})
    assert stream.getvalue() == "progress: 0/8 trials + 2 final runs, 10 epochs trained, 5m00s elapsed, about 35m00s left\n"
    clock.now += 30
    progress.on_epoch({"epoch": 1})
    assert stream.getvalue().count("progress:") == 1  # the next after another five quiet minutes
    clock.now += 200
    progress.line()  # a finished trial's line carries the figures, and counts as one
    clock.now += 200
    progress.on_epoch({"epoch": 1})
    assert stream.getvalue().count("progress:") == 1
