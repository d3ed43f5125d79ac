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
from search.strategies.base import OpenSearch, SearchContext, Strategy, StrategyOption

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
    options = (
        StrategyOption("--max-sweeps", "greedy: walk the parameter order up to this many times", int, 1),
        StrategyOption("--greedy-margin", "greedy: adopt a value only if it lowers the held value's L1 by more than "
                       "this fraction (default: sqrt 2 x the family's measured seed-to-seed noise)", float),
        StrategyOption("--blocks", "greedy: only the first N parameters", int, metavar="N"),
    )
    columns = {"greedy_sweep": "int", "greedy_block": "int", "greedy_param": "str"}
    column_meanings = {"greedy_sweep": "the sweep (a pass over the order)", "greedy_block": "the block (one parameter's "
                       "values) within the study", "greedy_param": "the parameter the block varied"}

    def trial_line(self, row: dict[str, Any]) -> tuple[str, str | None]:
        if row.get("greedy_param"):  # the block's parameter, the one value the trial changed
            return f"block {row['greedy_block']} ", row["greedy_param"]
        return "", None

    def check(self, options: Any) -> None:
        super().check(options)
        if options.max_sweeps < 1:
            raise StudyError(f"--max-sweeps must be at least 1, got {options.max_sweeps}.")
        if options.blocks is not None and options.blocks < 1:
            raise StudyError(f"--blocks must be a positive whole number, got {options.blocks}.")
        if options.greedy_margin is not None and not 0.0 <= options.greedy_margin < 1.0:
            raise StudyError(f"--greedy-margin is a fraction of the held value's L1 in [0, 1) (0.05: 5% lower), "
                             f"got {options.greedy_margin}.")
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
                                  max_blocks=options.blocks or context.max_blocks, state_file=state,
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
