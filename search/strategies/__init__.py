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

from search.errors import StudyError
from search.strategies.base import Strategy
from search.strategies.bohb import BOHBStrategy
from search.strategies.gp import GPStrategy
from search.strategies.greedy import GreedyStrategy
from search.strategies.population import PB2Strategy, PopulationStrategy
from search.strategies.random_sampling import RandomStrategy
from search.strategies.tpe import TPEStrategy

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    GreedyStrategy(),
    TPEStrategy(),
    BOHBStrategy(),
    GPStrategy(),
    RandomStrategy(),
    PopulationStrategy(),
    PB2Strategy(),
)}


def find_strategy(strategy: str | Strategy) -> Strategy:
    """The strategy of a name (or the object itself: a benchmark's variant); a clear error for an unknown name."""
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise StudyError(f"unknown --strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    return STRATEGIES[strategy]
