"""Population-based training (``--strategy pbt``, Jaderberg et al. 2017) and PB2 (``--strategy pb2``, Parker-Holder et al. 2020).

A population of members trains at once, each from the study's defaults (or ``--from-study``'s
best configuration) with the study file's ``[pbt] perturb`` hyperparameters drawn afresh (member 0
keeps the defaults). Every ``--perturbation-interval`` epochs Ray Tune's scheduler ranks the members
by their current val L1: each member of the bottom quarter takes the weights of one of the top
quarter (exploit) and goes on with that member's hyperparameters perturbed (explore). PBT perturbs
by a factor of 0.8 or 1.2, or draws the value again (one time in four), within the study's range
(values without a range move to a neighbouring value); PB2 chooses the new values with a
Gaussian-process bandit inside the ranges, fitted to the change of each member's val L1 between
decisions (so at the first decision, with one result per member, it copies the donor's values).
Both are Ray Tune's own schedulers (``PopulationBasedTraining``, ``PB2``), in synchronous mode:
decisions wait until every member has reached the interval, so they do not depend on which member
reports first. No decision is made at the members' last epoch: nothing would train from it.

Members are trials of one Ray Tune run whose configs change at each exploit. Their identity is
their index (``member``): a member's trial key (``trials.parquet``'s ``trial_id``) hashes the
study's base configuration and the index, not the hyperparameters it has now, so its rows stay one
trial. Weights live in the study store (:mod:`trainables.population`); each member's schedule (the
hyperparameters of each epoch, and whose weights it took) lands in ``schedules.parquet``
(:mod:`search.store.schedules`). A new driver after a kill hands each member the hyperparameters it
last had and it continues from its newest snapshot.

The final stage re-trains the best members' schedules (their lineage: the epochs of the donors
they copied, then their own) from scratch with new seeds, so a population study has a test L1
with an interval like every other study (the idea of Ray Tune's ``PopulationBasedTrainingReplay``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.errors import StudyError
from search.strategies.base import OpenSearch, SearchContext, Strategy, StrategyOption

if TYPE_CHECKING:
    from search.strategies.population_search import PopulationSearch

DEFAULT_POPULATION = 4  # members when neither --population nor --budget-epochs says (Ray Tune's examples use 4 to 8)
QUANTILE = 0.25  # the share of members that exploit, and that are copied, at each decision (Ray Tune's default)


def default_interval(epochs: int) -> int:
    """Epochs between decisions: a quarter of a member's epochs (three decisions a run), at least 1."""
    return max(1, epochs // 4)


class PopulationStrategy(Strategy):
    name = "pbt"
    summary = "population-based training (Ray Tune's PopulationBasedTraining): members copy and perturb the best"
    domains = ("ranges",)
    options = (
        StrategyOption("--population", "pbt/pb2: members trained at once (default: what --budget-epochs affords, "
                       "else 4)", int),
        StrategyOption("--perturbation-interval", "pbt/pb2: epochs between exploit/explore decisions (default: a "
                       "quarter of a member's epochs)", int),
        StrategyOption("--from-study", "pbt/pb2: start every member from this study's best configuration (same "
                       "--runs-dir)"),
    )
    study_sections = ("pbt",)

    def check(self, options: Any) -> None:
        super().check(options)
        if options.population is not None and options.population < 2:
            raise StudyError(f"--population {options.population}: population-based training needs at least 2 members.")
        if options.perturbation_interval is not None and options.perturbation_interval < 1:
            raise StudyError("--perturbation-interval must be at least 1 epoch.")

    def check_space(self, space: Any, options: Any) -> None:
        if not perturbed(space):
            raise StudyError(f"{space.source} has no [pbt] perturb list: name the hyperparameters members may change "
                             "while they train (studies/gan.toml shows one), or pick another --strategy.")
        self.require_ranges(space)
        if options.epochs is not None:  # else the preset's, known once the driver knows the cluster (open)
            self._interval(options, options.epochs)

    def _interval(self, options: Any, epochs: int) -> int:
        """--perturbation-interval, or its default for ``epochs``; refused when members would never be perturbed."""
        if epochs < 2:
            raise StudyError(f"{self.name}: members train {epochs} epoch; perturbing needs at least 2.")
        interval = options.perturbation_interval or default_interval(epochs)
        if interval >= epochs:
            raise StudyError(f"--perturbation-interval {interval} is not below the {epochs} epochs a member "
                             "trains: members would never be perturbed. Use fewer, or more --epochs.")
        return interval

    def open(self, context: SearchContext) -> OpenSearch:
        space, options = context.space, context.options
        self.check_space(space, options)
        interval = self._interval(options, context.epochs)
        population = options.population or (context.expected if options.budget_epochs else DEFAULT_POPULATION)
        if population < 2:
            raise StudyError(f"--budget-epochs {options.budget_epochs} affords {population} member of {context.epochs} "
                             "epochs; population-based training needs at least 2: raise the budget or set --population.")
        from search.strategies.population_search import PopulationSearch, from_study

        base = from_study(options, space, context) if options.from_study else space.defaults()
        self.require_ranges(space, base)  # --from-study's best may sit in another case of a perturbed parameter
        context.say(f"{self.name}: {population} members of {context.epochs} epochs, perturbing "
                    f"{', '.join(perturbed(space))} every {interval} epochs (the bottom {QUANTILE:.0%} take the weights "
                    f"of the top {QUANTILE:.0%}); everything else fixed"
                    + (f" at {options.from_study}'s best" if options.from_study else " at the study's defaults"))
        return PopulationSearch(self, context, base, population, interval, perturbed(space))

    def require_ranges(self, space: Any, config: dict[str, Any] | None = None) -> None:
        """PBT perturbs a range continuously and moves along values; both will do."""

    def mutations(self, search: "PopulationSearch") -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
        from ray import tune

        mutations, bounds = {}, {}
        for name in search.perturb:
            span = search.bounds(name)
            if span is None:
                mutations[name] = list(search.space.choice(name, search.base).values)
            else:
                low, high, log = span
                mutations[name] = tune.loguniform(low, high) if log else tune.uniform(low, high)
                bounds[name] = (low, high)
        return mutations, bounds

    def scheduler(self, search: "PopulationSearch") -> Any:
        from ray.tune.schedulers import PopulationBasedTraining

        from search.strategies.population_search import _Clip, _scheduler_class

        mutations, bounds = self.mutations(search)
        return _scheduler_class(PopulationBasedTraining)(time_attr="epoch", perturbation_interval=search.interval,
                                       hyperparam_mutations=mutations, quantile_fraction=QUANTILE,
                                       resample_probability=0.25, custom_explore_fn=_Clip(bounds), synch=True)


class PB2Strategy(PopulationStrategy):
    name = "pb2"
    summary = "population-based bandits (Ray Tune's PB2): PBT whose explore step is a Gaussian-process bandit"

    def require_ranges(self, space: Any, config: dict[str, Any] | None = None) -> None:
        config = space.defaults() if config is None else config  # the members' base: their parents' cases
        missing = [n for n in perturbed(space) if not space.choice(n, config).has_range]
        if missing:
            raise StudyError(f"{space.source}: pb2 explores continuous ranges, and {', '.join(missing)} "
                             "has none: add a range to its [params] table, or use --strategy pbt.")

    def scheduler(self, search: "PopulationSearch") -> Any:
        from ray.tune.schedulers.pb2 import PB2

        from search.strategies.population_search import KeepsBanditData, _scheduler_class

        bounds = {name: list(search.bounds(name)[:2]) for name in search.perturb}
        return _scheduler_class(PB2, KeepsBanditData)(time_attr="epoch", perturbation_interval=search.interval,
                                                      hyperparam_bounds=bounds, quantile_fraction=QUANTILE, synch=True)


STRATEGY = PopulationStrategy()
PB2 = PB2Strategy()


def perturbed(space: Any) -> tuple[str, ...]:
    """The study file's ``[pbt] perturb = [...]``: what population-based training changes while members train. Each
    must be a parameter of the study that can change during training (a loss weight or an optimizer setting: the
    family card's ``retunable``); anything else is a StudyFileError naming the file."""
    from search.space import StudyFileError
    from trainables.families import family_card

    source, table, params = space.source, space.sections.get("pbt", {}), space.by_name
    family_cls = family_card(space.family)

    def _fail(source: str, message: str) -> StudyFileError:
        return StudyFileError(f"{source}: {message}")

    unknown = set(table) - {"perturb"}
    if unknown:
        raise _fail(source, f"[pbt]: unknown keys {sorted(unknown)}; allowed: perturb.")
    names = table.get("perturb", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _fail(source, "[pbt] perturb must be a list of parameter names without repeats.")
    for name in names:
        if name not in params:
            raise _fail(source, f"[pbt] perturb names {name!r}, which has no [params.{name}] table.")
        if not family_cls.retunable(name):
            raise _fail(source, f"[pbt] perturb names {name!r}, which cannot change while a {family_cls.name} model "
                                f"trains; what can: {', '.join(n for n in family_cls.retunable_names() if n in params)}.")
    return tuple(names)
