"""How far along a search is and how long it has left, from what this run has measured.

The time left is the epochs still to train (trials still planned, each expected to run as
many epochs as the finished ones did on average, ASHA's early stops included, plus the
final stage's runs) divided by the rate at which this run has trained epochs so far
(all concurrent trials together). The first trial's epochs give the first estimate; it
settles as trials finish. On a terminal a status line is kept up to date after every epoch;
in a log each finished trial's line carries the same figures, and when no line has been
printed for QUIET_S (a population's members all end together, a GAN's trials are long) the
next epoch prints one.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, TextIO

QUIET_S = 300.0  # in a log, the longest stretch without a progress line


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SearchProgress:
    """Trials done / planned, epochs, elapsed and remaining time of one driver run."""

    def __init__(self, planned: Callable[[], int] | None, *, epochs_per_trial: int, done_trials: int, final_runs: int,
                 stream: TextIO | None = None, live: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 budget_left: int | None = None):
        # The search's trial count as now planned (greedy's grows or shrinks with its path); None: open-ended
        # (an Optuna study without --samples), as many trials as --budget-epochs affords.
        self.planned = planned
        self.budget_left = budget_left  # --budget-epochs: epochs this run may still train (None: no budget)
        self.epochs_per_trial = epochs_per_trial
        self.done = done_trials
        self.final_runs = final_runs
        self._stream = stream  # None: sys.stdout, looked up when written (Ray pickles the callbacks holding this)
        self.live = self.stream.isatty() if live is None else live
        self.clock = clock
        self.started = clock()
        self.epochs = 0  # epochs trained by this run (replayed ones are not)
        self.finished_epochs: list[int] = []  # epochs run by each trial that finished in this run
        self._shown = False
        self._last_line = self.started  # when a line with these figures was last written

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    def on_epoch(self, result: dict[str, Any]) -> None:
        if result.get("replayed"):
            return
        self.epochs += 1
        if self.live:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
            self._shown = True
        elif self.clock() - self._last_line >= QUIET_S:
            self.stream.write(f"progress: {self.line()}\n")
            self.stream.flush()

    def on_trial(self, row: dict[str, Any]) -> None:
        self.done += 1
        if row.get("epochs_run"):
            self.finished_epochs.append(int(row["epochs_run"]))

    def clear(self) -> str:
        """What to print before a normal line so it replaces the live status line."""
        if self.live and self._shown:
            self._shown = False
            return "\r\033[K"
        return ""

    def _per_trial(self) -> float:
        return sum(self.finished_epochs) / len(self.finished_epochs) if self.finished_epochs else self.epochs_per_trial

    def _planned(self) -> int | float:
        if self.planned is not None:
            return self.planned()
        return math.inf if self.budget_left is not None else self.done

    def planned_trials(self) -> int:
        """Trials as now planned; under --budget-epochs, no more than the epochs left afford at the mean trial's length."""
        planned = self._planned()
        if self.budget_left is not None:
            in_flight = self.epochs - sum(self.finished_epochs)
            left = max(0, self.budget_left - self.epochs + in_flight)  # running trials' epochs are theirs already
            planned = min(planned, self.done + math.ceil(left / max(self._per_trial(), 1)))
        return int(max(planned, self.done))

    def remaining_seconds(self) -> float | None:
        elapsed = self.clock() - self.started
        if self.epochs == 0 or elapsed <= 0:
            return None
        # Epochs of trials still running count against what they have left to run.
        in_flight = self.epochs - sum(self.finished_epochs)
        trials_left = self._planned() - self.done
        search = max(0.0, trials_left * self._per_trial() - in_flight) if trials_left > 0 else 0.0
        if self.budget_left is not None:  # the search stops proposing at the budget
            search = min(search, max(0, self.budget_left - self.epochs))
        return (search + self.final_runs * self.epochs_per_trial) / (self.epochs / elapsed)

    def line(self) -> str:
        planned = self.planned_trials()
        left = self.remaining_seconds()
        final = f" + {self.final_runs} final runs" if self.final_runs else ""
        estimate = f"about {duration(left)} left" if left is not None else "time left: after the first epoch"
        self._last_line = self.clock()
        return (f"{self.done}/{planned} trials{final}, {self.epochs} epochs trained, "
                f"{duration(self.clock() - self.started)} elapsed, {estimate}")


def asha_epochs(epochs: int, grace: int, reduction_factor: int) -> float:
    """Epochs a trial trains on average under ASHA: all reach the grace period, 1 / factor of them each next rung."""
    expected, rung, share = float(min(grace, epochs)), min(grace, epochs), 1.0
    while rung < epochs:
        share /= reduction_factor
        following = min(rung * reduction_factor, epochs)
        expected += (following - rung) * share
        rung = following
    return expected


def within_budget(blocks: list[int], epochs: float, budget_left: int | None) -> list[int]:
    """The rounds of trials a search plans, cut to what ``budget_left`` epochs afford at ``epochs`` a trial (the budget
    is a cap: a trial that does not fit is not started); for a search whose plan is open-ended (no round known),
    what the budget affords."""
    if budget_left is None:
        return blocks
    afford = math.floor(max(0, budget_left) / max(epochs, 1) + 1e-9)
    if not any(blocks):  # a search the budget alone ends (an Optuna study without --samples): what it affords
        return [afford] if afford else []
    kept = []
    for n in blocks:
        if afford <= 0:
            break
        kept.append(min(n, afford))
        afford -= kept[-1]
    return kept


def estimate_line(*, blocks: list[int], epochs: int, final_runs: int, concurrency: int, epoch_s: float,
                  widest_epoch_s: float | None = None, where: str = "here", startup_s: float = 15.0,
                  early_stops: bool = True, budget_epochs: int | None = None, fewest: int | None = None,
                  most: int | None = None) -> str:
    """The first line's promise: rounds of trials (each block's trials in parallel as far as
    ``concurrency`` allows, blocks one after another) times epochs times the measured epoch:
    of the study default, and of its widest models (where the search may end up). ``where``: where that epoch was
    measured, in words (``cluster.measure_epochs``: here in the driver, on a Ray worker, alone on a GPU).

    Under --budget-epochs (``budget_epochs``: epochs left to spend) the search trains no more than
    the budget, ``concurrency`` epochs at a time, however early stops divide it among trials; with
    early stops the trials it affords are a range: ``fewest`` (none stopped) to ``most`` (every
    trial stopped at the grace period), with ``sum(blocks)`` (ASHA stopping its usual share at each rung) in between. How
    many ASHA stops depends on the values the searcher finds (a sampler that improves sends more
    trials past the rungs; a small study's rungs stop more or fewer than their share by chance), so
    no single count can be promised: a GAN tpe search planned at about 24 trials ran 27."""
    rounds = sum(math.ceil(n / concurrency) for n in blocks if n)
    final_rounds = math.ceil(final_runs / concurrency) if final_runs else 0
    search_epochs = rounds * epochs  # epochs one after another, every trial running all its epochs
    # Without early stops the rounds are already cut to the budget (idle slots of odd blocks included).
    capped = early_stops and budget_epochs is not None and math.ceil(budget_epochs / concurrency) < search_epochs
    if capped:
        search_epochs = math.ceil(budget_epochs / concurrency)
    low = startup_s + (search_epochs + final_rounds * epochs) * epoch_s
    final = f" + {final_runs} final runs" if final_runs else ""
    typical = sum(blocks)
    most = max(most or typical, typical)
    ranged = fewest is not None and fewest < most
    trials = f"{fewest} to {most} trials" if ranged else f"{typical} trials"
    if ranged and fewest < typical < most:
        trials += f" (about {typical} if ASHA stops its usual share)"
    line = (f"estimate: {trials}{final} of up to {epochs} epochs, {concurrency} at a time; one epoch of "
            f"the study default measured {where} at {epoch_s:.1f} s")
    suffix = (f" for the budget's {budget_epochs} epochs" + (" (the more ASHA stops early, the more trials)"
                                                               if ranged else "")
              if capped else _all_epochs(early_stops))
    if widest_epoch_s and widest_epoch_s > epoch_s * 1.05:
        high = startup_s + (search_epochs + final_rounds * epochs) * widest_epoch_s
        return line + f", of its widest models {widest_epoch_s:.1f} s: about {duration(low)} to {duration(high)}" + suffix
    return line + f": about {duration(low)}" + suffix


def _all_epochs(early_stops: bool) -> str:
    return " if every trial ran all its epochs (ASHA's early stops make it shorter)" if early_stops else ""
