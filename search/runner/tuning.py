"""The two Ray Tune runs of a driver: the search itself, and the final stage's re-training.

The search: the strategy's searcher (wrapped by ``--budget-epochs``), ASHA that resumes
(:mod:`search.runner.scheduler`), and the results callback that keeps the Parquet files current.
The final stage: the top configurations trained again with new seeds, measured once on test
(:mod:`search.runner.final`). Each checkpoints like a search trial, so either resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from ray.tune import Callback

from models.registry import register_missing, registrations
from search.runner import cluster
from search.runner.console import Printer, error_line, last_line
from search.runner.final import aggregate, final_row, final_seeds, plan_runs, top_configurations, write_final
from search.runner.options import SCHEDULERS
from search.runner.plan import StudyPlan, TrialConfigs, now_iso
from search.runner.progress import SearchProgress, asha_epochs, estimate_line, within_budget
from search.runner.ray_fixes import mend_worker_handoff, name_callbacks_without_importing
from search.runner.recording import ResultsCallback, error_text
from search.store.results import ResultsStore
from search.strategies.base import OpenSearch
from trainables import retry
from trainables.data import VMSDataset
from trainables.family import Family
from trainables.loop import run_trial


_interrupted = threading.Event()  # a SIGTERM arrived during this tuner's run


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    _interrupted.set()
    raise KeyboardInterrupt


def _quiet_unraisable(previous):
    """Python's hook for an exception it cannot raise (one inside an object's ``__del__``), quiet for the
    KeyboardInterrupt a SIGTERM raised there: :class:`StopWhenInterrupted` stops the run instead."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupted.is_set():
            return
        previous(unraisable)

    return hook


class StopWhenInterrupted(Callback):
    """A SIGTERM whose KeyboardInterrupt was swallowed (it arrived while Ray ran an object's ``__del__``, where
    Python only prints an exception) still stops the run, at the controller's next step."""

    def on_step_begin(self, iteration, trials, **info):
        if _interrupted.is_set():
            raise KeyboardInterrupt


def _unlisted(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Trials did not complete")


@contextlib.contextmanager
def trial_errors_in_our_lines():
    """Ray Tune logs each errored trial's traceback on stderr, and at the end a list of its own names for the trials that
    did not complete. Here an errored trial's printed line says how its error ends, and where more of it is kept
    (``console.error_line``), so Ray's traceback and list are left out. Where a user has set
    ``TUNE_PRINT_ALL_TRIAL_ERRORS`` themselves, Ray prints as they chose."""
    if "TUNE_PRINT_ALL_TRIAL_ERRORS" in os.environ:
        yield
        return
    tune_log = logging.getLogger("ray.tune.tune")
    try:
        os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"  # read as Tuner.fit builds its controller
        tune_log.addFilter(_unlisted)
        yield
    finally:
        tune_log.removeFilter(_unlisted)
        os.environ.pop("TUNE_PRINT_ALL_TRIAL_ERRORS", None)


def run_tuner(tuner, verbose: bool = False):
    """``tuner.fit()`` with SIGTERM treated as Ctrl-C; returns its results, or None when interrupted. ``verbose``
    (``--verbose``): Ray Tune's own lines for errored trials are printed too."""
    mend_worker_handoff()
    name_callbacks_without_importing()
    _interrupted.clear()
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable(sys.unraisablehook)
    try:
        with contextlib.nullcontext() if verbose else trial_errors_in_our_lines():
            results = tuner.fit()
        return None if _interrupted.is_set() else results
    except KeyboardInterrupt:
        return None
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        sys.unraisablehook = previous_hook


def asha(plan: StudyPlan, results: ResultsStore, search: OpenSearch):
    """ASHA that resumes. For a grouped search (greedy's blocks) a trial is judged against earlier
    groups only, so the path does not depend on which of a group's trials reports first."""
    from search.runner.scheduler import ResumableASHA

    options = plan.options
    scheduler = ResumableASHA(time_attr="epoch", max_t=plan.epochs,
                              grace_period=min(options.grace_period or plan.grace, plan.epochs),
                              reduction_factor=options.reduction_factor or plan.preset.reduction_factor,
                              group_of=_block_index(search.block_of) if search.block_of else None)
    # A resumed study: its finished trials' rungs, as the uninterrupted search had them.
    groups = results.column_values(search.group_column) if search.group_column else {}
    scheduler.seed_rungs(results.finished_epochs(), {tid: int(group) for tid, group in groups.items()})
    return scheduler


def no_early_stopping(plan: StudyPlan, results: ResultsStore, search: OpenSearch):
    """Every trial runs all its epochs."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _block_index(block_of: Callable[[str], Any]) -> Callable[[str], int | None]:
    """Ray trial id -> the index of its group (greedy's block), for ASHA's per-block decisions."""
    def group_of(trial_id: str) -> int | None:
        block = block_of(trial_id)
        return None if block is None else block.index

    return group_of


def print_estimate(plan: StudyPlan, search: OpenSearch, configs: TrialConfigs, budget_left: int | None = None,
                   own_scheduler: bool = False) -> None:
    """The first promise: this search's size times one epoch measured where trials train, before anything runs.
    Under --budget-epochs (``budget_left``: epochs still to spend), only the trials the budget affords
    (``own_scheduler``: the strategy's scheduler replaces --scheduler)."""
    if search.to_run == 0:
        return
    early_stops = plan.options.scheduler == "asha" and not own_scheduler
    per_trial, grace = plan.epochs, plan.epochs
    if early_stops:  # under a budget, the trials it affords are as long as ASHA lets them be on average
        options = plan.options
        grace = min(options.grace_period or plan.grace, plan.epochs)
        per_trial = asha_epochs(plan.epochs, grace, options.reduction_factor or plan.preset.reduction_factor)
    planned = search.planned_blocks()
    blocks = within_budget(planned, per_trial, budget_left)
    if not sum(blocks):
        return
    concurrency = cluster.concurrency(plan)
    fewest = most = None
    if early_stops and budget_left is not None:
        # The budget buys from this many trials (none stopped) to ``most``: every one stopped at the grace period.
        fewest = sum(within_budget(planned, plan.epochs, budget_left))
        most = sum(within_budget(planned, grace, budget_left))
        most = min(most, sum(planned)) if any(planned) else most
    measured = cluster.measure_epochs(plan, configs)
    if measured is None or measured[0] is None:
        return
    epoch_s, widest_s, where = measured
    print(estimate_line(blocks=blocks, epochs=plan.epochs, final_runs=plan.final_runs, concurrency=concurrency,
                        epoch_s=epoch_s, widest_epoch_s=widest_s, where=where, early_stops=early_stops,
                        budget_epochs=budget_left, fewest=fewest, most=most), flush=True)


def _trainable(plan: StudyPlan, configs: TrialConfigs, config_of: Callable[[dict[str, Any]], dict[str, Any]],
               train: Callable | None = None):
    """The family's trainable (``train``: the strategy's, else the shared loop) with the dataset in Ray's
    object store, a trial's resources, and its storage from the study store."""
    from ray import tune

    train = train or run_trial

    def trial_function(config: dict[str, Any], data: VMSDataset, family: type[Family], registered: dict,
                       store_retry: str | None) -> None:
        register_missing(registered)  # plug-ins the driver's script registered (models.registry)
        retry.adopt(store_retry)  # --store-retry, in a Ray job too
        full = config_of(config)
        train(full, data, family, storage=configs.storage(full))

    return tune.with_resources(tune.with_parameters(trial_function, data=plan.data, family=plan.family,
                                                    registered=registrations(), store_retry=retry.carried()),
                               cluster.resources(plan))


def _run_config(plan: StudyPlan, name: str, callbacks: list[Any], checkpoints: int = 0):
    """``checkpoints``: how many of each trial's Ray checkpoints Ray keeps (0: no checkpoint config)."""
    from ray import tune

    options = plan.options
    storage_path, storage_filesystem = plan.store.ray_storage()
    return tune.RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
        callbacks=[*callbacks, *cluster.gpu_callbacks(plan), StopWhenInterrupted()],
        verbose=2 if options.verbose else 0, log_to_file=not options.verbose,
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints) if checkpoints else None)


def fit(plan: StudyPlan, search: OpenSearch, results: ResultsStore, configs: TrialConfigs, started: float,
        budget: Any = None) -> bool:
    """Run the search's trials through Ray Tune (``budget``: the searcher wrapped by --budget-epochs);
    returns whether the run was interrupted (Ctrl-C, SIGTERM)."""
    from ray import tune

    options = plan.options
    budget_left = budget.budget - budget.spent if budget is not None else None
    run = search.tune_run(plan, results)
    print_estimate(plan, search, configs, budget_left, own_scheduler=run.scheduler is not None)
    done = len(results.finished_ids())
    progress = SearchProgress(search.planned_total(), epochs_per_trial=plan.epochs,
                              done_trials=done, final_runs=plan.final_runs, budget_left=budget_left)
    printer = Printer(done, progress, plan.strategy.trial_line)
    printer.seed_best(results)
    callback = ResultsCallback(results, search.identity(configs), segment=plan.segment, epochs_planned=plan.epochs,
                               columns_of=search.columns_of, on_result=progress.on_epoch,
                               on_finish=(printer, *((plan.tracker.trial_finished,) if plan.tracker else ())))
    cluster.allow_pending_trials(plan)
    scheduler = run.scheduler or SCHEDULERS.get(options.scheduler)(plan, results, search)
    tuner = tune.Tuner(
        _trainable(plan, configs, configs.full, run.train),
        **({"param_space": run.param_space} if run.param_space is not None else {}),
        tune_config=tune.TuneConfig(metric=search.metric, mode="min", search_alg=budget or run.searcher,
                                    scheduler=scheduler, num_samples=run.num_samples,
                                    max_concurrent_trials=options.max_concurrent, reuse_actors=run.reuse_actors),
        run_config=_run_config(plan, f"segment-{plan.segment}", [callback, *run.callbacks],
                               checkpoints=run.checkpoints_kept),
    )
    # Record the segment before it runs, so a killed driver's segment still counts.
    record = plan.record
    record.setdefault("segments", []).append({"started_at": now_iso(), "ended_at": None, "preset": plan.preset.name,
                                              "gpus_per_trial": plan.gpus_per_trial})
    plan.store.write_record(record)
    try:
        interrupted = run_tuner(tuner, plan.options.verbose) is None
    finally:
        results.flush()
    record["segments"][-1].update(ended_at=now_iso(), wall_seconds=time.perf_counter() - started,
                                   interrupted=interrupted)
    plan.store.write_record(record)
    return interrupted


def _final_printer(runs):
    from ray import tune

    class FinalPrinter(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            run, last = runs[trial.config["index"]], trial.last_result or {}
            print(f"final #{run.rank} seed {run.seed}: {final_run_line(last)}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            run = runs[trial.config["index"]]
            print(f"final #{run.rank} seed {run.seed}: errored", flush=True)
            print(error_line(error_text(trial)) + " (more in the study's ray/final-*/ folders)", flush=True)

    return FinalPrinter()


def final_run_line(last: dict[str, Any]) -> str:
    """What one final run measured, in words: never a bare nan or None."""
    if last.get("status") == "diverged":
        return f"diverged at epoch {last.get('epoch')}"
    if last.get("selected_val_l1") is None:
        return f"ended at epoch {last.get('epoch')} without a measured best epoch"
    test = last.get("test_l1")
    return (f"val L1 {last['selected_val_l1']:.4f}" + (f", test L1 {test:.4f}" if test is not None else "")
            + f" (best epoch {last.get('best_epoch')})")


def final_stage(plan: StudyPlan, results: ResultsStore, configs: TrialConfigs,
                search: OpenSearch | None = None) -> tuple[dict[str, Any] | None, bool]:
    """Re-train the best configurations over new seeds and measure them on the test split (search.runner.final).

    Returns (summary.json's ``final`` block, interrupted). Each run checkpoints like a search
    trial, so an interrupted stage resumes, and a finished one replays in seconds.
    """
    from ray import tune

    options = plan.options
    top = search.final_configurations(results, options.final_top_k) if search else None
    if top is None:
        top = top_configurations(results, options.final_top_k, [p.name for p in plan.space.params])
    if not top or not options.final_seeds:
        return None, False
    seeds = final_seeds(options.seed, options.final_seeds)
    runs = plan_runs(top, seeds, configs.full)
    keys = [configs.key_of_full(run.config) for run in runs]
    print(f"final: re-training the top {len(top)} configurations with seeds {', '.join(map(str, seeds))} "
          f"({len(runs)} runs of {plan.epochs} epochs, no early stopping); the epoch is chosen on val, "
          + ("then measured once on the test split" if plan.data.has_test
             else "and measured on val: this study has no test split (optimistic)"),
          flush=True)
    cluster.allow_pending_trials(plan)
    tuner = tune.Tuner(
        _trainable(plan, configs, lambda config: runs[config["index"]].config),
        param_space={"index": tune.grid_search(list(range(len(runs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent, reuse_actors=True),
        run_config=_run_config(plan, f"final-{plan.segment}", [_final_printer(runs)]),
    )
    outcome = run_tuner(tuner, options.verbose)
    if outcome is None:
        return None, True
    rows, first_error = [], None
    for result in outcome:
        index = result.config["index"]
        rows.append(final_row(plan.name, runs[index], keys[index], result.metrics, result.error is not None))
        if result.error is not None and first_error is None:
            first_error = last_line(str(result.error))
    write_final(rows, plan.store)
    return aggregate(rows, plan.data, seeds, first_error), False
