"""Multi-fidelity TPE (BOHB-style): a model fitted on the epochs ASHA already paid for.

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

import functools
from typing import TYPE_CHECKING, Callable

from search.strategies.optuna_strategy import OptunaStrategy

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler


def rung_tpe_sampler(seed: int, *, min_points: int) -> "BaseSampler":
    from search.strategies.bohb_sampler import RungTPESampler

    return RungTPESampler(seed, min_points=min_points)


class BOHBStrategy(OptunaStrategy):
    name = "bohb"
    summary = "multi-fidelity TPE: fitted on the results at the highest epoch enough trials reached"

    def sampler(self, samples: int, n_params: int) -> "Callable[[int], BaseSampler]":
        return functools.partial(rung_tpe_sampler, min_points=n_params + 1)  # BOHB's default: dimensions + 1


STRATEGY = BOHBStrategy()
