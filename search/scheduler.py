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
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterable

from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    """``ASHAScheduler`` (one bracket, minimising) plus :meth:`seed_rungs`."""

    def seed_rungs(self, epochs: Iterable[tuple[str, int, float]]) -> int:
        """Record ``(trial id, epoch, value)`` rows of finished trials in the rungs, in the given order
        (the order they were reported in); returns how many rung entries were recorded."""
        bracket = self._brackets[0]
        before = sum(len(recorded) for _, recorded in bracket._rungs)
        for trial_id, epoch, value in epochs:
            if value is None:
                continue
            # ASHA maximises internally: a minimised metric enters negated (as Tune's metric_op does).
            bracket.on_result(SimpleNamespace(trial_id=f"study:{trial_id}"), epoch, -float(value))
        return sum(len(recorded) for _, recorded in bracket._rungs) - before

    def rungs(self) -> dict[int, dict[str, float]]:
        """milestone -> {trial id: recorded value (as minimised)}: for tests and debugging."""
        return {int(m): {k: -v for k, v in recorded.items()} for m, recorded in self._brackets[0]._rungs}
