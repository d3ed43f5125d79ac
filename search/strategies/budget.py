"""``--budget-epochs``: a search that spends at most N training epochs, whatever runs at once.

Epochs are what a search costs (a trial ASHA stops after one epoch costs one, not a whole
trial), and the fair way to compare strategies is at the same number of them. The count is the
epochs every trial of the study trained, earlier driver runs included; each result a trial
reports is one epoch. The budget is a cap: a trial starts only when its whole length fits in what
the budget has left once every running trial's remaining epochs are set aside for it, so trials
in flight always fit, and a trial that cannot fit is not started. While running trials hold the
rest, no trial is proposed (ASHA may stop one early and free its share); when nothing runs and no
whole trial fits, the search is over. At most ``epochs - 1`` of the budget go unspent. Trials a stopped
driver left running keep their share until the searcher proposes them again (they resume where they were).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ray.tune.search import Searcher


class EpochBudget(Searcher):
    """Wraps a searcher; proposes a trial only where it fits in the budget, and answers ``FINISHED`` once none can.

    ``known``: the (trial key, epoch) pairs the study already holds (its ``epochs.parquet``); ``interrupted``: the keys
    of trials a stopped driver left running; ``key_of``: a proposed config's trial key (None: the Ray trial id)."""

    def __init__(self, searcher: Searcher, budget: int, known: Iterable[tuple[str, int]] = (), epochs_per_trial: int = 1,
                 interrupted: Iterable[str] = (), key_of: Callable[[dict[str, Any]], str] | None = None) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.budget, self.per_trial, self.key_of = searcher, budget, epochs_per_trial, key_of
        self._epochs: dict[str, set[int]] = {}  # trial key -> its epochs the study holds or a trial reported
        for key, epoch in known:
            self._epochs.setdefault(key, set()).add(int(epoch))
        self.before = self.spent
        self._keys: dict[str, str] = {}  # running Ray trial id -> its trial key
        # Trials a stopped driver left running were started within the budget: what they have left stays set
        # aside until the searcher proposes them again (they resume where their checkpoint is).
        self._interrupted = set(interrupted)

    @property
    def spent(self) -> int:
        """Epochs the study holds: every trial's, earlier driver runs included, each epoch once (a resumed trial
        replays its epochs; those a killed driver trained but never recorded count when they are replayed)."""
        return sum(map(len, self._epochs.values()))

    def _left(self, key: str) -> int:
        return max(0, self.per_trial - len(self._epochs.get(key, ())))

    @property
    def reserved(self) -> int:
        """Epochs the running and the interrupted trials may still train: theirs, set aside."""
        return sum(self._left(k) for k in self._keys.values()) + sum(self._left(k) for k in self._interrupted)

    @property
    def reached(self) -> bool:
        """No new trial fits in what is left (running and interrupted trials' shares set aside)."""
        return self.spent + self.reserved + self.per_trial > self.budget

    def _count(self, trial_id: str, result: dict[str, Any] | None) -> None:
        if result and "epoch" in result:
            self._epochs.setdefault(self._keys.get(trial_id, trial_id), set()).add(int(result["epoch"]))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        if self.reached and not self._interrupted:  # wait while running trials may free their share, else done
            return None if self._keys else Searcher.FINISHED
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            key = self.key_of(config) if self.key_of else trial_id
            self._interrupted.discard(key)
            self._keys[trial_id] = key
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._count(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        # Tune does not pass a trial's last result to on_trial_result when the scheduler stops it there
        # (ASHA at a rung or at the last epoch): it arrives here.
        self._count(trial_id, result)
        self._keys.pop(trial_id, None)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:  # Tune saves a wrapper's own state beside the searcher's
        return {"budget": self.budget, "per_trial": self.per_trial, "before": self.before,
                "epochs": {k: sorted(v) for k, v in self._epochs.items()}, "keys": dict(self._keys),
                "interrupted": sorted(self._interrupted)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.budget, self.per_trial, self.before = state["budget"], state.get("per_trial", 1), state.get("before", 0)
        self._epochs = {k: set(v) for k, v in state["epochs"].items()}
        self._keys, self._interrupted = dict(state.get("keys", {})), set(state.get("interrupted", ()))

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
