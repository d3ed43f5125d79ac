"""``--budget-epochs``: a search that stops proposing trials once it has spent N training epochs.

Epochs are what a search costs (a trial ASHA stops after one epoch costs one, not a whole
trial), and the fair way to compare strategies is at the same number of them. The count is the
epochs every trial of the study trained, earlier driver runs included; each result a trial
reports is one epoch. Once it reaches the budget no new trial starts; trials already running
finish (or ASHA stops them), so a search overshoots by at most what those trials still train.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher


class EpochBudget(Searcher):
    """Wraps a searcher; answers ``FINISHED`` once ``spent`` epochs reach ``budget``."""

    def __init__(self, searcher: Searcher, budget: int, spent: int = 0) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.budget, self.spent = searcher, budget, spent

    @property
    def reached(self) -> bool:
        return self.spent >= self.budget

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        if self.reached:
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not result.get("replayed"):  # a resumed trial re-reports the epochs it had trained
            self.spent += 1
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:  # Tune saves a wrapper's own state beside the searcher's
        return {"budget": self.budget, "spent": self.spent}

    def set_state(self, state: dict[str, Any]) -> None:
        self.budget, self.spent = state["budget"], state["spent"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
