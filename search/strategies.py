"""The search strategies ``--strategy`` accepts, by name.

``greedy`` is the report's coordinate descent (``search/greedy.py``); every other strategy is an
Optuna sampler behind Ray Tune's ``OptunaSearch`` (``search/optuna_search.py`` holds what they
share: the persistent storage, per-trial seeds, repair after a killed driver). Each sampler lives
in its own file; this table only names them and says which settings they take from the study.
``benchmarks/README.md`` (section 3) measures them against each other at greedy's budget.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.samplers import BaseSampler

from search.bohb import rung_tpe_sampler
from search.gp import gp_sampler
from search.tpe import startup_trials, tpe_sampler


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    # (samples, number of parameters) -> a factory seed -> sampler; None for greedy
    sampler: Callable[[int, int], Callable[[int], BaseSampler]] | None = None


def _tpe(samples: int, n_params: int) -> Callable[[int], BaseSampler]:
    return functools.partial(tpe_sampler, startup=startup_trials(samples))


def _random(samples: int, n_params: int) -> Callable[[int], BaseSampler]:
    return optuna.samplers.RandomSampler


def _gp(samples: int, n_params: int) -> Callable[[int], BaseSampler]:
    return functools.partial(gp_sampler, startup=startup_trials(samples))


def _bohb(samples: int, n_params: int) -> Callable[[int], BaseSampler]:
    return functools.partial(rung_tpe_sampler, min_points=n_params + 1)  # BOHB's default: dimensions + 1


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("greedy", "the report's coordinate descent over the study's values, from its defaults"),
    Strategy("tpe", "Optuna TPE, multivariate and grouped, constant liar, a third of the trials random", _tpe),
    Strategy("bohb", "multi-fidelity TPE: fitted on the results at the highest epoch enough trials reached", _bohb),
    Strategy("gp", "Optuna's Gaussian-process sampler (log expected improvement)", _gp),
    Strategy("random", "random sampling", _random),
)}


def sampler_factory(strategy: str, *, samples: int, n_params: int) -> Callable[[int], BaseSampler]:
    """seed -> a fresh sampler of ``strategy`` (``search.optuna_search.ReseededSampler`` calls it per trial)."""
    found = STRATEGIES[strategy].sampler
    if found is None:
        raise ValueError(f"{strategy} is not an Optuna strategy")
    return found(samples, n_params)
