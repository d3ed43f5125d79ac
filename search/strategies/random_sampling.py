"""Random sampling: the baseline every other strategy is measured against (Optuna's ``RandomSampler``)."""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.samplers import BaseSampler

from search.strategies.optuna_study import OptunaStrategy


class RandomStrategy(OptunaStrategy):
    name = "random"
    summary = "random sampling"

    def sampler(self, samples: int, n_params: int) -> Callable[[int], BaseSampler]:
        return optuna.samplers.RandomSampler
