"""Runs one study: the study folder, Ray, the searcher, the scheduler and the results.

A study lives in ``<runs dir>/<study>/``::

    study.json        what the study is (family, strategy, space, data, settings); checked on resume
    .lock             held by the driver running it (a second driver is refused)
    trials.parquet    one row per trial            (search.results documents the schema)
    epochs.parquet    one row per trial per epoch
    summary.json      best trial, baselines, counts by status, wall time
    greedy_state.json greedy only: the coordinate-descent state
    optuna.db         tpe/random only: the Optuna storage (SQLite) unless --storage says otherwise
    val_data.npz      the validation images and maps (for dashboards' galleries)
    trials/<key>/     per trial: latest.pt, best.pt, predictions.npz
    ray/segment-N/    Ray Tune's own files for the N-th driver run

Re-running the same study continues it: finished trials are kept and not re-run, the
greedy strategy continues in its block, TPE continues with its history, and trials that
were interrupted resume from their last epoch checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import resource
import signal
import sys
import _thread
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from search.faults import crash_point
from search.final import aggregate, final_row, final_seeds, format_final, plan_runs, top_configurations, write_final
from search.greedy import GreedySearcher, default_margin
from search.lease import LeaseHeld, StudyLease, safe_url
from search.budget import EpochBudget
from search.optuna_search import StorageError, open_storage, open_study
from search.strategies import STRATEGIES as STRATEGY_TABLE
from search.progress import SearchProgress, estimate_line, measure_on_worker
from search.reconcile import SearcherRecord, reconcile
from search.results import STATUSES, ResultsCallback, ResultsStore, TrialIdentity
from search.space import Space
from trainables import family_parts
from trainables.config import DEVICE_SETTINGS, DEVICE_SWITCHES, RunSettings, parse_config, trial_key
from trainables.data import MAP_CHANNELS, VMSDataset
from trainables.loop import DIVERGED_L1

STUDY_FORMAT = 1
STRATEGIES = tuple(STRATEGY_TABLE)
SCHEDULERS = ("asha", "none")
UNBOUNDED = 1_000_000  # trials of an Optuna study that --budget-epochs ends (and no --samples)
DOMAINS = ("grid", "ranges")  # what Optuna strategies sample: the study's values (greedy's grid) or its ranges


class StudyError(Exception):
    """A problem with the study folder or the options; the message says how to fix it."""


@dataclass(frozen=True)
class Preset:
    """A budget: how long trials train, how big models are, how much data they see.

    ``epochs`` is a floor. With ``min_images`` a trial also sees at least that many training
    images (epochs x training pairs), so a small dataset is trained as much as a large one:
    300 pairs under the ``cpu`` preset train for 26 epochs, not 6 (6 epochs of 300 pairs taught
    an autoencoder nothing but to paint black). ASHA's grace period grows in proportion.
    """

    epochs: int
    width_divisor: int
    samples: int
    grace_period: int
    reduction_factor: int
    n_train: int | None  # None: the whole split
    n_val: int | None
    train_eval_size: int
    max_blocks: int | None = None  # greedy: only the first N parameters of the order
    description: str = ""
    min_images: int | None = None  # training images every trial sees at least (None: epochs alone)

    def epochs_for(self, n_train: int) -> int:
        """Epochs per trial on a training split of ``n_train`` pairs."""
        if not self.min_images:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_images / max(n_train, 1)))

    def grace_for(self, epochs: int) -> int:
        """ASHA's grace period, scaled with the epochs a dataset's size asks for."""
        return max(1, min(epochs, round(self.grace_period * epochs / self.epochs)))


PRESETS: dict[str, Preset] = {
    "thesis": Preset(100, 1, 100, 10, 3, None, None, 320,
                     description="the report's budget: 100 epochs, full widths, all data"),
    "cpu": Preset(8, 4, 16, 3, 2, None, None, 160, min_images=8 * 1280,
                  description="a whole search on two CPU cores: widths / 4, 8 epochs "
                              "(at least 10,240 training images per trial)"),
    "smoke": Preset(2, 16, 4, 1, 2, 64, 32, 32, max_blocks=3,
                    description="about a minute, for tests: widths / 16, 64+32 pairs, 2 epochs, 3 greedy blocks"),
}


@dataclass
class SearchOptions:
    strategy: str
    model: str
    study: str | None = None
    space_file: str | None = None
    data: str | None = None
    preset: str | None = None
    epochs: int | None = None
    samples: int | None = None
    budget_epochs: int | None = None  # stop proposing trials once this many epochs (all trials together) are spent
    domain: str | None = None  # grid | ranges (Optuna strategies; None: grid, or what the study was started with)
    gpus_per_trial: float | str | None = None  # a number, "auto" (search.packing), None: auto with GPUs, else 0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    address: str | None = None
    storage: str | None = None
    runs_dir: str = "runs"
    seed: int = 0
    resume: bool = False
    scheduler: str = "asha"
    grace_period: int | None = None
    reduction_factor: int | None = None
    max_sweeps: int = 1
    greedy_margin: float | None = None  # None: the family's measured noise (search.greedy.default_margin)
    max_blocks: int | None = None
    max_failures: int = 1
    final_top_k: int = 3
    final_seeds: int = 3
    size: int = 64
    verbose: bool = False
    precision: str = "auto"  # CUDA: trainables/device.py
    channels_last: str = "auto"
    compile: str = "auto"
    cuda_graphs: str = "auto"


@dataclass
class Summary:
    study: str
    study_dir: str
    strategy: str
    family: str
    preset: str
    best_trial_id: str | None
    best_val_l1: float | None
    best_channel_l1: dict[str, float | None] | None  # the best trial's L1 per map channel (remembered, falsely_remembered)
    best_config: dict[str, Any] | None
    baselines: dict[str, float]
    counts: dict[str, int]
    trials: int
    wall_seconds: float
    total_wall_seconds: float
    finished: bool
    driver_peak_rss_mb: float
    final: dict[str, Any] | None = None  # the top configurations re-trained over seeds (search.final)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    crash_point("study-json-tmp")
    os.replace(tmp, path)


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Exclusive use of a study folder; released by the OS even if the driver is killed."""
    handle = open(study_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StudyError(f"study folder {study_dir} is in use by another driver (pid {holder}); "
                             "wait for it to finish, or use another --study.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def _identity(space: Space, settings: RunSettings, options: SearchOptions, preset: Preset, domain: str) -> dict[str, Any]:
    return {
        "family": space.family, "strategy": options.strategy, "space_fingerprint": space.fingerprint, "domain": domain,
        "settings": {k: v for k, v in asdict(settings).items()
                     if k not in ("checkpoint_root", "threads", "evaluate_test", *DEVICE_SETTINGS)},
        "data_subset": [preset.n_train, preset.n_val],
    }


def check_or_create_study(study_dir: Path, identity: dict[str, Any], data: VMSDataset, extra: dict[str, Any]) -> dict[str, Any]:
    """Load study.json and refuse a mismatch, or create the study (study.json, val_data.npz)."""
    path = study_dir / "study.json"
    identity = {**identity, "data_fingerprint": data.fingerprint}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StudyError(f"{path} is not valid JSON ({err}); restore it or use another --study.") from None
        existing = {"domain": recorded_domain(existing), **existing}
        differences = [f"{k}: study has {existing.get(k)!r}, this run {v!r}" for k, v in identity.items() if existing.get(k) != v]
        if differences:
            raise StudyError(
                f"study {study_dir.name} in {study_dir} was created with other settings, and mixing them would corrupt it ("
                + "; ".join(differences) + "). Use the same options, or a new --study name.")
        return existing
    record = {"format": STUDY_FORMAT, "study": study_dir.name, **identity, **extra,
              "baselines": data.baselines(), "data_source": data.source, "created_at": _now_iso(), "segments": []}
    tmp = study_dir / ".val_data.tmp.npz"
    np.savez_compressed(tmp, images=data.val_images, maps=data.val_maps, stems=np.array(data.val_stems))
    os.replace(tmp, study_dir / "val_data.npz")
    write_json_atomic(path, record)
    return record


def _hp_line(hp: dict[str, Any], only: str | None = None) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    items = [(only, hp[only])] if only and only in hp else list(hp.items())
    return " ".join(f"{k}={fmt(v)}" for k, v in items)


class Printer:
    """One concise line per finished trial."""

    def __init__(self, start_count: int, progress: SearchProgress | None = None) -> None:
        self.count = start_count
        self.best = math.inf
        self.progress = progress

    def seed_best(self, store: ResultsStore) -> None:
        for row in store.trials.values():
            if row["status"] in ("completed", "stopped") and row.get("best_val_l1") is not None:
                self.best = min(self.best, row["best_val_l1"])

    def __call__(self, row: dict[str, Any]) -> None:
        self.count += 1
        value = row.get("best_val_l1")
        if row["status"] in ("completed", "stopped") and value is not None:
            self.best = min(self.best, value)
        config = json.loads(row["config_json"]) if row.get("config_json") else {}
        hp = {k[3:]: v for k, v in row.items() if k.startswith("hp_") and v is not None}
        varied = row.get("greedy_param")
        where = f"block {row['greedy_block']} " if varied else ""
        shown = f"{value:.4f}" if value is not None else "   -  "
        suffix, clear = "", ""
        if self.progress is not None:
            self.progress.on_trial(row)
            clear, suffix = self.progress.clear(), f" | {self.progress.line()}"
        print(f"{clear}[{self.count:3d}] {row['trial_id']} {where}{_hp_line(hp, varied)} | val_l1 {shown} "
              f"{row['status']} ({row.get('epochs_run') or 0}/{config.get('epochs', '?')} ep) | best {self.best:.4f}"
              + suffix, flush=True)


def _resolve_family(options: SearchOptions) -> str:
    from trainables import ALIASES

    if options.model not in ALIASES:
        raise StudyError(f"unknown --model {options.model!r}; choose one of {', '.join(sorted(ALIASES))}.")
    return ALIASES[options.model]


def validate_options(options: SearchOptions) -> None:
    """Cheap checks before anything starts; raises StudyError."""
    _resolve_family(options)
    if options.strategy not in STRATEGY_TABLE:  # the table, not the tuple: benchmarks register variants
        raise StudyError(f"unknown --strategy {options.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if options.preset is not None and options.preset not in PRESETS:
        raise StudyError(f"unknown --preset {options.preset!r}; choose one of {', '.join(PRESETS)}.")
    if options.scheduler not in SCHEDULERS:
        raise StudyError(f"unknown --scheduler {options.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
    if options.domain is not None and options.domain not in DOMAINS:
        raise StudyError(f"unknown --domain {options.domain!r}; choose one of {', '.join(DOMAINS)}.")
    if options.domain == "ranges" and options.strategy == "greedy":
        raise StudyError("--domain ranges: greedy walks the study's discrete values; drop --domain, or pick "
                         f"another strategy ({', '.join(s for s in STRATEGIES if s != 'greedy')}).")
    for name in ("epochs", "samples", "budget_epochs", "max_concurrent", "grace_period", "max_blocks"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise StudyError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
    if options.reduction_factor is not None and options.reduction_factor < 2:
        raise StudyError(f"--reduction-factor must be at least 2, got {options.reduction_factor}.")
    if options.greedy_margin is not None and not 0.0 <= options.greedy_margin < 1.0:
        raise StudyError(f"--greedy-margin is a fraction of the held value's L1 in [0, 1) (0.05: 5% lower), "
                         f"got {options.greedy_margin}.")
    if options.max_sweeps < 1:
        raise StudyError(f"--max-sweeps must be at least 1, got {options.max_sweeps}.")
    for name in ("final_top_k", "final_seeds"):
        if getattr(options, name) < 0:
            raise StudyError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(options, name)}.")
    if options.max_failures < 0:
        raise StudyError(f"--max-failures must be 0 or more, got {options.max_failures}.")
    if options.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial must be positive, got {options.cpus_per_trial}.")
    if isinstance(options.gpus_per_trial, str) and options.gpus_per_trial != "auto":
        raise StudyError(f"--gpus-per-trial is a number of GPUs (1, 0.25) or auto, got {options.gpus_per_trial!r}.")
    gpus = options.gpus_per_trial if not isinstance(options.gpus_per_trial, str) else None
    if gpus is not None and gpus < 0:
        raise StudyError(f"--gpus-per-trial must be 0 or more, got {gpus}.")
    if gpus and gpus > 1 and not float(gpus).is_integer():
        raise StudyError("--gpus-per-trial above 1 must be a whole number (Ray packs fractions only below one GPU).")
    from trainables.device import PRECISIONS, SWITCHES

    if options.precision not in PRECISIONS:
        raise StudyError(f"--precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}.")
    for name in DEVICE_SWITCHES:
        if getattr(options, name) not in SWITCHES:
            raise StudyError(f"--{name.replace('_', '-')} must be one of {', '.join(SWITCHES)}, "
                             f"got {getattr(options, name)!r}.")
    if options.size < 16 or options.size % 32:
        raise StudyError(f"--size must be a multiple of 32 (the UNet halves it five times), got {options.size}.")
    if options.resume and not (Path(options.runs_dir) / study_name(options)).is_dir():
        raise StudyError(f"--resume: no study {study_name(options)!r} in {options.runs_dir}; start it without --resume.")


def study_name(options: SearchOptions) -> str:
    return options.study or f"{options.strategy}-{_resolve_family(options)}"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable cluster: Ray itself waits minutes before giving up."""
    import socket

    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address!r} is not host:port (for example 10.0.0.5:6379, as `ray start --head` prints).")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise StudyError(f"cannot reach the Ray cluster at --address {address} ({err.strerror or err}); "
                         "check the address printed by `ray start --head` and that the cluster is up.") from None


def init_ray(options: SearchOptions) -> bool:
    """Connect to (or start) Ray; returns whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():  # a notebook or a benchmark that set Ray up itself
        return False

    kwargs: dict[str, Any] = dict(log_to_driver=options.verbose, configure_logging=True,
                                  logging_level=logging.INFO if options.verbose else logging.ERROR)
    if options.address:
        check_reachable(options.address)
        import models
        import search
        import trainables

        try:
            # Ship the project's code to the cluster's workers (their Python needs the dependencies).
            ray.init(address=options.address, runtime_env={"py_modules": [models, search, trainables]}, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise StudyError(f"cannot connect to the Ray cluster at --address {options.address} ({err}); "
                             "check the address printed by `ray start --head` and that the cluster is up.") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
    return True


def run_study(options: SearchOptions) -> Summary:
    """Run (or continue) the study the options describe; returns its summary."""
    from search.space import StudyFileError, load_space

    validate_options(options)
    family = _resolve_family(options)
    space = load_space(options.space_file or family)
    if space.family != family:
        raise StudyFileError(f"{space.source} is a {space.family} study file but --model is {family}.")
    name = study_name(options)
    runs_dir = Path(options.runs_dir).expanduser().resolve()
    study_dir = runs_dir / name
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        (study_dir / ".write-test").write_text("ok")
        (study_dir / ".write-test").unlink()
    except OSError as err:
        raise StudyError(f"cannot write to the study folder {study_dir} ({err.strerror}); "
                         "choose a writable --runs-dir with free space.") from None

    import ray

    with study_lock(study_dir):
        started = time.perf_counter()
        owns_ray = init_ray(options)
        try:
            return _run_locked(options, family, space, name, study_dir, started)
        finally:
            if owns_ray:
                ray.shutdown()


@dataclass
class StudyPlan:
    """What this driver run will do: budget, resources, data and the study's record."""

    options: SearchOptions
    family: str
    space: Space
    name: str
    study_dir: Path
    preset_name: str
    preset: Preset
    epochs: int
    grace: int
    samples: int
    settings: RunSettings
    data: VMSDataset
    record: dict[str, Any]
    cpus_available: float
    gpus_available: float
    gpus_per_trial: float
    auto_share: bool = False  # --gpus-per-trial auto with GPUs: set by _pack from a measured trial
    probe: Any = None  # search.packing.GpuProbe of _pack (its epoch seconds serve the estimate)
    domain: str = "grid"  # grid | ranges: what an Optuna strategy samples

    @property
    def segment(self) -> int:
        return len(self.record.get("segments", []))


@dataclass
class OpenSearch:
    """The searcher this run continues, and what it still has to do."""

    searcher: Any
    num_samples: int  # for Tune: -1 (until the searcher says finished) or a count
    to_run: int | None  # None: unknown (greedy), 0: nothing left
    block_of: Any = None  # greedy: Ray trial id -> block
    done: dict[str, SearcherRecord] | None = None  # trial key -> how the searcher saw it end
    lease: StudyLease | None = None  # tpe/random: held in the Optuna storage while this driver runs
    planned: Any = None  # () -> the study's total trial count as now planned (for the progress line)
    budget: EpochBudget | None = None  # --budget-epochs: wraps the searcher


def _run_locked(options: SearchOptions, family: str, space: Space, name: str, study_dir: Path,
                started: float) -> Summary:
    """The driver's steps, in order, with the study folder held."""
    plan = _plan(options, family, space, name, study_dir)
    full_config, key_of = _trial_identity(plan)
    if plan.auto_share:
        _pack(plan, full_config)
    store = ResultsStore(study_dir, study=name, strategy=options.strategy, family=family,
                         hp_kinds={p.name: p.kind for p in space.params})
    identity = TrialIdentity(full_config, key_of, space.canonical)
    search = _open_search(plan, key_of)
    try:
        for line in reconcile(store, identity, search.done or {}, Path(plan.settings.checkpoint_root),
                              segment=plan.segment, epochs_planned=plan.epochs):
            print(line, flush=True)
        interrupted = False
        if options.budget_epochs:
            search.budget = EpochBudget(search.searcher, options.budget_epochs, spent=len(store.epochs))
            print(f"budget: {options.budget_epochs} epochs in all, {search.budget.spent} spent so far", flush=True)
        if search.to_run != 0 and not (search.budget and search.budget.reached):
            interrupted = _fit(plan, search, store, identity, full_config, started)
        finished = not interrupted and (options.strategy != "greedy" or search.searcher.state.finished
                                        or bool(search.budget and search.budget.reached))
        final = None
        if finished:
            final, interrupted = _final_stage(plan, store, full_config)
    finally:
        if search.lease is not None:
            search.lease.release()
    summary = summarize(store, name, study_dir, options.strategy, family, plan.preset_name, plan.record["baselines"],
                        plan.record, time.perf_counter() - started, finished and not interrupted)
    summary.final = final
    write_json_atomic(study_dir / "summary.json", asdict(summary))
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _plan(options: SearchOptions, family: str, space: Space, name: str, study_dir: Path) -> StudyPlan:
    """Resources, preset and budget; the data; the study's record (created, or checked against this run)."""
    import ray

    from trainables.data import resolve_data

    gpus_available = float(ray.cluster_resources().get("GPU", 0))
    preset_name = options.preset or ("thesis" if gpus_available else "cpu")
    preset = PRESETS[preset_name]
    why = "" if options.preset else (" (GPUs found)" if gpus_available else " (no GPU found; --preset thesis for the report's full budget)")
    print(f"preset: {preset_name}{why}: {preset.description}", flush=True)
    auto = options.gpus_per_trial in (None, "auto")
    if auto and not gpus_available and options.gpus_per_trial == "auto":
        print("--gpus-per-trial auto: no GPU found; trials train on CPUs", flush=True)
    # auto: a whole GPU until _pack measures one trial (after the data and the space are known)
    gpus_per_trial = (1.0 if gpus_available else 0.0) if auto else float(options.gpus_per_trial)
    if gpus_per_trial > max(gpus_available, 0) and gpus_per_trial > 0:
        raise StudyError(f"--gpus-per-trial {gpus_per_trial} asks for more GPUs than the cluster has ({gpus_available:g}); "
                         "use a fraction such as 0.5 to share a GPU, or 0 for CPU only.")
    cpus_available = float(ray.cluster_resources().get("CPU", 0))
    if options.cpus_per_trial > cpus_available:
        raise StudyError(f"--cpus-per-trial {options.cpus_per_trial:g} is more than the cluster's {cpus_available:g} CPUs.")

    data = resolve_data(options.data, size=options.size, seed=options.seed).subset(preset.n_train, preset.n_val)
    n_train = len(data.train_stems)
    epochs = options.epochs or preset.epochs_for(n_train)
    if not options.epochs and epochs != preset.epochs:
        print(f"budget: {epochs} epochs per trial, so each trial sees at least {preset.min_images:,} training images "
              f"({n_train} training pairs)", flush=True)
    grace = preset.grace_period if options.epochs else preset.grace_for(epochs)  # ASHA: scaled with a data-sized budget
    settings = RunSettings(epochs=epochs, seed=options.seed, width_divisor=preset.width_divisor,
                           checkpoint_root=str(study_dir / "trials"), threads=max(1, int(options.cpus_per_trial)),
                           train_eval_size=preset.train_eval_size, precision=options.precision,
                           channels_last=options.channels_last, compile=options.compile,
                           cuda_graphs=options.cuda_graphs)
    domain = _domain(options, study_dir)
    record = check_or_create_study(study_dir, _identity(space, settings, options, preset, domain), data,
                                   {"space_file": space.source, "preset": preset_name})
    return StudyPlan(options, family, space, name, study_dir, preset_name, preset, epochs, grace,
                     options.samples or (UNBOUNDED if options.budget_epochs else preset.samples), settings, data, record,
                     cpus_available, gpus_available,
                     gpus_per_trial, auto_share=auto and bool(gpus_available), domain=domain)


def _domain(options: SearchOptions, study_dir: Path) -> str:
    """What the strategy samples: greedy the grid; others --domain, else what the study was started with, else the grid."""
    if options.strategy == "greedy":
        return "grid"
    if options.domain:
        return options.domain
    try:
        return recorded_domain(json.loads((study_dir / "study.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return "grid"


def recorded_domain(record: dict[str, Any]) -> str:
    """The domain a study's record says; a study from before --domain: greedy the grid, the others the ranges."""
    return record.get("domain", "grid" if record.get("strategy") == "greedy" else "ranges")


class TrialConfigs:
    """A searcher's config completed with the study's fixed values and run settings, and its trial key.

    A class rather than closures: Ray pickles the searcher, which holds :meth:`key`.
    """

    def __init__(self, plan: StudyPlan) -> None:
        _, _, self.config_cls = family_parts(plan.family)
        self.space, self.settings, self.fixed = plan.space, asdict(plan.settings), dict(plan.space.fixed)

    def full(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**self.fixed, **self.space.canonical(config), **self.settings}

    def key(self, config: dict[str, Any]) -> str:
        return trial_key(*parse_config(self.full(config), self.config_cls))


def _trial_identity(plan: StudyPlan):
    """(full_config, key_of) of :class:`TrialConfigs`."""
    configs = TrialConfigs(plan)
    return configs.full, configs.key


def _open_search(plan: StudyPlan, key_of) -> OpenSearch:
    """The greedy searcher from its saved state, or the Optuna study from its storage (repaired)."""
    options = plan.options
    if options.strategy == "greedy":
        state_path = plan.study_dir / "greedy_state.json"
        margin = options.greedy_margin if options.greedy_margin is not None else default_margin(plan.family)
        searcher = GreedySearcher(plan.space, max_sweeps=options.max_sweeps,
                                  max_blocks=options.max_blocks or plan.preset.max_blocks, state_path=state_path,
                                  margin=margin, on_block=_print_block)
        if state_path.exists():
            searcher.restore(str(state_path))
            stored = searcher.state.margin
            if options.greedy_margin is not None and abs(options.greedy_margin - stored) > 1e-12:
                raise StudyError(f"study {plan.name} was started with --greedy-margin {stored:g}; a resumed greedy "
                                 "search keeps its margin (its decisions so far used it). Drop the option, or use a new --study.")
        first_block: dict[str, Any] = {}
        for block in searcher.state.blocks:
            for key in block.keys:
                first_block.setdefault(key, block)
        done = {}
        for key, value in searcher.state.evaluated.items():
            config = json.loads(key)
            done[key_of(config)] = SearcherRecord(config, errored=value >= DIVERGED_L1, block=first_block.get(key))
        return OpenSearch(searcher, -1, 0 if searcher.state.finished else None, searcher.trial_blocks.get, done,
                          planned=searcher.planned_total)

    url = options.storage or f"sqlite:///{plan.study_dir / 'optuna.db'}"
    try:
        storage = open_storage(url)
    except StorageError as err:
        raise StudyError(str(err)) from None
    lease = _take_lease(url, plan.name)  # before repairing anything: the trials may be another driver's
    try:
        study = open_study(storage, plan.name, plan.space, strategy=options.strategy, seed=options.seed,
                           samples=plan.samples, key_of=key_of, use_ranges=plan.domain == "ranges",
                           expected=_expected_trials(plan))
    except BaseException:
        lease.release()
        raise
    bounded = plan.samples < UNBOUNDED
    if study.done or study.requeued:
        print(f"continuing study {plan.name}: {study.done}" + (f" of {plan.samples}" if bounded else "")
              + " trials already done" + (f", {study.to_run} to run" if bounded else "")
              + (f" ({study.requeued} interrupted by a stopped driver, run again from their checkpoints)"
                 if study.requeued else ""), flush=True)
    done = {key: SearcherRecord(config, errored=outcome == "errored") for key, (config, outcome) in study.finished.items()}
    return OpenSearch(study.searcher, study.to_run if bounded else -1, study.to_run if bounded else None, None, done,
                      lease, planned=(lambda: plan.samples) if bounded else None)


def _expected_trials(plan: StudyPlan) -> int:
    """Trials the study is expected to run, for the samplers' start-up: --samples, else what --budget-epochs affords
    at full length, else the preset's."""
    if plan.options.samples:
        return plan.options.samples
    if plan.options.budget_epochs:
        return max(1, plan.options.budget_epochs // plan.epochs)
    return plan.preset.samples


def _print_block(block) -> None:
    """One line when a greedy block resolves: what it adopted and by how much."""
    gain = f", {block.advantage:+.1%} lower L1 than the held {block.held}" if block.advantage is not None else ""
    print(f"block {block.index} ({block.param}): {block.decision}, now {block.param}={block.adopted}{gain}", flush=True)


def _take_lease(url: str, name: str) -> StudyLease:
    """The study's lease in its Optuna storage: one driver per study across machines, not only per folder."""
    def lost() -> None:
        print(f"error: another driver took over the lease of study {name} in {safe_url(url)} (this driver's heartbeats "
              "stopped reaching the storage for longer than the lease timeout); stopping this one.",
              file=sys.stderr, flush=True)
        _thread.interrupt_main()

    try:
        lease = StudyLease(url, name, on_lost=lost)
        took_over = lease.acquire()
    except LeaseHeld as err:
        raise StudyError(str(err)) from None
    except (SQLAlchemyError, ValueError) as err:
        raise StudyError(f"cannot take the study lease in the Optuna storage {safe_url(url)} ({err}).") from None
    if took_over is not None:
        print(f"took over the lease of study {name} from {took_over.describe()} (its driver stopped)", flush=True)
    return lease


def _scheduler(plan: StudyPlan, store: ResultsStore, block_of=None):
    """ASHA (or none). For greedy (``block_of``: Ray trial id -> block) a trial is judged against
    earlier blocks only, so the path does not depend on which of a block's trials reports first."""
    from ray.tune.schedulers import FIFOScheduler

    from search.scheduler import ResumableASHA

    options = plan.options
    if options.scheduler != "asha":
        return FIFOScheduler()
    group_of = None
    if block_of is not None:
        def group_of(trial_id: str) -> int | None:
            block = block_of(trial_id)
            return None if block is None else block.index
    scheduler = ResumableASHA(time_attr="epoch", max_t=plan.epochs,
                              grace_period=min(options.grace_period or plan.grace, plan.epochs),
                              reduction_factor=options.reduction_factor or plan.preset.reduction_factor,
                              group_of=group_of)
    # A resumed study: its finished trials' rungs, as the uninterrupted search had them.
    scheduler.seed_rungs(store.finished_epochs(), store.greedy_blocks())
    return scheduler


def _fit(plan: StudyPlan, search: OpenSearch, store: ResultsStore, identity: TrialIdentity, full_config,
         started: float) -> bool:
    """Run the trials through Ray Tune; returns whether the run was interrupted (Ctrl-C, SIGTERM)."""
    from ray import tune

    options = plan.options
    trainable_fn, _, _ = family_parts(plan.family)

    def trial_function(config: dict[str, Any], data: VMSDataset) -> None:
        trainable_fn(full_config(config), data)

    _print_estimate(plan, search, full_config)
    done = len(store.finished_ids())
    final_runs = options.final_top_k * options.final_seeds
    progress = SearchProgress(search.planned or (lambda: done), epochs_per_trial=plan.epochs, done_trials=done,
                              final_runs=final_runs)
    printer = Printer(done, progress)
    printer.seed_best(store)
    callback = ResultsCallback(store, identity, segment=plan.segment, epochs_planned=plan.epochs,
                               block_of=search.block_of, on_finish=printer, on_result=progress.on_epoch)
    _allow_pending_trials(plan)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial_function, data=plan.data), _resources(plan)),
        tune_config=tune.TuneConfig(metric="best_val_l1", mode="min", search_alg=search.budget or search.searcher,
                                    scheduler=_scheduler(plan, store, search.block_of), num_samples=search.num_samples,
                                    max_concurrent_trials=options.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"segment-{plan.segment}", storage_path=str(plan.study_dir / "ray"),
            callbacks=[callback, *_gpu_callbacks(plan)],
            verbose=2 if options.verbose else 0, log_to_file=not options.verbose,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    # Record the segment before it runs, so a killed driver's segment still counts.
    record = plan.record
    record.setdefault("segments", []).append({"started_at": _now_iso(), "ended_at": None, "preset": plan.preset_name,
                                              "gpus_per_trial": plan.gpus_per_trial})
    write_json_atomic(plan.study_dir / "study.json", record)
    try:
        interrupted = _run_tuner(tuner) is None
    finally:
        store.flush()
    record["segments"][-1].update(ended_at=_now_iso(), wall_seconds=time.perf_counter() - started,
                                   interrupted=interrupted)
    write_json_atomic(plan.study_dir / "study.json", record)
    return interrupted


def _gpu_callbacks(plan: StudyPlan) -> list[Any]:
    """Trials sharing a GPU: one that runs out of its memory is retried with a larger share (search.packing)."""
    from search.packing import out_of_memory_retry

    return [out_of_memory_retry()] if 0 < plan.gpus_per_trial < 1 else []


def _resources(plan: StudyPlan) -> dict[str, float]:
    return {"cpu": plan.options.cpus_per_trial, "gpu": plan.gpus_per_trial}


def _concurrency(plan: StudyPlan) -> int:
    """How many trials can run at once on the cluster's resources."""
    options = plan.options
    fits = plan.cpus_available / options.cpus_per_trial
    if plan.gpus_per_trial:
        fits = min(fits, plan.gpus_available / plan.gpus_per_trial)
    return max(1, int(min(fits, options.max_concurrent or fits)))


def _allow_pending_trials(plan: StudyPlan) -> None:
    """Ray Tune keeps one trial pending at a time with a searcher, so short trials never overlap
    (each waits for the previous one's worker to start). Allow as many pending trials as can run at once."""
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(_concurrency(plan))


def _default_and_widest(plan: StudyPlan, full_config) -> list[dict[str, Any] | None]:
    """Full configs of the study default and of the widest models the space allows (None: the same)."""
    defaults = plan.space.defaults()
    widest = dict(defaults)  # where a search may end up
    for param in plan.space.params:
        if param.name.endswith("width") and plan.space.active(param.name, widest):
            widest = plan.space.with_value(widest, param.name, max(plan.space.choice(param.name, widest).values))
    return [full_config(defaults), full_config(widest) if widest != defaults else None]


def _pack(plan: StudyPlan, full_config) -> None:
    """--gpus-per-trial auto: one trial alone on a GPU, measured; then the share per trial (search.packing)."""
    import ray

    from search.packing import GpuProbe, choose_share, probe_gpu

    probe = ray.remote(num_cpus=plan.options.cpus_per_trial, num_gpus=1)(probe_gpu)
    try:
        measured = ray.get(probe.remote(plan.family, _default_and_widest(plan, full_config), plan.data), timeout=600)
    except Exception as err:  # noqa: BLE001 - fall back to a whole GPU per trial, and say why
        print(f"--gpus-per-trial auto: the measurement failed ({str(err).strip().splitlines()[-1][:160]}); "
              "one trial per GPU", flush=True)
        return
    if measured is None:
        print("--gpus-per-trial auto: the GPU worker found no CUDA device; one trial per GPU", flush=True)
        return
    plan.probe = GpuProbe(**measured)
    share = choose_share(plan.probe)
    plan.gpus_per_trial = share.fraction
    print(f"--gpus-per-trial auto: {share.fraction:g} ({share.why})", flush=True)


def _print_estimate(plan: StudyPlan, search: OpenSearch, full_config) -> None:
    """The first promise: this search's size times one epoch measured where trials run, before anything runs."""
    import ray

    if search.to_run == 0:
        return
    blocks = search.searcher.planned_blocks() if isinstance(search.searcher, GreedySearcher) else [search.to_run or 0]
    if not sum(blocks):
        return
    configs = _default_and_widest(plan, full_config)
    if plan.probe is not None and plan.probe.epoch_s:  # auto packing measured them alone on a GPU
        epoch_s, widest_s = (list(plan.probe.epoch_s) + [None, None])[:2]
    else:
        measure = ray.remote(num_cpus=plan.options.cpus_per_trial, num_gpus=plan.gpus_per_trial)(measure_on_worker)
        try:  # as a task with a trial's resources: measured where trials train, no CUDA context in the driver
            epoch_s, widest_s = ray.get(measure.remote(plan.family, configs, plan.data), timeout=300)
        except Exception as err:  # noqa: BLE001 - a measurement is a nicety: never a reason not to search
            print(f"estimate: not available ({str(err).strip().splitlines()[-1][:160]})", flush=True)
            return
    if epoch_s is None:
        return
    options = plan.options
    final_runs = options.final_top_k * options.final_seeds
    print(estimate_line(blocks=blocks, epochs=plan.epochs, final_runs=final_runs, concurrency=_concurrency(plan),
                        epoch_s=epoch_s, widest_epoch_s=widest_s), flush=True)


def _run_tuner(tuner):
    """``tuner.fit()`` with SIGTERM treated as Ctrl-C; returns its results, or None when interrupted."""
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return tuner.fit()
    except KeyboardInterrupt:
        return None
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _final_stage(plan: StudyPlan, store: ResultsStore, full_config) -> tuple[dict[str, Any] | None, bool]:
    """Re-train the best configurations over new seeds and measure them on the test split (search.final).

    Returns (summary.json's ``final`` block, interrupted). Each run checkpoints like a search
    trial, so an interrupted stage resumes, and a finished one replays in seconds.
    """
    from ray import tune

    options = plan.options
    top = top_configurations(store, options.final_top_k, [p.name for p in plan.space.params])
    if not top or not options.final_seeds:
        return None, False
    seeds = final_seeds(options.seed, options.final_seeds)
    runs = plan_runs(top, seeds, full_config)
    trainable_fn, _, config_cls = family_parts(plan.family)
    keys = [trial_key(*parse_config(run.config, config_cls)) for run in runs]
    print(f"final: re-training the top {len(top)} configurations with seeds {', '.join(map(str, seeds))} "
          f"({len(runs)} runs of {plan.epochs} epochs, no early stopping); the epoch is chosen on val, "
          + ("then measured once on the test split" if plan.data.has_test else "and this dataset has no test split"),
          flush=True)

    def final_function(config: dict[str, Any], data: VMSDataset) -> None:
        trainable_fn(runs[config["index"]].config, data)

    class FinalPrinter(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            run, last = runs[trial.config["index"]], trial.last_result or {}
            test = last.get("test_l1")
            print(f"final #{run.rank} seed {run.seed}: val L1 {last.get('selected_val_l1', float('nan')):.4f}"
                  + (f", test L1 {test:.4f}" if test is not None else "") + f" (best epoch {last.get('best_epoch')})",
                  flush=True)

    _allow_pending_trials(plan)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(final_function, data=plan.data), _resources(plan)),
        param_space={"index": tune.grid_search(list(range(len(runs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"final-{plan.segment}", storage_path=str(plan.study_dir / "ray"),
                                  callbacks=[FinalPrinter(), *_gpu_callbacks(plan)], verbose=2 if options.verbose else 0,
                                  log_to_file=not options.verbose,
                                  failure_config=tune.FailureConfig(max_failures=options.max_failures)),
    )
    results = _run_tuner(tuner)
    if results is None:
        return None, True
    rows = []
    for result in results:
        index = result.config["index"]
        rows.append(final_row(plan.name, runs[index], keys[index], result.metrics, result.error is not None))
    write_final(rows, plan.study_dir / "final.parquet")
    return aggregate(rows, plan.data, seeds), False


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def summarize(store: ResultsStore, name: str, study_dir: Path, strategy: str, family: str, preset: str,
              baselines: dict[str, float], record: dict[str, Any], wall: float, finished: bool) -> Summary:
    counts = {status: 0 for status in STATUSES}
    best_row = None
    for row in store.trials.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        if row["status"] in ("completed", "stopped") and row.get("best_val_l1") is not None:
            if best_row is None or row["best_val_l1"] < best_row["best_val_l1"]:
                best_row = row
    total_wall = sum(s.get("wall_seconds") or 0.0 for s in record.get("segments", []))
    return Summary(
        study=name, study_dir=str(study_dir), strategy=strategy, family=family, preset=preset,
        best_trial_id=best_row["trial_id"] if best_row else None,
        best_val_l1=best_row["best_val_l1"] if best_row else None,
        best_channel_l1={c: best_row.get(f"best_val_l1_{c}") for c in MAP_CHANNELS} if best_row else None,
        best_config=json.loads(best_row["config_json"]) if best_row else None,
        baselines=baselines, counts=counts, trials=len(store.trials), wall_seconds=wall,
        total_wall_seconds=total_wall, finished=finished,
        driver_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


def format_summary(summary: Summary) -> str:
    base = summary.baselines
    lines = [f"study {summary.study} ({summary.strategy}, {summary.family}, preset {summary.preset}): "
             f"{summary.trials} trials, " + ", ".join(f"{v} {k}" for k, v in summary.counts.items() if v)
             + f"; {summary.wall_seconds:.0f} s this run" + ("" if summary.finished else " (not finished)")]
    if summary.best_val_l1 is not None:
        better = min(base["black_l1"], base["mean_map_l1"])
        lines.append(f"best val L1 {summary.best_val_l1:.4f} (trial {summary.best_trial_id}) against baselines: "
                     f"all-black {base['black_l1']:.4f}, mean map {base['mean_map_l1']:.4f} "
                     f"({(1 - summary.best_val_l1 / base['mean_map_l1']) * 100:+.0f}% vs mean map, "
                     f"{(1 - summary.best_val_l1 / better) * 100:+.0f}% vs the better baseline)")
        channels = summary.best_channel_l1 or {}
        if all(channels.get(c) is not None and f"black_l1_{c}" in base for c in MAP_CHANNELS):
            lines.append("per channel, remembered / falsely remembered: "
                         + " / ".join(f"{channels[c]:.4f}" for c in MAP_CHANNELS) + " against all-black "
                         + " / ".join(f"{base[f'black_l1_{c}']:.4f}" for c in MAP_CHANNELS))
        hp = {k: v for k, v in (summary.best_config or {}).items()}
        lines.append("best config: " + _hp_line({k: hp[k] for k in hp if k not in RunSettings.__dataclass_fields__}))
    else:
        lines.append("no trial has finished yet")
    lines.append(f"results: {summary.study_dir}/trials.parquet, epochs.parquet, summary.json"
                 + (", final.parquet" if summary.final else "") + "; "
                 f"dashboard: python -m dashboards.build {summary.study_dir} -o report.html")
    lines.extend(format_final(summary.final, base))  # last: the numbers to publish
    return "\n".join(lines)
