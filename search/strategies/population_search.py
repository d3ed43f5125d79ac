"""Population-based training's search on Ray Tune's schedulers (its strategy objects are in ``population.py``).

What it does and why: the docstring of ``search/strategies/population.py``.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from typing import Any, Callable

from search.errors import StudyError
from search.store.results import ResultsStore, TrialIdentity, best_trial
from search.store.schedules import ScheduleCallback, best_schedules, last_hyperparameters, read_rows
from search.strategies.base import OpenSearch, SearchContext, SearcherRecord, TuneRun
from trainables.config import PER_TRIAL_SETTINGS
from trainables.population import read_decisions

class _MemberValue:
    """A member's starting value of one hyperparameter, for Ray Tune's ``sample_from`` (after the grid over members)."""

    def __init__(self, name: str, values: dict[int, Any]) -> None:
        self.name, self.values = name, values

    def __call__(self, config: dict[str, Any]) -> Any:  # the config, its member already resolved by the grid
        return self.values[int(config["member"])]


class _KeepsMember:
    """Mixed into Ray's schedulers: an exploit copies the donor's whole config, and the recipient keeps its own
    member index (Ray's ``_get_new_config`` would hand it the donor's, and two trials would train one member).

    A resumed population (a new driver after a kill) starts a fresh scheduler while its members stand at different
    epochs. Ray's synchronous decision then sets the next decision to the latest member's epoch when that is past
    the usual step, and a member already there is never chosen to run again: every member waits, for ever. The next
    decision is kept past the latest member's epoch (in an uninterrupted run it always is)."""

    _decided_at = 0  # epoch of the last decision a killed run made (0: none, or a fresh population)
    _seed = 0  # the study's seed: each member's draws at a decision come from (seed, member, epoch)
    _root: Any = None  # the members' folders (trainables.population.record_decision)

    def keep_decisions(self, root: Any, seed: int) -> None:
        """Record each decision in ``root``'s decisions.json, and draw each member's exploit and explore from its
        own generator state, so that a decision a kill interrupted is made again as it was (Ray's schedulers draw
        from Python's and NumPy's global generators, whose state a new driver does not have)."""
        self._root, self._seed = root, seed
        self._exploits: dict[int, dict[str, Any]] = {}

    def continue_after(self, decision: int) -> None:
        """A resumed population whose killed run last decided at epoch ``decision``: the next decision comes one
        interval after it, and each member counts its interval from there. A fresh scheduler would count from
        epoch 0 and decide at the first result past one interval, a decision the uninterrupted run never made
        (there, a member that had already trained its last epoch was copied, and its copier ended short)."""
        self._decided_at = decision
        self._next_perturbation_sync = max(self._next_perturbation_sync, decision + self._perturbation_interval)

    def after_decision(self, epoch: int) -> None:
        """Called once a decision is recorded (decisions.json), before any member trains from it."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self._trial_state[trial].last_perturbation_time = self._decided_at

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("status") == "completed":  # a member's last epoch: nothing is left to train from a decision
            from ray.tune.schedulers import TrialScheduler  # (Ray's would copy weights and values never trained on)

            return TrialScheduler.CONTINUE
        before = self._next_perturbation_sync
        decision = super().on_trial_result(tune_controller, trial, result)
        if self._synch and self._next_perturbation_sync != before:  # a decision was made
            if self._root is not None:  # before any member goes on from it
                from trainables.population import record_decision

                record_decision(self._root, int(result[self._time_attr]), self._exploits)
                self._exploits = {}
                self.after_decision(int(result[self._time_attr]))
            latest = max(state.last_train_time for state in self._trial_state.values())
            if self._next_perturbation_sync <= latest:
                self._next_perturbation_sync = latest + self._perturbation_interval
        return decision

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list, lower_quantile: list) -> None:
        import numpy as np

        epoch = int(self._trial_state[trial].last_train_time)
        draws = random.Random(f"{self._seed}-{int(trial.config['member'])}-{epoch}")
        random.seed(draws.getrandbits(64))
        np.random.seed(draws.getrandbits(32))
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        from trainables.population import read_pointer

        super()._exploit(tune_controller, trial, trial_to_clone)
        if self._root is not None:
            donor = read_pointer(self._trial_state[trial_to_clone].last_checkpoint)
            self._exploits[int(trial.config["member"])] = {
                "donor": [donor["member"], donor["epoch"]],
                "config": {name: trial.config[name] for name in self._hyperparam_mutations if name in trial.config}}

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        config, operations = super()._get_new_config(trial, trial_to_clone)
        for name in PER_TRIAL_SETTINGS:
            if name in trial.config:
                config[name] = trial.config[name]
        return config, operations


class KeepsBanditData:
    """Mixed into PB2 (before :class:`_KeepsMember`): the bandit's observations survive a new driver.

    Ray's PB2 fits its Gaussian process to ``self.data``: each member's val L1 at each decision under the values it
    held, and each point it explored, rows labelled by trial. It keeps them in memory only, so a resumed population's
    bandit started empty: with no observation of the donor it copied the donor's values where the uninterrupted run
    explored. Here they are written to ``bandit.json`` beside decisions.json at every decision, labelled by member
    (a new driver names its trials anew), and read back by the next driver's scheduler; before each choice the rows
    are put in (epoch, member) order, which the order results arrive in does not change, so a resumed bandit fits
    the same rows in the same order and chooses as the uninterrupted one did (tests/test_population.py).

    A driver killed between writing decisions.json and bandit.json (one write apart) resumes with the observations
    of the decision before: that decision's rows are missing, and the next choice may differ."""

    def keep_decisions(self, root: Any, seed: int) -> None:
        import numpy as np
        import pandas as pd

        super().keep_decisions(root, seed)
        self._members: dict[str, int] = {}  # a trial's name in this driver -> its member
        where, decided = root / BANDIT_DATA, self._decided_at  # the killed run's last decision (continue_after)
        stored = json.loads(where.read_text()) if where.is_file() else None
        if decided and (stored is None or stored["decided_at"] < decided):
            kept = f"those of epoch {stored['decided_at']}" if stored else "none"
            print(f"note: pb2's bandit kept its observations up to its decision at epoch {decided}, and {kept} are "
                  f"in {BANDIT_DATA} (a study begun by earlier code, or a kill between two writes): its next choices "
                  "may differ from an uninterrupted run's", flush=True)
        if stored is None:
            return
        self.data = pd.DataFrame(stored["rows"], columns=stored["columns"])
        self.last_exploration_time = stored["last_exploration_time"]
        self.current = None if stored["current"] is None else np.array(stored["current"], dtype=float)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        member = int(trial.config["member"])
        self._members[str(trial)] = member
        if len(self.data):  # the stored rows of this member are this trial's
            self.data["Trial"] = self.data["Trial"].replace(_member_label(member), str(trial))

    def _member(self, name: str) -> int:
        """A trial's member: a trial of this driver's, or a stored row's label (a member that ended before it)."""
        return self._members[name] if name in self._members else int(name.removeprefix(MEMBER_LABEL))

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        if len(self.data):
            order = self.data["Trial"].map(self._member)
            self.data = self.data.assign(_member=order).sort_values(["Time", "_member"], kind="stable") \
                .drop(columns="_member").reset_index(drop=True)
        return super()._get_new_config(trial, trial_to_clone)

    def after_decision(self, epoch: int) -> None:
        super().after_decision(epoch)
        if not len(self.data):
            return
        table = self.data.assign(Trial=self.data["Trial"].map(lambda name: _member_label(self._member(name))))
        split = table.to_dict("split")
        payload = {"decided_at": epoch, "columns": split["columns"], "rows": split["data"],
                   "last_exploration_time": self.last_exploration_time,
                   "current": None if self.current is None else self.current.tolist()}
        numpy_scalar = lambda value: value.item()  # noqa: E731 - json's fallback for NumPy's scalars in the rows
        (self._root / BANDIT_DATA).write_text(json.dumps(payload, default=numpy_scalar) + "\n", fsync=True)


BANDIT_DATA = "bandit.json"  # PB2's observations as of its last decision, in the members' folder (trials_root)


MEMBER_LABEL = "member-"  # a stored row's trial: member-<i>


def _member_label(member: int) -> str:
    return f"{MEMBER_LABEL}{member}"


def _scheduler_class(base: type, *mixins: type) -> type:
    return type(f"Member{base.__name__}", (*mixins, _KeepsMember, base), {})


class _Clip:
    """PBT's explore, kept inside the study's ranges (Ray multiplies by 0.8 or 1.2 without bounds)."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high) in self.bounds.items():
            if name in config:
                config[name] = min(max(config[name], low), high)
        return config


class PopulationSearch(OpenSearch):
    """A population on one study: its members' configs, Ray Tune's scheduler, and the final stage's schedules."""

    metric = "val_l1"  # the members' current val L1: PBT ranks what each member's weights do now

    def __init__(self, strategy: Any, context: SearchContext, base: dict[str, Any],
                 population: int, interval: int, perturb: tuple[str, ...]) -> None:
        self.strategy, self.context, self.base = strategy, context, base
        self.population, self.interval = population, interval
        self.space = context.space
        self.perturb = list(perturb)
        results = ResultsStore(context.store, strategy=strategy.name, family=context.family.name,
                               hp_kinds={p.name: p.kind for p in context.space.params})
        ended = {self.member_of(row) for row in results.trials.values() if row["status"] in ("completed", "diverged")}
        rows = read_rows(context.store)
        latest = last_hyperparameters(rows, self.perturb)
        self.configs = {m: {**self.initial(m), **latest.get(m, {})} for m in range(population) if m not in ended}
        self.searcher = None  # Ray's PBT takes its trials from param_space, not a search algorithm
        self.done, self.resumed = self._read_snapshots(context)
        # In synchronous mode no member passes a decision before it is made: one past epoch e means e's was made.
        reached = max([row["epoch"] for row in rows]
                      + [history[-1]["epoch"] for history in self.resumed.values() if history], default=0)
        decisions = read_decisions(context.store.trials_root)
        self.last_decision = max((reached - 1) // interval * interval if reached else 0, max(decisions, default=0))
        newest = {m: max([r["epoch"] for r in rows if r["member"] == m]
                         + [h[-1]["epoch"] for k, h in self.resumed.items() if h and self.key_of({"member": m}) == k],
                         default=0) for m in self.configs}
        for member, outcome in decisions.get(self.last_decision, {}).items():
            if member in self.configs and newest[member] <= self.last_decision:  # decided, not yet trained from:
                self.configs[member].update(outcome["config"])  # the member goes on from its donor (run_member)
        self.to_run = len(self.configs)
        self.num_samples = 1

    # -- members ------------------------------------------------------------------------------

    def bounds(self, name: str) -> tuple[float, float, bool] | None:
        choice = self.space.choice(name, self.base)
        return (choice.low, choice.high, choice.log) if choice.has_range else None

    def initial(self, member: int) -> dict[str, Any]:
        """Member 0: the base configuration; every other: the perturbed hyperparameters drawn at random."""
        config = {**self.base, "member": member, "snapshots": self.interval + 1}
        if member == 0:
            return config
        rng = random.Random(f"{self.context.options.seed}-{member}")
        for name in self.perturb:
            span = self.bounds(name)
            if span is None:
                config[name] = rng.choice(self.space.choice(name, self.base).values)
            elif span[2]:
                config[name] = math.exp(rng.uniform(math.log(span[0]), math.log(span[1])))
            else:
                config[name] = rng.uniform(span[0], span[1])
        return config

    def _read_snapshots(self, context: SearchContext) -> tuple[dict[str, SearcherRecord], dict[str, list[dict]]]:
        """Each unfinished member's newest snapshot, read once: (members that finished before a kill, the history
        of each member that continues from a snapshot).

        A member whose last epoch is in its snapshot but not in trials.parquet (the driver was killed between) is
        not trained again (a finished member restarted would wait forever at PBT's next decision) but recorded
        from its snapshot's history by the driver's reconciliation. A member that continues does not replay its
        epochs to Ray (PBT would decide on them again): reconciliation records the ones epochs.parquet lacks."""
        from trainables.population import MemberStore

        root = context.store.trials_root
        done, resumed = {}, {}
        for member in list(self.configs):
            state = MemberStore(root, member, self.interval + 1).load_epoch()
            history = state["history"] if state else []
            key = self.key_of({"member": member})
            if history and (history[-1]["status"] in ("completed", "diverged") or history[-1]["epoch"] >= context.epochs):
                done[key] = SearcherRecord(self.configs.pop(member), errored=False, history=history)
            elif history:
                resumed[key] = history
        return done, resumed

    def continuing(self) -> dict[str, list[dict[str, Any]]]:
        return self.resumed

    def key_of(self, config: dict[str, Any]) -> str:
        """A member's trial key: the base configuration and its index, whatever its hyperparameters are now."""
        return self.context.key_of({**self.base, "member": int(config["member"])})

    def member_of(self, row: dict[str, Any]) -> int:
        return int(json.loads(row["config_json"]).get("member", -1))

    def identity(self, configs: Any) -> TrialIdentity:
        return TrialIdentity(configs.full, self.key_of, self.space.canonical)

    # -- what the driver asks -----------------------------------------------------------------

    def tune_run(self, plan: Any, results: Any) -> TuneRun:
        """The members as Ray Tune's trials (a grid over them), trained by trainables.population under Ray's
        PBT (or PB2) scheduler, with the schedules' callback."""
        from trainables.population import run_member

        scheduler = self.strategy.scheduler(self)
        scheduler.continue_after(self.last_decision)
        scheduler.keep_decisions(plan.store.trials_root, plan.options.seed)
        kinds = {name: self.space.by_name[name].kind for name in self.perturb}
        snapshots = [record.history for record in self.done.values()] + list(self.resumed.values())
        schedules = ScheduleCallback(plan.store, kinds, {m: self.key_of({"member": m}) for m in range(self.population)},
                                     snapshots)
        # A reused worker answers PBT's "save" with the last result it reported, which may be another member's:
        # an exploit then copied the wrong weights (seen: a member perturbed with no donor). One worker per start,
        # so Ray's advice to reuse workers, a warning printed at every run, is not shown.
        # Ray's checkpoints are pointers only (trainables.population); PBT reads a donor's after it has reported
        # more, so a few are kept.
        warnings.filterwarnings("ignore", message="Consider boosting PBT performance by enabling `reuse_actors`")
        return TuneRun(param_space=self.param_space(), num_samples=self.num_samples, scheduler=scheduler,
                       train=run_member, callbacks=[schedules], checkpoints_kept=self.interval + 2, reuse_actors=False)

    def planned_total(self) -> Callable[[], int] | None:
        total = self.population
        return lambda: total

    def planned_blocks(self) -> list[int]:
        return [self.to_run]

    def param_space(self) -> dict[str, Any] | None:
        """One trial per member still to train: a grid over the members, each with its own starting values."""
        from ray import tune

        members = sorted(self.configs)
        if not members:
            return None
        space: dict[str, Any] = {"member": tune.grid_search(members)}
        for name in self.configs[members[0]]:
            if name == "member":
                continue
            values = {m: self.configs[m][name] for m in members}
            space[name] = tune.sample_from(_MemberValue(name, values)) if len(set(map(repr, values.values()))) > 1 \
                else values[members[0]]
        return space

    def reached_end(self) -> bool:
        results = ResultsStore(self.context.store, strategy=self.strategy.name, family=self.context.family.name,
                               hp_kinds={p.name: p.kind for p in self.space.params})
        ended = {self.member_of(r) for r in results.trials.values() if r["status"] in ("completed", "diverged")}
        return len(ended) >= self.population

    def final_configurations(self, results: ResultsStore, k: int) -> list[tuple[str, dict[str, Any]]]:
        """The ``k`` best members' schedules (by best val L1), each as a config that replays it from epoch 1."""
        return best_schedules(self.context.store, results, k, self.base, self.member_of)


def from_study(options: Any, space: Any, context: SearchContext) -> dict[str, Any]:
    """The best finished configuration of another study in the same runs folder (``--from-study NAME``)."""
    from search.store.study import StudyStore

    store = StudyStore(options.runs_dir, options.from_study)
    record = store.read_record()
    if record is None:
        raise StudyError(f"--from-study {options.from_study}: no study of that name in {options.runs_dir}.")
    if record.get("family") != space.family:
        raise StudyError(f"--from-study {options.from_study} is a {record.get('family')} study; this one is {space.family}.")
    table = store.read_table(ResultsStore.TRIALS)
    best = best_trial(table.to_pylist() if table is not None else [])
    if best is None:
        raise StudyError(f"--from-study {options.from_study} has no finished trial yet.")
    config = json.loads(best["config_json"])
    return space.resolve({p.name: config[p.name] for p in space.params if p.name in config})
