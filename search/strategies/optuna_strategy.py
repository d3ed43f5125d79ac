"""What every Optuna strategy is (tpe, bohb, gp, random): an Optuna sampler behind Ray Tune's ``OptunaSearch`` on the
study's persistent Optuna storage. A strategy here only says which sampler (:meth:`OptunaStrategy.sampler`);
storage, resume, the lease and per-trial seeds come with :meth:`OptunaStrategy.open`, from ``optuna_study.py``
(imported when a search opens: Optuna and Ray with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from search.errors import StudyError
from search.strategies.base import UNBOUNDED, OpenSearch, SearchContext, Strategy

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler


class OptunaStrategy(Strategy):
    """A strategy that is an Optuna sampler behind Ray Tune's ``OptunaSearch`` (subclasses: :meth:`sampler`)."""

    def sampler(self, samples: int, n_params: int) -> Callable[[int], BaseSampler]:
        """seed -> a fresh sampler, for a study expected to run ``samples`` trials over ``n_params`` parameters.

        Module-level functions (or partials of them), not closures: Ray pickles the searcher."""
        raise NotImplementedError

    def open(self, context: SearchContext) -> OpenSearch:
        from search.store.lease import take_lease
        from search.strategies.optuna_study import OptunaSearchRun, StorageError, open_storage, open_study

        url = context.options.storage or context.store.optuna_url()
        try:
            storage = open_storage(url)
        except StorageError as err:
            raise StudyError(str(err)) from None
        lease = take_lease(url, context.name, context.say)  # before repairing anything: the trials may be another driver's
        try:
            study = open_study(storage, context.name, context.space,
                               sampler=self.sampler(context.expected, len(context.space.params)),
                               seed=context.options.seed, samples=context.samples, key_of=context.key_of,
                               use_ranges=context.domain == "ranges")
        except BaseException:
            lease.release()
            raise
        bounded = context.samples < UNBOUNDED
        if study.done or study.requeued:
            context.say(f"continuing study {context.name}: {study.done}" + (f" of {context.samples}" if bounded else "")
                        + " trials already done" + (f", {study.to_run} to run" if bounded else "")
                        + (f" ({study.requeued} interrupted by a stopped driver, run again from their checkpoints)"
                           if study.requeued else ""))
        return OptunaSearchRun(study, context.samples, lease)
