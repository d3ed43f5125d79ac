"""ASHA that remembers: its rungs are rebuilt from the study's results when a search resumes.

Ray Tune's ASHA keeps its rungs (the values recorded at each milestone) in memory. A
resumed driver starts a new scheduler with empty rungs, so without this the first trials
after a resume are compared against nothing and always continue: measured on a greedy
autoencoder smoke study killed after its third trial, a trial the uninterrupted run stopped
after 2 epochs (val L1 0.898) ran all 4 after the resume, the block adopted another value
and the rest of the search trained other configurations. :meth:`seed_rungs` replays every
finished trial's epochs, in the order they were first reported, into the rungs before the
first new trial starts, so those trials are judged against what the uninterrupted search
had recorded at that point.

**Per-block decisions for greedy.** Asynchronous ASHA compares a trial at a milestone with
whatever the rung holds at that moment, so with two trials of one greedy block running at
once, which one reports first decides whether the other is stopped, and two runs of the same
command can walk different paths. Given ``group_of`` (Ray trial id -> greedy block), a trial is
judged only against trials of *earlier* blocks, whose results are all in before its block
opened: its decision depends on its own curve and the search's history, never on the order
in which its block-mates report. Within a block trials never stop one another; the first
block, with no history, is never cut.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Iterable

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class ResumableASHA(ASHAScheduler):
    """``ASHAScheduler`` (one bracket, minimising) plus :meth:`seed_rungs` and, with ``group_of``,
    per-block decisions (see the module's docstring)."""

    def __init__(self, *args: Any, group_of: Callable[[str], int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group_of = group_of
        self._groups: dict[str, int] = {}  # rung key (Ray trial id, or "study:<id>" when seeded) -> block

    def seed_rungs(self, epochs: Iterable[tuple[str, int, float]], groups: dict[str, int] | None = None) -> int:
        """Record ``(trial id, epoch, value)`` rows of finished trials in the rungs, in the given order
        (the order they were reported in); ``groups`` gives their greedy blocks. Returns how many
        rung entries were recorded."""
        bracket = self._brackets[0]
        before = sum(len(recorded) for _, recorded in bracket._rungs)
        for trial_id, epoch, value in epochs:
            if value is None:
                continue
            key = f"study:{trial_id}"
            if groups and groups.get(trial_id) is not None:
                self._groups[key] = int(groups[trial_id])
            # ASHA maximises internally: a minimised metric enters negated (as Tune's metric_op does).
            self._record(key, epoch, -float(value))
        return sum(len(recorded) for _, recorded in bracket._rungs) - before

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.group_of is None:
            return super().on_trial_result(tune_controller, trial, result)
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        group = self.group_of(trial.trial_id)
        if group is not None:
            self._groups[trial.trial_id] = group
        if result[self._time_attr] >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP
        else:
            action = self._record(trial.trial_id, result[self._time_attr], self._metric_op * result[self._metric])
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if self.group_of is None:
            return super().on_trial_complete(tune_controller, trial, result)
        if self._time_attr in result and self._metric in result:
            self._record(trial.trial_id, result[self._time_attr], self._metric_op * result[self._metric])
        self._trial_info.pop(trial.trial_id, None)

    def _record(self, key: str, iteration: int, reward: float) -> str:
        """The bracket's rule (record the value at the highest milestone reached, once; stop a trial
        below the rung's cutoff), with the cutoff taken over earlier blocks only when blocks are known."""
        bracket = self._brackets[0]
        if self.group_of is None:
            return bracket.on_result(SimpleNamespace(trial_id=key), iteration, reward)
        group = self._groups.get(key)
        for milestone, recorded in bracket._rungs:
            if iteration < milestone or key in recorded:
                continue
            earlier = [v for k, v in recorded.items() if group is None or self._groups.get(k, -1) < group]
            stop = bool(earlier) and reward < np.nanpercentile(earlier, (1 - 1 / bracket.rf) * 100)
            recorded[key] = reward
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def rungs(self) -> dict[int, dict[str, float]]:
        """milestone -> {trial id: recorded value (as minimised)}: for tests and debugging."""
        return {int(m): {k: -v for k, v in recorded.items()} for m, recorded in self._brackets[0]._rungs}
