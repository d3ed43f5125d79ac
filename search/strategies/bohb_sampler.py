"""The multi-fidelity TPE sampler of ``bohb`` (its strategy object is in ``bohb.py``).

Multi-fidelity TPE (BOHB-style): a model fitted on the epochs ASHA already paid for.

Under ASHA most trials stop after one or two rungs, and plain TPE learns little from them: a
stopped trial counts with its best value so far, next to trials that trained ten times longer.
BOHB (Falkner et al., 2018) fits its density model on the results at *one* budget, the largest
budget that enough trials have reached, so every trial's early epochs inform the next proposal.

:class:`RungTPESampler` does that on an Optuna study: every epoch a trial reports is an Optuna
intermediate value (Ray's ``OptunaSearch`` reports each result), so for each new trial it

1. takes the largest epoch that at least ``min_points`` other trials have reached (BOHB's
   default is the number of parameters + 1; lower rungs have more trials, higher ones better
   estimates);
2. builds an in-memory study of those trials with their best val L1 *at that epoch* as the
   value, and trials still running below it as bad results (the constant liar, done by hand:
   Optuna's would write into the real study's storage);
3. lets a multivariate, grouped TPE propose from it.

Before enough trials reach even the first epoch it samples at random, as BOHB does. It works with
any scheduler; with ASHA it is the BOHB recipe (HyperBand's successive halving run asynchronously).
The proposal depends only on the stored trials and the trial's seed, so a resumed study proposes
what an uninterrupted one would.
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
