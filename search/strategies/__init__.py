"""The search strategies ``--strategy`` accepts: one object each, found by name here and only here.

``greedy`` is the report's coordinate descent (``greedy.py``); ``pbt`` and ``pb2`` are population-based
training on Ray Tune's schedulers (``population.py``); every other strategy is an Optuna
sampler behind Ray Tune's ``OptunaSearch`` (``optuna_study.py`` holds what they share: the
persistent storage, per-trial seeds, repair after a killed driver), each in its own file.
``base.py`` says what a strategy is. To add one: write its module with a :class:`Strategy`
subclass, and add one line to :data:`STRATEGIES` (CONTRIBUTING.md). ``benchmarks/README.md``
(section 3) measures them against each other at greedy's budget.
"""

from __future__ import annotations

from models.registry import Registry, UnknownName
from search.errors import StudyError
from search.strategies.base import Strategy

# name -> the strategy object, its module imported only when the strategy is asked for (the heavy parts, Ray's
# searchers and Optuna's samplers, only when a search opens).
STRATEGIES = Registry("--strategy", {
    "greedy": "search.strategies.greedy:STRATEGY",
    "tpe": "search.strategies.tpe:STRATEGY",
    "bohb": "search.strategies.bohb:STRATEGY",
    "gp": "search.strategies.gp:STRATEGY",
    "random": "search.strategies.random_sampling:STRATEGY",
    "pbt": "search.strategies.population:STRATEGY",
    "pb2": "search.strategies.population:PB2",
})


def study_sections() -> list[str]:
    """The study-file sections the registered strategies read (population-based training's ``pbt``)."""
    return list(dict.fromkeys(section for _, strategy in STRATEGIES.items() for section in strategy.study_sections))


def find_strategy(strategy: str | Strategy) -> Strategy:
    """The strategy of a name (or the object itself: a benchmark's variant); a clear error for an unknown name."""
    if isinstance(strategy, Strategy):
        return strategy
    try:
        return STRATEGIES.get(strategy)
    except UnknownName as err:
        raise StudyError(str(err)) from None
