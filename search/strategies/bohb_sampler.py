"""The multi-fidelity TPE sampler of ``bohb`` (its strategy object is in ``bohb.py``).

What it does and why: the docstring of ``search/strategies/bohb.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState


class RungTPESampler(BaseSampler):
    def __init__(self, seed: int, *, min_points: int) -> None:
        if min_points < 2:
            raise ValueError(f"min_points must be at least 2, got {min_points}")
        self.seed, self.min_points = seed, min_points
        self._random = RandomSampler(seed)
        self._tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True, group=True,
                                               constant_liar=False)  # ours, by hand (above)
        self._proxies: dict[int, tuple[optuna.Study, int] | None] = {}  # trial number -> (model study, epoch)

    def fidelity(self, study: optuna.Study, trial: FrozenTrial) -> tuple[optuna.Study, int] | None:
        """The study the model is fitted on and its epoch, or None while too few trials have results."""
        if trial.number in self._proxies:
            return self._proxies[trial.number]
        others = [t for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        reached = Counter(step for t in others for step in t.intermediate_values)
        steps = [s for s, n in reached.items() if n >= self.min_points]
        if not steps:
            self._proxies[trial.number] = None
            return None
        epoch = max(steps)
        at_epoch = [(t, v) for t in others if math.isfinite(v := t.intermediate_values.get(epoch, math.nan))]
        worst = max(v for _, v in at_epoch)
        proxy = optuna.create_study(direction="minimize")
        for t, value in at_epoch:
            proxy.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=value))
        for t in others:  # running and not yet at this epoch: a bad result, so parallel proposals spread out
            if t.state == TrialState.RUNNING and epoch not in t.intermediate_values and t.params:
                proxy.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=worst))
        self._proxies = {trial.number: (proxy, epoch)}  # only the current trial's is needed again
        return proxy, epoch

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        found = self.fidelity(study, trial)
        return {} if found is None else self._tpe.infer_relative_search_space(found[0], trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        found = self.fidelity(study, trial)
        return {} if found is None else self._tpe.sample_relative(found[0], trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        found = self.fidelity(study, trial)
        if found is None:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return self._tpe.sample_independent(found[0], trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()
        self._tpe.reseed_rng()
