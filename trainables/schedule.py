"""A hyperparameter schedule: the changes a population member's lineage made, epoch by epoch.

Population-based training changes a member's learning rates, betas and loss weights as it
trains (search/strategies/population.py). To re-train what it found with new seeds, the final
stage replays the best member's schedule on one model from scratch (the idea of Ray Tune's
``PopulationBasedTrainingReplay``): before epoch ``e`` the changes listed for ``e`` are applied.
The schedule travels in the trial's config as JSON (``RunSettings.replay``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Schedule:
    steps: tuple[tuple[int, dict[str, Any]], ...] = ()  # (epoch, changes applied before it), epochs ascending

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        if not text:
            return cls()
        try:
            steps = tuple((int(epoch), dict(changes)) for epoch, changes in json.loads(text))
        except (ValueError, TypeError) as err:
            raise ValueError(f"schedule must be JSON [[epoch, {{name: value}}], ...], got {text[:80]!r} ({err})") from None
        if [e for e, _ in steps] != sorted({e for e, _ in steps}) or any(e < 1 for e, _ in steps):
            raise ValueError(f"schedule epochs must be distinct, ascending and at least 1, got {[e for e, _ in steps]}")
        return cls(steps)

    def dumps(self) -> str:
        return json.dumps([[epoch, changes] for epoch, changes in self.steps], sort_keys=True)

    def at(self, epoch: int) -> dict[str, Any]:
        """The changes applied before ``epoch``."""
        return next((dict(changes) for e, changes in self.steps if e == epoch), {})

    def in_effect(self, epoch: int) -> dict[str, Any]:
        """Every value the schedule has set by ``epoch`` (a run resumed there applies them all)."""
        values: dict[str, Any] = {}
        for e, changes in self.steps:
            if e <= epoch:
                values.update(changes)
        return values

    @classmethod
    def from_epochs(cls, values: list[tuple[int, dict[str, Any]]]) -> "Schedule":
        """From the values in effect at each epoch (ascending): a step wherever one changes."""
        steps, held = [], None
        for epoch, current in values:
            changes = dict(current) if held is None else {k: v for k, v in current.items() if held.get(k) != v}
            if changes:
                steps.append((epoch, changes))
            held = dict(current)
        return cls(tuple(steps))
