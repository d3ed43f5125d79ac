"""Mends for Ray Tune (the pinned 2.60.0), each applied once by :func:`search.runner.tuning.run_tuner`.

- :func:`mend_worker_handoff`: a trial whose reused worker dies while it is handed the trial.
- :func:`name_callbacks_without_importing`: every ``Tuner.fit`` imported mlflow, wherever it is installed.

Each wraps only what it names, and only for the Ray version it was read in: another version runs unmended.
"""

from __future__ import annotations

import collections

import ray

MENDED_FOR = "2.60.0"


def mend_worker_handoff(say=print) -> bool:
    """Wrap ``TuneController`` once (idempotent); returns whether the mend is in place.

    With ``reuse_actors`` (every strategy but population-based training: no worker start per trial), Ray Tune hands a
    new trial to a finished trial's worker with a ``reset`` task. When that worker dies during the hand-off, Ray's actor
    manager reports the one death twice, first to the actor's failure callback, then to the reset task's:

    1. ``TuneController._actor_failed`` finds the trial PENDING, marks it RUNNING and processes the failure: the trial
       has failed once, ``--max-failures`` allows a retry, so it is requeued on a new worker;
    2. ``TuneController._trial_task_failure`` then processes the same death again: a second failure, on a trial that is
       PENDING again, which Ray Tune errors whatever ``--max-failures`` says (and tells the searcher it failed).

    And the trial stays in the controller's set of trials being reset, so a requeued trial could wait for a reset that
    never comes. Here the first report is handled as Ray does, the trial leaves that set, and the second report of the
    same exception is dropped: the trial is retried from its checkpoint like any trial whose worker died mid-epoch.
    (The crash point ``worker-handoff`` of :mod:`trainables.faults` kills a worker exactly there: ``benchmarks.faults`` and
    ``tests/test_reliability.py`` use it.)

    Only the two methods are wrapped; under another Ray version this says so and wraps nothing.
    """
    from ray.exceptions import RayActorError
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController, "_memsearch_handoff", False):
        return True
    if ray.__version__ != MENDED_FOR:
        say(f"note: Ray {ray.__version__} is not the pinned {MENDED_FOR}: a worker that dies as it is handed a trial "
            "may error that trial without a retry (search/runner/ray_fixes.py)")
        return False
    actor_failed, task_failure = TuneController._actor_failed, TuneController._trial_task_failure

    def _actor_failed(self, tracked_actor, exception):
        trial = self._actor_to_trial.get(tracked_actor)
        handing_off = trial is not None and trial in self._resetting_trials
        if handing_off:
            self._resetting_trials.discard(trial)
        actor_failed(self, tracked_actor, exception)
        if handing_off and isinstance(exception, RayActorError):
            self.__dict__.setdefault("_memsearch_reported", {})[trial] = exception

    def _trial_task_failure(self, trial, exception):
        reported = self.__dict__.get("_memsearch_reported", {})
        if reported.get(trial) is exception:  # the reset task's report of the death _actor_failed handled
            del reported[trial]
            return
        task_failure(self, trial, exception)

    TuneController._actor_failed = _actor_failed
    TuneController._trial_task_failure = _trial_task_failure
    TuneController._memsearch_handoff = True
    return True


def name_callbacks_without_importing() -> bool:
    """Ray Tune's usage tag for a run's callbacks without the imports it made only to read class names.

    Every ``Tuner.fit`` (usage stats on or off) calls ``ray.air._internal.usage.tag_callbacks``, whose
    ``_count_callbacks`` imports the Weights & Biases, MLflow, Comet and Aim integrations to compare the run's
    callbacks with their class names; Ray's MLflow integration imports ``mlflow`` at its top, so wherever mlflow is
    installed (the test extra, ``--mlflow`` users) each search and each final stage imported it, used or not. Here the
    same names are compared as strings: Ray records the same tag. Returns whether the mend is in place (idempotent).
    """
    from ray.air._internal import usage

    if getattr(usage, "_memsearch_names", False):
        return True
    if ray.__version__ != MENDED_FOR:
        return False
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    built_in = {"WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback", "AimLoggerCallback",
                *(cls.__name__ for cls in DEFAULT_CALLBACK_CLASSES)}

    def _count_callbacks(callbacks):
        counts = collections.defaultdict(int)
        for callback in callbacks or []:
            if not isinstance(callback, Callback):  # Ray errors on it later; not counted, as Ray's
                continue
            name = callback.__class__.__name__
            if name in built_in:
                counts[name] += 1
            elif isinstance(callback, LoggerCallback):
                counts["CustomLoggerCallback"] += 1
            else:
                counts["CustomCallback"] += 1
        return counts

    usage._count_callbacks = _count_callbacks
    usage._memsearch_names = True
    return True
