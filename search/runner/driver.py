"""Runs one study, top to bottom: options, the study folder, Ray, the strategy, the trials, the final stage.

1. check the options and the study file (:mod:`search.runner.options`, :mod:`search.space`);
2. hold the study folder (:class:`search.store.study.StudyStore`) and connect to Ray (:mod:`search.runner.cluster`);
3. plan the run: preset, budget, data, the study's record, created or checked (:mod:`search.runner.plan`);
4. open (or resume) the strategy's search (:mod:`search.strategies`);
5. reconcile what a killed driver left half recorded (:mod:`search.runner.reconcile`);
6. run the trials through Ray Tune, then the final stage (:mod:`search.runner.tuning`);
7. write ``summary.json`` and return the summary (:mod:`search.runner.console`).

Re-running the same study continues it: finished trials are kept and not re-run, greedy continues
in its block, TPE continues with its history, and trials that were interrupted resume from their
last epoch checkpoint. The files of a study are listed in :mod:`search.store.study`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from search.runner import cluster, tuning
from search.runner.console import Summary, summarize
from search.runner.options import Checked, SearchOptions, check, study_name
from search.runner.plan import StudyPlan, TrialConfigs, make_plan
from search.runner.reconcile import reconcile
from search.runner.tracking import MLflowTracker, tracking_uri
from search.space import Space
from search.store.results import ResultsStore
from trainables.retry import RETRY_ENV
from search.store.study import StudyStore
from search.strategies.base import OpenSearch, SearchContext
from search.strategies.budget import EpochBudget
from trainables.family import Family


def run_study(options: SearchOptions, checked: "Checked | None" = None) -> Summary:
    """Run (or continue) the study the options describe; returns its summary. ``checked``: what
    :func:`search.runner.options.check` made of the options, when the caller checked them already."""
    import ray

    family, space = checked or check(options)
    if options.store_retry is not None:  # read where stores are called: this process, and trials (tuning._trainable)
        os.environ[RETRY_ENV] = f"{options.store_retry:g}"
    store = StudyStore(options.runs_dir, study_name(options))
    store.create()
    with store.lock(options.storage):
        started = time.perf_counter()
        ray_before = ray.is_initialized()  # a notebook's or a benchmark's own Ray is left as it was
        try:
            cluster.init_ray(options)
            return _run_held(options, family.load(), space, store, started)  # the family's code, now that it trains
        finally:
            if not ray_before:  # also when interrupted while Ray was starting (then not yet "initialized")
                ray.shutdown()


def _run_held(options: SearchOptions, family: type[Family], space: Space, store: StudyStore, started: float) -> Summary:
    """The driver's steps, in order, with the study folder held."""
    plan = make_plan(options, family, space, store)
    configs = TrialConfigs(plan)
    if plan.auto_share:
        cluster.pack(plan, configs)
    results = ResultsStore(store, strategy=plan.strategy.name, family=family.name,
                           hp_kinds={p.name: p.kind for p in plan.space.params}, columns=plan.strategy.columns)
    uri = tracking_uri(plan.options.mlflow)
    if uri:
        plan.tracker = MLflowTracker(uri, results)
        plan.tracker.start(plan.record, store, plan.preset.name)
    search = plan.strategy.open(_context(plan, configs))
    try:
        finished, interrupted, final = _search_and_final(plan, search, results, configs, started)
    finally:
        search.close()
    summary = summarize(results, study_dir=str(store.root), preset=plan.preset.name, record=plan.record,
                        wall=time.perf_counter() - started, finished=finished and not interrupted, final=final,
                        margin=family.noise_margin(), budget_epochs=plan.options.budget_epochs)
    store.write_summary(asdict(summary))
    if plan.tracker:
        plan.tracker.sync()
        plan.tracker.finish(asdict(summary), finished=summary.finished)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _context(plan: StudyPlan, configs: TrialConfigs) -> SearchContext:
    return SearchContext(store=plan.store, space=plan.space, family=plan.family, options=plan.options,
                         domain=plan.domain, samples=plan.samples, expected=plan.expected_trials, key_of=configs.key,
                         max_blocks=plan.preset.max_blocks, epochs=plan.epochs)


def _search_and_final(plan: StudyPlan, search: OpenSearch, results: ResultsStore, configs: TrialConfigs,
                      started: float) -> tuple[bool, bool, dict | None]:
    """Reconcile, run what is left of the search within its budget, then the final stage once it has ended.

    Returns (the search has ended, this run was interrupted, summary.json's ``final`` block)."""
    for line in reconcile(results, search.identity(configs), search.done, plan.store, segment=plan.segment,
                          epochs_planned=plan.epochs, continuing=search.continuing()):
        print(line, flush=True)
    if plan.tracker:  # what a killed driver recorded but did not log
        plan.tracker.sync()
    budget = None
    if plan.options.budget_epochs and search.searcher is not None:  # a population is sized by the budget instead
        budget = EpochBudget(search.searcher, plan.options.budget_epochs, known=results.epochs,
                             epochs_per_trial=plan.epochs, key_of=configs.key,
                             interrupted=[tid for tid, row in results.trials.items() if row["status"] == "running"])
        print(f"budget: {plan.options.budget_epochs} epochs in all, {budget.spent} spent so far", flush=True)
    interrupted = False
    if search.to_run != 0 and not (budget and budget.reached):
        interrupted = tuning.fit(plan, search, results, configs, started, budget)
    elif plan.final_runs and (search.reached_end() or (budget and budget.reached)):
        print("search: it ended in an earlier run; the final stage goes on from its runs' checkpoints (a finished run "
              "is replayed, not trained again)", flush=True)
    finished = not interrupted and (search.reached_end() or bool(budget and budget.reached))
    final = None
    if finished:
        final, interrupted = tuning.final_stage(plan, results, configs, search)
    return finished, interrupted, final
