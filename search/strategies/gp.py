"""Gaussian-process Bayesian optimisation: Optuna's ``GPSampler`` (needs scipy).

A GP with a Matérn-5/2 kernel over the parameters that every trial has, and log expected
improvement as the acquisition. It fits the few-trial regime better than a density model, but it
cannot model conditional parameters: the learning rate of each optimizer (``lr@adam``) and
Adam's ``beta1`` exist in some trials only, and are drawn at random.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

from search.strategies.optuna_strategy import OptunaStrategy
from search.strategies.tpe import startup_trials

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler


def gp_sampler(seed: int, *, startup: int) -> "BaseSampler":
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=False,
                                     warn_independent_sampling=False)


class GPStrategy(OptunaStrategy):
    name = "gp"
    summary = "Optuna's Gaussian-process sampler (log expected improvement)"

    def sampler(self, samples: int, n_params: int) -> "Callable[[int], BaseSampler]":
        return functools.partial(gp_sampler, startup=startup_trials(samples))


STRATEGY = GPStrategy()
