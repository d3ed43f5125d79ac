"""The Optuna-based strategies (TPE, BOHB-style TPE, GP, random: :class:`OptunaStrategy`) through Ray Tune,
on a persistent storage, resumable to the same trials.

Ray Tune's ``OptunaSearch`` asks and tells an Optuna study. Three things are added here so a
study continued after a killed driver is the study an uninterrupted driver would have run
(and a fourth, :meth:`StudyOptunaSearch.suggest`: on a grid no configuration is trained twice):

- **Each trial's sampler is seeded by its place in the study** (:class:`ReseededSampler`).
  A sampler seeded once per driver would restart its random stream on every resume and
  propose other configurations than the uninterrupted run; here the k-th trial of a study
  draws from ``(seed, k)`` whatever happened before.
- **Each Optuna trial carries the study's trial key and config** (user attributes set when it
  is proposed), so start-up reconciliation can match Optuna's record to ``trials.parquet``.
- **Interrupted trials are repaired at start-up** (:func:`open_study`): a trial left RUNNING
  by a dead driver is closed as failed-and-interrupted and, if it had been proposed in full,
  its parameters are queued again (its training resumes from its checkpoint); one killed
  while being proposed is dropped and its place is drawn again, with the same seed.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.faults import crash_point
from search.space import Space
from search.store.lease import safe_url
from trainables.retry import retrying
from search.strategies.base import UNBOUNDED, OpenSearch, SearcherRecord

INTERRUPTED = "interrupted"  # user attribute of a trial a dead driver left RUNNING
DUPLICATE = "duplicate"  # user attribute of a draw of a configuration the study already has (told at once)
REDRAWS = 25


class ReseededSampler(BaseSampler):
    """Delegates to a fresh sampler per trial, seeded from the trial's place in the study.

    The place is the number of earlier trials that were not interrupted, so a trial re-run
    after a crash does not shift the seeds of the trials after it.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self.factory, self.seed = factory, seed
        self._current: BaseSampler = factory(seed)

    def _place(self, study: optuna.Study, trial: FrozenTrial) -> int:
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.number < trial.number and not t.user_attrs.get(INTERRUPTED))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        place = self._place(study, trial)
        self._current = self.factory((self.seed * 1_000_003 + place) % 2**32)
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # the per-trial seeds are the point; keep them
        pass


class StudyOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tags each Optuna trial with the study's trial key and config."""

    def __init__(self, *args: Any, key_of: Callable[[dict[str, Any]], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_of = key_of

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """A configuration this study has not trained yet, when the sampler finds one.

        On a grid (``--domain grid``) samplers propose configurations already trained, or
        training: each such draw is told to Optuna at once (the known value, or failed while its
        twin still runs), so the sampler learns from it and moves on, and it is drawn again, up to
        ``REDRAWS`` times. If every draw is one, the sampler has converged on the grid, and the
        search ends (``FINISHED``) rather than retrain what it has.
        """
        for _ in range(REDRAWS):
            config = super().suggest(trial_id)
            if config is None:
                return None
            key = self._key_of(config)
            twin = self._known(key)
            if twin is None:
                break
            ot_trial = self._ot_trials.pop(trial_id)
            ot_trial.set_user_attr(DUPLICATE, True)
            if twin.state == TrialState.COMPLETE and twin.value is not None:
                self._ot_study.tell(ot_trial, twin.value)
            else:  # its twin is still running, or failed: no value to tell
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        else:  # the sampler only proposes what the study has: it has converged on this grid
            print("the sampler "
                  f"proposed {REDRAWS} configurations in a row that the study has already trained; the search ends here",
                  flush=True)
            return Searcher.FINISHED
        if config is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("trial_key", key)
            ot_trial.set_user_attr("config", json.dumps(config, sort_keys=True))
        return config

    def _known(self, key: str) -> FrozenTrial | None:
        """The study's trial of this key (finished or running), if any; duplicates and interrupted ones aside."""
        for trial in self._ot_study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            if attrs.get("trial_key") == key and not attrs.get(DUPLICATE) and not attrs.get(INTERRUPTED):
                return trial
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        crash_point("searcher-complete")


@dataclass
class OptunaStudy:
    searcher: StudyOptunaSearch
    done: int  # trials finished (completed, pruned or failed), interrupted ones not counted
    to_run: int
    finished: dict[str, tuple[dict[str, Any], str]]  # trial key -> (config, "finished" | "errored")
    requeued: int  # interrupted trials queued again


class StorageError(Exception):
    """The Optuna storage cannot be opened; the message says which and why."""


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``url``; a database server that stops answering (a restart) is waited for
    (:class:`WaitingStorage`). pre_ping: a pooled connection a restart ended is replaced, not used."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return WaitingStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "bad storage"
        raise StorageError(f"cannot open the Optuna storage {safe_url(url)} ({err}); pass a valid --storage URL.") from None


def _not_answering(err: BaseException) -> bool:
    """The database did not answer (refused, reset, shutting down), as SQLAlchemy or Optuna report it."""
    from sqlalchemy import exc

    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) else err
    return isinstance(cause, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
                              exc.PendingRollbackError)) or (isinstance(cause, exc.DBAPIError)
                                                             and cause.connection_invalidated)


class WaitingStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls wait out a database that stops answering (trainables.retry): a restart of
    the server costs a line, not the search. Each call is one transaction, whole or not at all."""


def _waiting(name: str):
    plain = getattr(optuna.storages.RDBStorage, name)

    def call(self, *args, **kwargs):
        return retrying(f"database: {name}", lambda: plain(self, *args, **kwargs), _not_answering,
                        recover=self.remove_session)  # a session whose connection died cannot be used again

    call.__name__ = name
    return call


# What Optuna's Study and its cached storage call (optuna/storages/_cached_storage.py reaches the private ones).
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
              "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param", "get_trial_param",
              "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials",
              "get_best_trial", "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids"):
    setattr(WaitingStorage, _name, _waiting(_name))


def _requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue an interrupted trial again: its parameters, and what its sampler stored beside them.

    A multivariate TPE reads a running trial's relative parameters (its system attributes), the
    conditional ones it sampled but the trial never used included; the re-run carries them, so the
    trials proposed beside it are the ones proposed beside the original.
    """
    study.enqueue_trial(trial.params, user_attrs={"resumed_from": trial.number})
    waiting = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
               if t.user_attrs.get("resumed_from") == trial.number]
    for key, value in trial.system_attrs.items():
        if key not in waiting[-1].system_attrs:
            study._storage.set_trial_system_attr(waiting[-1]._trial_id, key, value)


def open_study(storage: optuna.storages.RDBStorage, name: str, space: Space, *,
               sampler: Callable[[int], BaseSampler], seed: int, samples: int,
               key_of: Callable[[dict[str, Any]], str], use_ranges: bool = False) -> OptunaStudy:
    """Load (or create) the study, repair what a dead driver left RUNNING, and build the searcher.

    ``use_ranges``: sample the study file's continuous ranges where it gives them; otherwise its
    ``values``, the grid greedy walks. A new study's first trial is the study's defaults, greedy's
    starting point, so every strategy starts from the same place. ``sampler``: seed -> a fresh sampler
    (:meth:`OptunaStrategy.sampler`), called per trial by :class:`ReseededSampler`.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's multivariate/group modes (needed for conditional spaces) are flagged experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(space.optuna_params(space.defaults()), user_attrs={"study_defaults": True})
    done, requeued = 0, 0
    finished: dict[str, tuple[dict[str, Any], str]] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            if "config" in trial.user_attrs:  # proposed in full: run the same again (it resumes)
                _requeue(study, trial)
                requeued += 1
            continue
        if trial.state == TrialState.WAITING or trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(DUPLICATE):
            continue
        done += 1
        if "config" in trial.user_attrs:
            outcome = "errored" if trial.state == TrialState.FAIL else "finished"
            finished[trial.user_attrs["trial_key"]] = (json.loads(trial.user_attrs["config"]), outcome)

    searcher = StudyOptunaSearch(space=functools.partial(space.suggest, use_ranges=use_ranges), metric="best_val_l1",
                                 mode="min", sampler=ReseededSampler(sampler, seed), study_name=name, storage=storage,
                                 key_of=key_of)
    return OptunaStudy(searcher, done, max(0, samples - done), finished, requeued)


class OptunaSearchRun(OpenSearch):
    """An Optuna study of one driver run, holding the study's lease in its storage until :meth:`close`."""

    def __init__(self, study: OptunaStudy, samples: int, lease: Any) -> None:
        bounded = samples < UNBOUNDED
        self.searcher, self.samples, self.lease = study.searcher, samples, lease
        self.num_samples = study.to_run if bounded else -1
        self.to_run = study.to_run if bounded else None
        self.done = {key: SearcherRecord(config, errored=outcome == "errored")
                     for key, (config, outcome) in study.finished.items()}

    def planned_total(self) -> Callable[[], int] | None:
        return functools.partial(int, self.samples) if self.samples < UNBOUNDED else None

    def reached_end(self) -> bool:
        return True  # Tune ran its samples, or the searcher said FINISHED

    def close(self) -> None:
        self.lease.release()
