"""Random sampling: the baseline every other strategy is measured against (Optuna's ``RandomSampler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from search.strategies.optuna_strategy import OptunaStrategy

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler


def random_sampler(seed: int) -> "BaseSampler":
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


class RandomStrategy(OptunaStrategy):
    name = "random"
    summary = "random sampling"

    def sampler(self, samples: int, n_params: int) -> "Callable[[int], BaseSampler]":
        return random_sampler


STRATEGY = RandomStrategy()
