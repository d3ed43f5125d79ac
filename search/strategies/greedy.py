"""The report's greedy coordinate descent as a Ray Tune Searcher.

Start from the study's defaults. For each parameter in the study's order (a *block*),
propose every candidate value with all other parameters held; when the whole block has
finished, the value with the lowest objective becomes the new default and the next
block starts. Configurations already evaluated are never proposed again (the held
default of every block was evaluated in an earlier one). Parameters that do not exist
under the current defaults (Adam's beta1 when the optimizer is SGD) are skipped. With
``max_sweeps > 1`` the order is walked again until a sweep changes nothing.

A challenger replaces the held value only if its L1 is lower by more than ``margin`` (a
fraction of the held value's L1): one training run per configuration cannot tell apart
differences smaller than the seed-to-seed noise, and adopting them makes the path a coin
toss (each family's ``Family.noise`` is its measured noise; ``benchmarks/seeds.py`` measures it).
Each block records its held value, the best challenger's advantage and the decision.

Ray calls ``suggest`` whenever a slot is free; within a block all proposals are made at
once (in parallel as far as resources allow), and ``suggest`` answers ``None`` (wait)
until the block resolves. Trials stopped early by a scheduler such as ASHA, diverged
trials and errored trials all report a value (their best so far, or the worst possible
L1), so every block resolves.

The state is explicit, versioned JSON, saved atomically (``greedy_state.json`` in the study
store) after every completed trial, so a killed driver resumes in the block it was in.
:class:`GreedyStrategy` is the strategy object the driver finds by the name ``greedy``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.errors import StudyError
from search.strategies.base import OpenSearch, SearchContext, Strategy

if TYPE_CHECKING:
    from trainables.families import FamilyCard


def default_margin(family: "FamilyCard") -> float:
    """The margin greedy uses unless told otherwise: sqrt(2) x the family's measured noise (the standard
    deviation of the difference between two single runs of the same configuration)."""
    return family.noise_margin()


class GreedyStrategy(Strategy):
    name = "greedy"
    summary = "the report's coordinate descent over the study's values, from its defaults"
    domains = ("grid",)
    legacy_domain = "grid"

    def check(self, options: Any) -> None:
        if options.domain == "ranges":
            from search.strategies import STRATEGIES

            others = ", ".join(name for name in STRATEGIES if name != self.name)
            raise StudyError("--domain ranges: greedy walks the study's discrete values; drop --domain, or pick "
                             f"another strategy ({others}).")

    def open(self, context: SearchContext) -> OpenSearch:
        from search.strategies.greedy_searcher import GreedySearch, GreedySearcher, block_line

        options = context.options
        margin = options.greedy_margin if options.greedy_margin is not None else default_margin(context.family)
        state = context.store.state_file("greedy_state.json")
        searcher = GreedySearcher(context.space, max_sweeps=options.max_sweeps,
                                  max_blocks=options.max_blocks or context.max_blocks, state_file=state,
                                  margin=margin, on_block=lambda block: context.say(block_line(block)))
        if state.exists():
            searcher.set_state(state.read(), state)
            stored = searcher.state.margin
            if options.greedy_margin is not None and abs(options.greedy_margin - stored) > 1e-12:
                raise StudyError(f"study {context.name} was started with --greedy-margin {stored:g}; a resumed greedy "
                                 "search keeps its margin (its decisions so far used it). Drop the option, or use a "
                                 "new --study.")
        return GreedySearch(searcher, context.key_of)




STRATEGY = GreedyStrategy()
