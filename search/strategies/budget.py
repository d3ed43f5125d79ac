"""``--budget-epochs``: a search that stops proposing trials once it has spent N training epochs.

Epochs are what a search costs (a trial ASHA stops after one epoch costs one, not a whole
trial), and the fair way to compare strategies is at the same number of them. The count is the
epochs every trial of the study trained, earlier driver runs included; each result a trial
reports is one epoch. Once it reaches the budget no new trial is proposed; trials already running
or queued to start (as many as run at once) finish, or ASHA stops them, so a search overshoots by
at most what those trials still train.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher


class EpochBudget(Searcher):
    """Wraps a searcher; answers ``FINISHED`` once ``spent`` epochs reach ``budget``."""

    def __init__(self, searcher: Searcher, budget: int, spent: int = 0) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.budget, self.before = searcher, budget, spent
        self._epochs: dict[str, set[int]] = {}  # trial id -> epochs it trained in this run

    @property
    def spent(self) -> int:
        return self.before + sum(map(len, self._epochs.values()))

    @property
    def reached(self) -> bool:
        return self.spent >= self.budget

    def _count(self, trial_id: str, result: dict[str, Any] | None) -> None:
        # A resumed trial re-reports the epochs it had trained ("replayed"); they were counted before.
        if result and "epoch" in result and not result.get("replayed"):
            self._epochs.setdefault(trial_id, set()).add(int(result["epoch"]))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        if self.reached:
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._count(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        # Tune does not pass a trial's last result to on_trial_result when the scheduler stops it there
        # (ASHA at a rung or at the last epoch): it arrives here.
        self._count(trial_id, result)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:  # Tune saves a wrapper's own state beside the searcher's
        return {"budget": self.budget, "before": self.before, "epochs": {k: sorted(v) for k, v in self._epochs.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.budget, self.before = state["budget"], state["before"]
        self._epochs = {k: set(v) for k, v in state["epochs"].items()}

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
