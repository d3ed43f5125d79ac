"""What one driver run will do: the preset and budget, resources, the data, and the study's record.

The record (``study.json``) says what the study is. A new study writes it; a resumed one must
match it, field by field, or it is refused before anything is touched: mixing models, spaces,
data or budgets in one study would corrupt it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from search.errors import StudyError
from search.runner.options import PRESETS, Preset, SearchOptions, find_preset
from search.space import Space
from search.study_file import recorded_space
from search.store.results import TrialIdentity
from search.store.study import STUDY_FORMAT, StudyStore
from search.strategies import Strategy
from search.strategies.base import UNBOUNDED
from trainables.checkpoints import TrialStore
from trainables.config import (DEVICE_SETTINGS, PER_TRIAL_SETTINGS, RunSettings, checkpoint_folder, parse_config,
                               trial_key)
from trainables.data import VMSDataset
from trainables.family import Family


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StudyPlan:
    """What this driver run will do: budget, resources, data and the study's record."""

    options: SearchOptions
    strategy: Strategy
    family: type[Family]
    space: Space
    store: StudyStore
    preset: Preset
    epochs: int
    grace: int
    samples: int
    settings: dict[str, Any]  # the run settings every trial's config carries (trainables.config.RunSettings' fields)
    data: VMSDataset
    record: dict[str, Any]
    cpus_available: float
    gpus_available: float
    gpus_per_trial: float
    auto_share: bool = False  # --gpus-per-trial auto with GPUs: set by packing from a measured trial
    probe: Any = None  # trainables.measure.GpuProbe of the packing probe (its epoch seconds serve the estimate)
    domain: str = "grid"  # grid | ranges: what the strategy samples
    tracker: Any = None  # search.runner.tracking.MLflowTracker with --mlflow (or MLFLOW_TRACKING_URI)
    nodes: list[tuple[float, float]] = field(default_factory=list)  # (CPUs, GPUs) of each live node: a trial needs one

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def segment(self) -> int:
        return len(self.record.get("segments", []))

    @property
    def final_runs(self) -> int:
        return self.options.final_top_k * self.options.final_seeds

    @property
    def expected_trials(self) -> int:
        """Trials the study is expected to run, for the samplers' start-up: --samples, else what
        --budget-epochs affords at full length, else the preset's."""
        if self.options.samples:
            return self.options.samples
        if self.options.budget_epochs:
            return max(1, self.options.budget_epochs // self.epochs)
        return self.preset.samples


def make_plan(options: SearchOptions, family: type[Family], space: Space, store: StudyStore) -> StudyPlan:
    """Resources, preset and budget; the data; the study's record (created, or checked against this run)."""
    import ray

    from trainables.data import resolve_data

    resources = ray.cluster_resources()
    gpus_available, cpus_available = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    nodes = node_resources()
    if not gpus_available and _torch_sees_a_gpu():
        print("note: this machine has a GPU that Ray did not count (Ray counts GPUs through NVML, which a container "
              "without its utility libraries lacks), so trials train on CPUs; start Ray with `ray start --head "
              "--num-gpus N` and pass --address, or make NVML readable, to train on it", flush=True)
    existing = store.read_record()
    print(f"study: {store.name} in {store.root}: {_new_or_continued(existing)}", flush=True)
    if changed := changed_choices(existing, options):
        print(changed, flush=True)
    preset = _preset(options, gpus_available, existing)
    gpus_per_trial, auto = _gpus_per_trial(options, gpus_available)
    if options.cpus_per_trial > cpus_available:
        raise StudyError(f"--cpus-per-trial {options.cpus_per_trial:g} is more than the cluster's {cpus_available:g} CPUs.")
    check_one_node_fits(nodes, options.cpus_per_trial, gpus_per_trial)
    if len(nodes) > 1 and not store.in_bucket:
        check_every_node_sees(store, options.cpus_per_trial, gpus_per_trial)
    val_share = _val_share(options, existing, store)
    data = resolve_data(options.data, size=options.size, seed=options.seed, val_share=val_share).subset(
        preset.n_train, preset.n_val)
    print(f"data: {data.source}: {data.roles()}", flush=True)
    for note in data.notes:  # what the reader left out (its split is in the line above)
        if not note.startswith("split:"):
            print(f"data: note: {note}", flush=True)
    n_train = len(data.train_stems)
    epochs = options.epochs or preset.epochs_for(n_train)
    if not options.epochs and epochs != preset.epochs:
        print(f"budget: {epochs} epochs per trial, so each trial sees at least {preset.min_images:,} training images "
              f"({n_train} training pairs)", flush=True)
    grace = preset.grace_period if options.epochs else preset.grace_for(epochs)  # ASHA: scaled with a data-sized budget
    settings = asdict(RunSettings(  # checked here as each trial will parse them
        epochs=epochs, seed=options.seed, width_divisor=preset.width_divisor, checkpoint_root=store.checkpoint_root,
        threads=max(1, int(options.cpus_per_trial)), train_eval_size=preset.train_eval_size,
        precision=options.precision, channels_last=options.channels_last, compile=options.compile,
        cuda_graphs=options.cuda_graphs))
    strategy = options.strategy_object
    space, note = recorded_space(existing, space, explicit=options.space_file is not None)
    if note:
        print(note, flush=True)
    domain = strategy.domain(options.domain, existing)
    identity = study_identity(strategy, space, settings, preset, domain, data)
    record = check_or_create_record(store, existing, identity, strategy, data,
                                    {"space_file": space.source, "preset": preset.name, **space.record(),
                                     "val_share": val_share, "splits": {**data.splits, "roles": data.roles()}})
    record["choices"] = run_choices(options)  # this run's, which the next run compares with (changed_choices)
    store.write_record(record)
    samples = options.samples or (UNBOUNDED if options.budget_epochs else preset.samples)
    return StudyPlan(options, strategy, family, space, store, preset, epochs, grace, samples, settings, data, record,
                     cpus_available, gpus_available, gpus_per_trial, auto_share=auto and bool(gpus_available),
                     domain=domain, nodes=nodes)


def _val_share(options: SearchOptions, existing: dict[str, Any] | None, store: StudyStore) -> float | None:
    """The share of the training pairs held out for validation when the data has no test split: --val-share, else
    what the study recorded, else the default. A study made before the rule (no ``val_share`` in its record)
    keeps the split it was made with: None, nothing held out."""
    from trainables.data import DEFAULT_VAL_SHARE

    if existing is None:
        return DEFAULT_VAL_SHARE if options.val_share is None else options.val_share
    recorded = existing.get("val_share")
    if options.val_share is not None and options.val_share != recorded:
        made = (f"--val-share {recorded:g}" if recorded is not None
                else "no validation share (it predates --val-share)")
        raise StudyError(f"study {store.name} in {store.root} was made with {made}; --val-share {options.val_share:g} "
                         "would change its splits. Drop --val-share, or use a new --study name.")
    return recorded


# What a study's runs may choose afresh (the study's identity, above, they may not): each run records them, and a run
# that changes one says so, where it was silent.
RUN_CHOICES = ("scheduler", "grace_period", "reduction_factor", "samples", "budget_epochs", "max_concurrent",
               "max_failures", "final_top_k", "final_seeds")


def run_choices(options: SearchOptions) -> dict[str, Any]:
    """This run's RUN_CHOICES as given (None: the default), recorded in study.json (``choices``, the last run's)."""
    return {**{name: getattr(options, name) for name in RUN_CHOICES},
            "strategy_options": dict(sorted(options.strategy_options.items()))}  # its own, as given (--blocks...)


def changed_choices(existing: dict[str, Any] | None, options: SearchOptions) -> str | None:
    """A line naming what this run chooses otherwise than the study's last run did, or None."""
    last = (existing or {}).get("choices")
    if last is None:
        return None
    now = run_choices(options)
    changes = [f"--{name.replace('_', '-')} {_shown(last.get(name))} -> {_shown(now[name])}"
               for name in RUN_CHOICES if name in last and last[name] != now[name]]
    before, after = last.get("strategy_options", {}), now["strategy_options"]
    changes += [f"--{name.replace('_', '-')} {_shown(before.get(name))} -> {_shown(after.get(name))}"
                for name in sorted({*before, *after}) if before.get(name) != after.get(name)]
    if not changes:
        return None
    return (f"note: this run changes what the study's last run used: {', '.join(changes)} (trials so far keep what "
            "they ran with; the rest follow this run)")


def _shown(value: Any) -> str:
    return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _new_or_continued(existing: dict[str, Any] | None) -> str:
    runs = len(existing.get("segments", [])) if existing else 0
    if not existing:
        return "new"
    return f"continues ({runs} earlier run{'s' if runs > 1 else ''} of its trials)" if runs else "continues"


def node_resources() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each live node of the cluster (empty where Ray does not say: its totals then stand for one)."""
    import ray

    try:
        return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - a client connection that cannot list nodes: the totals' checks stand
        return []


def check_one_node_fits(nodes: list[tuple[float, float]], cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial runs on one node: refuse a share no node holds (the cluster's totals may, its trials would wait
    forever)."""
    if not nodes or any(cpus >= cpus_per_trial and gpus >= gpus_per_trial for cpus, gpus in nodes):
        return
    largest = max(nodes, key=lambda node: (node[1], node[0]) if gpus_per_trial else (node[0], node[1]))
    shape = f"{largest[0]:g} CPU(s)" + (f" and {largest[1]:g} GPU(s)" if gpus_per_trial else "")
    asked = f"{cpus_per_trial:g} CPU(s)" + (f" and {gpus_per_trial:g} GPU(s)" if gpus_per_trial else "")
    raise StudyError(f"a trial asks for {asked} (--cpus-per-trial, --gpus-per-trial), more than any one node of the "
                     f"cluster holds (the largest of its {len(nodes)} nodes has {shape}); a trial runs on one node: "
                     "ask for at most what one node has.")


def check_every_node_sees(store: StudyStore, cpus_per_trial: float = 0, gpus_per_trial: float = 0) -> None:
    """On a cluster of several nodes, a local study folder must be one that every node that can hold a trial sees (a
    shared file system): a trial writes its checkpoints where it runs, and the driver reads them. A file written
    here is looked for by a task on each such node (nodes that join later are not checked)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = store.root.local / f".seen-by-every-node-{uuid.uuid4().hex[:8]}"
    marker.write_text("a search checks that every node sees its study folder; this file is removed at once\n")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= max(cpus_per_trial, 1e-9)
                 and n["Resources"].get("GPU", 0) >= gpus_per_trial]
        look = ray.remote(num_cpus=0, max_retries=0)(os.path.exists)
        running = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                   .remote(str(marker)) for n in nodes]
        try:
            seen = ray.get(running, timeout=120)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as err:
            for task in running:
                ray.cancel(task, force=True)
            print(f"note: could not check that every node sees the study folder {store.root} ({type(err).__name__}); "
                  "a local --runs-dir must be one every node mounts (docs/clusters.md)", flush=True)
            return
    finally:
        marker.unlink(missing_ok=True)
    unseen = [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(nodes, seen) if not ok]
    if unseen:
        raise StudyError(f"the study folder {store.root} is not seen by {len(unseen)} of the cluster's {len(nodes)} "
                         f"nodes ({', '.join(unseen)}): a trial writes its checkpoints where it runs. Give --runs-dir "
                         "a folder every node mounts at the same path (NFS), or a bucket (s3://... or gs://..., "
                         "docs/clusters.md).")


def trials_that_fit(nodes: list[tuple[float, float]], cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the nodes hold at once, each on one node."""
    def on(cpus: float, gpus: float) -> int:
        fits = int(cpus / cpus_per_trial + 1e-9)
        if not gpus_per_trial:
            return fits
        if gpus_per_trial < 1:  # Ray fits a fraction within one GPU: 0.4 twice on each, not five times on two
            return min(fits, int(gpus + 1e-9) * int(1 / gpus_per_trial + 1e-9))
        return min(fits, int(gpus / gpus_per_trial + 1e-9))

    return sum(on(*node) for node in nodes)


def _torch_sees_a_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _preset(options: SearchOptions, gpus_available: float, existing: dict[str, Any] | None) -> Preset:
    """--preset, else the study's own (a resumed study keeps its size, whatever GPUs this run's Ray sees), else
    thesis with GPUs and cpu without."""
    recorded = (existing or {}).get("preset")
    recorded = recorded if recorded in PRESETS else None  # a preset a benchmark made for itself is not known here
    preset = find_preset(options.preset or recorded or ("thesis" if gpus_available else "cpu"))
    why = "" if options.preset else (" (the study's)" if recorded else " (GPUs found)" if gpus_available
                                     else " (no GPU found; --preset thesis for the report's full budget)")
    print(f"preset: {preset.name}{why}: {preset.description}", flush=True)
    return preset


def _gpus_per_trial(options: SearchOptions, gpus_available: float) -> tuple[float, bool]:
    """The GPU share per trial, and whether it is to be measured (``auto``: a whole GPU until packing measures one)."""
    auto = options.gpus_per_trial in (None, "auto")
    if auto and not gpus_available and options.gpus_per_trial == "auto":
        print("--gpus-per-trial auto: no GPU found; trials train on CPUs", flush=True)
    gpus_per_trial = (1.0 if gpus_available else 0.0) if auto else float(options.gpus_per_trial)
    if gpus_per_trial > max(gpus_available, 0) and gpus_per_trial > 0:
        raise StudyError(f"--gpus-per-trial {gpus_per_trial} asks for more GPUs than the cluster has ({gpus_available:g}); "
                         "use a fraction such as 0.5 to share a GPU, or 0 for CPU only.")
    return gpus_per_trial, auto


def study_identity(strategy: Strategy, space: Space, settings: dict[str, Any], preset: Preset, domain: str,
                   data: VMSDataset) -> dict[str, Any]:
    """What a study is: a resumed study must match every field."""
    return {
        "family": space.family, "strategy": strategy.name, "space_fingerprint": space.fingerprint, "domain": domain,
        "settings": {k: v for k, v in settings.items()
                     if k not in ("checkpoint_root", "threads", "evaluate_test", *DEVICE_SETTINGS, *PER_TRIAL_SETTINGS)},
        "data_subset": [preset.n_train, preset.n_val], "data_fingerprint": data.fingerprint,
        "test_fingerprint": data.test_fingerprint,
    }


def check_or_create_record(store: StudyStore, existing: dict[str, Any] | None, identity: dict[str, Any],
                           strategy: Strategy, data: VMSDataset, extra: dict[str, Any]) -> dict[str, Any]:
    """Refuse a study whose record differs from this run's identity, or create the study (record, val_data.npz)."""
    if existing is not None:
        existing = {**existing, "domain": strategy.domain(None, existing)}  # the rule for a study from before --domain
        adopted = "test_fingerprint" not in existing  # a study from before: its test pairs as they are now, kept
        existing.setdefault("test_fingerprint", identity["test_fingerprint"])
        differences = [f"{k}: study has {existing.get(k)!r}, this run {v!r}" for k, v in identity.items()
                       if existing.get(k) != v]
        if differences:
            raise StudyError(
                f"study {store.name} in {store.root} was created with other settings, and mixing them would corrupt it ("
                + "; ".join(differences) + "). Use the same options, or a new --study name.")
        if adopted:
            store.write_record(existing)
        return existing
    record = {"format": STUDY_FORMAT, "study": store.name, **identity, **extra, "baselines": data.baselines(),
              "data_source": data.source, "created_at": now_iso(), "segments": []}
    store.write_val_data(data.val_images, data.val_maps, data.val_stems)
    store.write_record(record)
    return record


class TrialConfigs:
    """A searcher's config completed with the study's fixed values and run settings, and its trial key.

    A class rather than closures: Ray pickles the searcher, which holds :meth:`key`.
    """

    def __init__(self, plan: StudyPlan) -> None:
        self.config_cls = plan.family.config_cls
        self.width_params = plan.family.width_params
        self.space, self.settings, self.fixed = plan.space, dict(plan.settings), dict(plan.space.fixed)
        self.trials = plan.store.trials_root

    def full(self, config: dict[str, Any]) -> dict[str, Any]:
        """The searcher's config with the study's fixed values and run settings (a member's index kept)."""
        own = {k: config[k] for k in PER_TRIAL_SETTINGS if k in config}
        return {**self.fixed, **self.space.canonical(config), **self.settings, **own}

    def key(self, config: dict[str, Any]) -> str:
        """The trial key of a searcher's config."""
        return self.key_of_full(self.full(config))

    def key_of_full(self, full: dict[str, Any]) -> str:
        """The trial key of a complete config: the one place a key is computed (search, workers, final stage)."""
        return trial_key(*parse_config(full, self.config_cls))

    def storage(self, full: dict[str, Any]) -> TrialStore:
        """Where a trial of this complete config keeps its checkpoints: the storage object its worker receives."""
        key = self.key_of_full(full)
        return TrialStore(self.trials / checkpoint_folder(key, full), key=key)

    def identity(self) -> TrialIdentity:
        """The results' view of a Ray trial: its trial key, full config and hyperparameters."""
        return TrialIdentity(self.full, self.key, self.space.canonical)

    def widest(self) -> list[dict[str, Any] | None]:
        """Full configs of the study default and of the widest models the space allows (None: the same)."""
        space = self.space
        defaults = space.defaults()
        widest = dict(defaults)  # where a search may end up
        for name in self.width_params:
            if name in space.by_name and space.active(name, widest):
                widest = space.with_value(widest, name, max(space.choice(name, widest).values))
        return [self.full(defaults), self.full(widest) if widest != defaults else None]
