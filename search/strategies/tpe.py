"""TPE for small budgets: Optuna's ``TPESampler`` with the settings a 15-40 trial study needs.

- ``multivariate=True, group=True``: one joint density per group of parameters that occur
  together, so the conditional learning rates (``lr@adam``, ``lr@sgd``) and Adam's ``beta1``
  are modelled with the optimizer that makes them exist, not independently;
- ``constant_liar=True``: trials still running count as bad results, so parallel workers
  do not all propose the same promising point;
- start-up trials: a third of the budget in trials, between 3 and 10 (Optuna's default of
  10 random trials is most of a 16-trial study). The study's defaults are always the first.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

from search.strategies.optuna_strategy import OptunaStrategy

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler


def startup_trials(samples: int) -> int:
    """Random trials before the model is fitted, for a study of ``samples`` trials."""
    return max(3, min(10, samples // 3))


def tpe_sampler(seed: int, *, startup: int) -> "BaseSampler":
    # Module level, not a closure: Ray pickles the searcher (and so the sampler) into its experiment state.
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                      constant_liar=True)


class TPEStrategy(OptunaStrategy):
    name = "tpe"
    summary = "Optuna TPE, multivariate and grouped, constant liar, a third of the trials (3 to 10) random"

    def sampler(self, samples: int, n_params: int) -> "Callable[[int], BaseSampler]":
        return functools.partial(tpe_sampler, startup=startup_trials(samples))


STRATEGY = TPEStrategy()
