"""What every search strategy is: one object, found by name in ``search.strategies.STRATEGIES``.

A :class:`Strategy` checks the options it is given, says which domain it samples (the study
file's grid of ``values``, or its continuous ``ranges``), and opens (or resumes) a search on a
study: an :class:`OpenSearch`, which holds the Ray Tune ``Searcher`` and answers what the
driver, the final stage and the first line's estimate ask of it. The driver never asks which
strategy it runs; Ray Tune's ``Searcher`` and Optuna's ``BaseSampler`` are the models followed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from search.errors import StudyError

if TYPE_CHECKING:
    from trainables.family import Family
    from search.store.study import StudyStore

@dataclass(frozen=True)
class StrategyOption:
    """A command-line option a strategy brings (``--greedy-margin``, ``--population``): the driver and the CLI learn
    it from the strategy (pix2pix's ``modify_commandline_options``), and the strategy reads it as
    ``options.<dest>``, its ``default`` when not given."""

    flag: str  # "--greedy-margin"
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


UNBOUNDED = 1_000_000  # trials of an Optuna study that --budget-epochs ends (and no --samples)
DOMAINS = ("grid", "ranges")  # what a strategy samples: the study's values (greedy's grid) or its ranges


@dataclass
class SearcherRecord:
    """A trial as the searcher saw it end (start-up reconciliation compares it with the Parquet files)."""

    config: dict[str, Any]  # as the searcher proposed it
    errored: bool  # the searcher recorded a failure (not a result)
    columns: dict[str, Any] | None = None  # the strategy's columns of trials.parquet for it (greedy's block)
    history: list[dict[str, Any]] | None = None  # its reported epochs, where the strategy keeps its own checkpoints


@dataclass
class SearchContext:
    """What a strategy opens a search with: the study, its space, and the options of this run."""

    store: "StudyStore"
    space: Any  # search.space.Space
    family: "type[Family]"
    options: Any  # search.runner.options.SearchOptions: the strategy reads its own options there
    domain: str
    samples: int  # total trials of the study (UNBOUNDED when --budget-epochs alone ends it)
    expected: int  # trials the study is expected to run, for a sampler's start-up
    key_of: Callable[[dict[str, Any]], str]  # a searcher's config -> its trial key
    max_blocks: int | None = None  # the preset's cap on greedy's blocks
    epochs: int = 1  # epochs per trial (a population member's whole run)
    say: Callable[[str], None] = field(default=lambda line: print(line, flush=True))

    @property
    def name(self) -> str:
        return self.store.name


@dataclass
class TuneRun:
    """How Ray Tune runs a search's trials (:meth:`OpenSearch.tune_run`). A searcher strategy gives its searcher
    and keeps the rest as it is; a strategy that is not a searcher (population-based training) brings its own
    trials (``param_space``), trial scheduler, trainable and callbacks, on its own path."""

    searcher: Any = None  # the Ray Tune Searcher; None: the trials come from param_space
    num_samples: int = -1  # for Tune: -1 (until the searcher says FINISHED) or a count
    param_space: dict[str, Any] | None = None
    scheduler: Any = None  # the strategy's own trial scheduler; None: --scheduler's
    train: Callable | None = None  # the trainable's function (config, data, family); None: trainables.loop.run_trial
    callbacks: list[Any] = field(default_factory=list)  # more Ray Tune callbacks
    checkpoints_kept: int = 1  # Ray checkpoints kept per trial (trials checkpoint in the study store: trainables.loop)
    reuse_actors: bool = True  # a new trial runs in a finished trial's worker process (no start-up per trial)


class OpenSearch(ABC):
    """A strategy's search on one study, opened or resumed for one driver run."""

    searcher: Any  # the Ray Tune Searcher
    num_samples: int = -1  # for Tune: -1 (until the searcher says FINISHED) or a count
    to_run: int | None = None  # trials left: None unknown, 0 nothing
    done: dict[str, SearcherRecord]  # trial key -> how the searcher saw it end
    # Ray trial id -> the group it belongs to (greedy: its block, judged after earlier blocks only), where trials
    # come in groups; None: ASHA judges each trial against all. Ray pickles it with the callbacks: no lease in it.
    block_of: Callable[[str], Any] | None = None
    # Ray trial id -> the strategy's columns of trials.parquet for it (Strategy.columns); None: it adds none. Ray
    # pickles it with the callbacks too. group_column: the column that holds a trial's group (ASHA's resumed rungs).
    columns_of: Callable[[str], dict[str, Any]] | None = None
    group_column: str | None = None
    metric = "best_val_l1"  # what Ray Tune's scheduler ranks trials by

    def identity(self, configs: Any) -> Any:
        """The results' view of a trial (search.store.results.TrialIdentity): by default, what its config trains."""
        return configs.identity()

    def tune_run(self, plan: Any, results: Any) -> TuneRun:
        """How Ray Tune runs this search's trials: by default its searcher proposing them to the shared loop."""
        return TuneRun(searcher=self.searcher, num_samples=self.num_samples)

    def final_configurations(self, results: Any, k: int) -> list[tuple[str, dict[str, Any]]] | None:
        """The final stage's configurations, as (trial id, config) best first; None: the ``k`` best trials'
        hyperparameters (search.runner.final.top_configurations)."""
        return None

    def continuing(self) -> dict[str, list[dict[str, Any]]]:
        """Trials that continue from a checkpoint without replaying its epochs to Ray (population members):
        trial key -> the epochs the checkpoint holds, for reconciliation to record the ones the study lacks.
        Every other trial replays its epochs when it resumes (trainables.loop)."""
        return {}

    def planned_total(self) -> Callable[[], int] | None:
        """() -> the study's total trial count as now planned (None: unknown), for the progress line.

        Ray pickles the progress line with the callbacks: the callable must not hold a lease or a connection."""
        return None

    def planned_blocks(self) -> list[int]:
        """Trials still to train, round by round, for the first line's estimate."""
        return [self.to_run or 0]

    @abstractmethod
    def reached_end(self) -> bool:
        """After an uninterrupted run: whether the search has nothing left to propose (then the final stage runs)."""

    def close(self) -> None:
        """Release what the search holds (a lease in a shared storage)."""


class Strategy(ABC):
    """One search strategy; subclasses set ``name`` and ``summary`` and implement :meth:`open`.

    What a strategy brings beyond its search: its command-line ``options`` (:class:`StrategyOption`), the
    ``columns`` it adds to trials.parquet (name -> int, float, str or bool; :meth:`OpenSearch.trial_columns` fills
    them), and the ``study_sections`` of a study file it reads (``[pbt]``)."""

    name: str
    summary: str
    domains: tuple[str, ...] = DOMAINS
    legacy_domain = "ranges"  # the domain of a study made before --domain existed
    options: tuple[StrategyOption, ...] = ()
    columns: dict[str, str] = {}
    column_meanings: dict[str, str] = {}  # what each of its columns holds (docs/results.md renders it)
    study_sections: tuple[str, ...] = ()

    def check(self, options: Any) -> None:
        """Refuse options this strategy cannot honour (raises StudyError)."""
        mine = {option.dest for option in self.options}
        others = sorted(set(options.strategy_options) - mine)
        if others:
            flags = ", ".join("--" + name.replace("_", "-") for name in others)
            own = ", ".join(option.flag for option in self.options) or "none of its own"
            raise StudyError(f"{flags}: not an option of --strategy {self.name} (its options: {own}); drop it, or "
                             "pick the strategy it belongs to.")
        if options.domain is not None and options.domain not in self.domains:
            raise StudyError(f"--domain {options.domain}: {self.name} samples {' or '.join(self.domains)} only; "
                             "drop --domain, or pick another strategy.")

    def trial_line(self, row: dict[str, Any]) -> tuple[str, str | None]:
        """How a finished trial's line names it: a prefix, and the one hyperparameter to show (None: all of them)."""
        return "", None

    def option_defaults(self) -> dict[str, Any]:
        return {option.dest: option.default for option in self.options}

    def check_space(self, space: Any, options: Any) -> None:
        """Refuse a study file (and the options read with it) this strategy cannot search, before Ray starts."""

    def domain(self, requested: str | None, record: dict[str, Any] | None) -> str:
        """What this run samples: --domain, else what the study was started with, else the first of :attr:`domains`."""
        if requested:
            return requested
        if record is not None:
            return record.get("domain", self.legacy_domain)
        return self.domains[0]

    @abstractmethod
    def open(self, context: SearchContext) -> OpenSearch:
        """Open the search on the study, or resume it from what the study holds."""
