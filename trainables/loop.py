"""The one training loop every family shares: data on device, epochs, metrics, checkpoints.

A family (see :class:`trainables.family.Family`) only says how to take one optimisation step
and how to predict maps; this module runs the epochs, measures train/val L1 and Spearman's rho
(:mod:`trainables.evaluation`), detects divergence, checkpoints (every epoch, atomically:
:mod:`trainables.checkpoints`) and reports to Ray Tune.

Checkpoints live in ``<checkpoint_root>/<trial key>/`` where the key hashes what the
trial trains (not its epoch budget). A trial started again with the same config, after
a driver crash, a Ray retry or in a resumed study, finds its checkpoint, replays the
epochs it already reported and continues at the next one.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch

from trainables.storage import location_of
from trainables.retry import said_since_last
from trainables.augment import AugmentConfig
from trainables.checkpoints import CHECKPOINT_FORMAT, TrialStore, host_copy, write_checkpoint
from trainables.config import RunSettings, parse_config, resolved_config, trial_key
from trainables.data import VMSDataset
from trainables.device import GpuUtilisation, cuda_context_mb, trial_device
from trainables.evaluation import DIVERGED_L1, CalibrationBatches, evaluate, recalibrate_batchnorm
from trainables.family import Family
from trainables.faults import crash_point
from trainables.schedule import Schedule
from trainables.steps import TrainSteps


@dataclass
class DeviceData:
    """The dataset as uint8 tensors on the trial's device, converted to float per batch."""

    train_images: torch.Tensor
    train_maps: torch.Tensor
    val_images: torch.Tensor
    val_maps: torch.Tensor

    @classmethod
    def from_dataset(cls, data: VMSDataset, device: torch.device) -> "DeviceData":
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; we never write to them, and not
            # copying them is what keeps the dataset once per node instead of once per trial.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = [torch.from_numpy(a) for a in (data.train_images, data.train_maps, data.val_images, data.val_maps)]
        return cls(*(t.to(device, non_blocking=True) for t in tensors))


def default_report(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report(metrics)


@dataclass
class Trial:
    """What one trial's epochs need: its settings, model, data on the device, checkpoint folder, RNGs."""

    settings: RunSettings
    hp: Any
    device: torch.device
    family_cls: type[Family]
    family: Family
    tensors: "DeviceData"
    train_images: torch.Tensor  # the fixed training subset: train L1, BatchNorm re-estimation
    train_maps: torch.Tensor
    val_stems: list[str]
    test: tuple[np.ndarray, np.ndarray] | None  # the test split's images and maps (final re-training only)
    augment: AugmentConfig
    store: TrialStore | None
    batch_gen: torch.Generator  # the epochs' batch order (global RNG: augmentation, dropout, noise)
    node: str
    utilisation: GpuUtilisation  # the GPU's, over each epoch (CUDA with NVML only)
    steps: TrainSteps
    calibration: CalibrationBatches  # the fixed subset, augmented as in training: BatchNorm re-estimation
    pending_best: tuple | None = None  # best.pt's state and predictions, written with the epoch's checkpoint


@dataclass
class Progress:
    """Where a trial stands: its reported epochs and best val L1 so far."""

    history: list[dict[str, Any]]
    best: float = math.inf
    best_channels: dict[str, float] | None = None
    wall_start: float = 0.0

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def ended(self) -> bool:
        return bool(self.history) and self.history[-1]["status"] == "diverged"


def train(config: dict[str, Any], data: VMSDataset, family: type[Family]) -> None:
    """The Ray Tune function trainable of every family: ``tune.with_parameters(train, data=..., family=...)``."""
    run_trial(config, data, family)


def run_trial(
    config: dict[str, Any],
    data: VMSDataset,
    family_cls: type[Family],
    *,
    storage: TrialStore | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one configuration, reporting every epoch; returns the last reported row.

    The steps, in order: set the trial up (:func:`set_up_trial`), resume from its checkpoint and
    replay what it had reported (:func:`resume`), then per epoch train
    (:func:`train_epoch`), measure (:func:`measure_epoch`), checkpoint
    (:func:`trainables.checkpoints.write_checkpoint`) and report.
    """
    report = report or default_report
    trial = set_up_trial(config, data, family_cls, storage)
    with trial.store.locked() if trial.store else contextlib.nullcontext():
        progress, report = resume(trial, report)
        if progress.ended or progress.epoch >= trial.settings.epochs:
            return progress.history[-1]
        progress.wall_start = time.perf_counter() - (progress.history[-1]["wall_seconds"] if progress.history else 0.0)
        row: dict[str, Any] = {}
        schedule = Schedule.parse(trial.settings.replay)  # a replayed population member's schedule, if any
        for epoch in range(progress.epoch + 1, trial.settings.epochs + 1):
            retune(trial, schedule.in_effect(epoch) if epoch == progress.epoch + 1 else schedule.at(epoch))
            epoch_start = time.perf_counter()
            trial.utilisation.start()
            losses = train_epoch(trial)
            row = close_epoch(trial, progress, epoch, losses, time.perf_counter() - epoch_start)
            report(dict(row))
            if row["status"] == "diverged":
                break
        return row


def close_epoch(trial: Trial, progress: Progress, epoch: int, losses: dict[str, float],
                train_seconds: float) -> dict[str, Any]:
    """After an epoch's training steps (``train_seconds`` of them): measure it, keep its row, checkpoint; the row to
    report. The last row waits for its checkpoint on disk, and carries any notice of a store waited for."""
    row = measure_epoch(trial, progress, epoch, losses, time.perf_counter() - train_seconds)
    progress.history.append(row)
    written = time.perf_counter()
    write_checkpoint(trial, progress)
    # Where the epoch went (search.store.results: epochs.parquet); checkpoint_seconds is the snapshot the
    # trial waits for (the file is written in the background), and a replayed row may lack it.
    row.update(train_seconds=train_seconds, checkpoint_seconds=time.perf_counter() - written)
    if row["status"] != "running" and trial.store:  # the last report: its checkpoint on disk first, and any
        trial.store.wait()                          # wait for the store on the way told with it
        notices = [n for n in (row.pop("notice", None), *said_since_last()) if n]
        row.update({"notice": "; ".join(notices)} if notices else {})
    return row


def retune(trial: Trial, changes: dict[str, Any]) -> None:
    """Change hyperparameters of the trial's model in training (a schedule's step); a captured step is captured again."""
    if changes:
        trial.family.retune(changes)
        trial.hp = trial.family.hp
        trial.steps.reset()


def set_up_trial(config: dict[str, Any], data: VMSDataset, family_cls: type[Family],
                 storage: TrialStore | None = None) -> Trial:
    """Parse the config, seed from the trial's key, put the data on the device, build the model. ``storage``: the
    trial's checkpoint folder and key from the study store (a search's trial); without it, a ``checkpoint_root``
    setting names the folder (a trial run on its own, by a test or a benchmark), or there are no checkpoints."""
    settings, hp = parse_config(config, family_cls.config_cls)
    device = trial_device()
    if settings.threads and device.type == "cpu":
        torch.set_num_threads(settings.threads)
    key = storage.key if storage is not None else trial_key(settings, hp)
    torch.manual_seed(int(key, 16) % 2**31 ^ settings.seed)
    batch_gen = torch.Generator().manual_seed(int(key, 16) % 2**31 + settings.seed)
    if device.type == "cuda":  # actors are reused across trials: measure this trial's peak only
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels once
    tensors = DeviceData.from_dataset(data, device)
    family = family_cls.build(hp, settings, device)
    store = storage if storage is not None else (
        TrialStore(location_of(settings.checkpoint_root) / key) if settings.checkpoint_root else None)
    # A fixed, evenly spread subset of the training images: train L1 is measured on it, and
    # BatchNorm statistics are re-estimated on it before every evaluation.
    n = len(tensors.train_images)
    train_eval = torch.linspace(0, n - 1, min(settings.train_eval_size, n)).long().to(device)
    augment = AugmentConfig(**{f.name: getattr(hp, f.name) for f in fields(AugmentConfig)})
    if settings.evaluate_test and not store:
        raise ValueError("evaluate_test needs a checkpoint_root: the test split is measured on best.pt")
    test = (data.test_images, data.test_maps) if settings.evaluate_test and data.has_test else None
    subset = tensors.train_images[train_eval], tensors.train_maps[train_eval]
    return Trial(settings, hp, device, family_cls, family, tensors, *subset, data.val_stems, test, augment, store,
                 batch_gen, _node_id(),
                 GpuUtilisation(device),
                 TrainSteps(family, tensors.train_images, tensors.train_maps, augment,
                            graphs=settings.cuda_graphs != "off" and device.type == "cuda"),
                 CalibrationBatches(*subset, settings.seed))


def resume(trial: Trial, report: Callable[[dict[str, Any]], None]) -> tuple[Progress, Callable[[dict[str, Any]], None]]:
    """Load the newest readable checkpoint (model, optimizers, RNGs) and replay its epochs.

    Returns the progress and the report function to use from here on: when the checkpoint
    had to fall back (see :meth:`TrialStore.load_latest`), the first row carries a ``notice``.
    """
    previous = trial.store.load_latest() if trial.store else None
    notice = trial.store.notice if trial.store else None
    if notice:  # said once, in the first row Ray sees from this attempt
        inner = report

        def report(row: dict[str, Any]) -> None:
            nonlocal notice
            inner(dict(row, notice=notice) if notice else row)
            notice = None

    if previous is None:
        return Progress([]), report
    progress = restore(trial, previous)
    for row in progress.history:  # replay, so Ray, ASHA and the searcher see the whole curve
        if row["epoch"] <= trial.settings.epochs:
            report(dict(row, replayed=True))
    return progress, report


def restore(trial: Trial, state: dict[str, Any]) -> Progress:
    """Put a checkpoint (trainables.checkpoints.checkpoint_state) into the trial: model, optimizers, every RNG;
    returns the progress it had."""
    trial.family.load_state_dict(state["family"])
    trial.batch_gen.set_state(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    if trial.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], trial.device)
    history = list(state["history"])
    best_channels = {k: v for k, v in history[-1].items() if k.startswith("best_val_l1_")} if history else {}
    return Progress(history, state["best_val_l1"], best_channels)


def train_epoch(trial: Trial) -> dict[str, float]:
    """One pass over the training pairs in the batch generator's order; the mean of each loss."""
    tensors, family = trial.tensors, trial.family
    n_train = len(tensors.train_images)
    batch_size = max(1, min(getattr(trial.hp, "batch_size", 16), n_train))
    sums: dict[str, torch.Tensor] = {}
    batches = 0
    family.train(True)
    order = torch.randperm(n_train, generator=trial.batch_gen).to(trial.device)
    for first in range(0, n_train, batch_size):
        index = order[first : first + batch_size]
        if len(index) < 2 and n_train >= 2:
            continue  # a lone sample breaks BatchNorm statistics
        for name, value in trial.steps(index).items():
            sums[name] = sums.get(name, 0.0) + value.float()
        batches += 1
    return {name: float(total) / max(batches, 1) for name, total in sums.items()}


def measure_epoch(trial: Trial, progress: Progress, epoch: int, losses: dict[str, float], epoch_start: float) -> dict[str, Any]:
    """The epoch's row: divergence, val and train L1 (on eval epochs), best so far (saving best.pt), timing."""
    settings, family, tensors = trial.settings, trial.family, trial.tensors
    diverged = not all(math.isfinite(v) for v in losses.values()) or not _finite_weights(family)
    measuring = time.perf_counter()
    row: dict[str, Any] = {"epoch": epoch, "status": "diverged" if diverged else "running", **losses,
                           "device": trial.device.type, "node_id": trial.node}
    if diverged:
        row.update(train_l1=float("nan"), val_l1=float("nan"), best_val_l1=DIVERGED_L1, val_spearman=float("nan"))
    elif epoch % settings.eval_every == 0 or epoch == settings.epochs or not progress.history:
        recalibrate_batchnorm(family, trial.calibration, trial.augment)
        val = evaluate(family, tensors.val_images, tensors.val_maps)
        train_l1 = evaluate(family, trial.train_images, trial.train_maps).l1
        if val.l1 < progress.best:
            progress.best_channels = {f"best_{k}": v for k, v in val.metrics("val_l1").items() if k != "val_l1"}
            if trial.store:  # written by write_checkpoint, with latest.pt
                trial.pending_best = (host_copy({"format": CHECKPOINT_FORMAT, "epoch": epoch, "val_l1": val.l1,
                                                 "config": resolved_config(settings, trial.hp),
                                                 "image_size": int(tensors.val_images.shape[-1]),  # predict's input
                                                 "family": family.state_dict(nets_only=True)}),
                                      val.predictions.cpu().numpy(), val.per_image_l1, trial.val_stems)
        progress.best = min(progress.best, val.l1)
        row.update(train_l1=train_l1, **val.metrics("val_l1"), best_val_l1=progress.best, val_spearman=val.spearman,
                   **(progress.best_channels or {}))
    else:  # between evaluations the last measured values stand
        row.update({k: v for k, v in progress.history[-1].items() if k.startswith(("train_l1", "val_", "best_"))})
    if not diverged and epoch == settings.epochs and family.has_final_mode:
        row["final_val_l1"] = evaluate(family, tensors.val_images, tensors.val_maps, final=True).l1
    if not diverged and epoch == settings.epochs and settings.evaluate_test:
        row.update(_selected_metrics(trial))
    now = time.perf_counter()
    row.update(epoch_seconds=now - epoch_start, wall_seconds=now - progress.wall_start, eval_seconds=now - measuring,
               **_memory(trial.device))
    utilisation = trial.utilisation.mean()
    if utilisation is not None:
        row["gpu_util"] = utilisation
    notices = [n for n in (trial.steps.notice, *said_since_last()) if n]  # a store this trial waited for, too
    if notices:  # said once, printed by the search (search.store.results)
        row["notice"], trial.steps.notice = "; ".join(notices), None
    if diverged or epoch == settings.epochs:
        row["status"] = "diverged" if diverged else "completed"
    return row


def _selected_metrics(trial: Trial) -> dict[str, Any]:
    """The model of the best validation epoch (best.pt), never the last one, measured on val as test is, and on the
    test split, read once, where the dataset has one.

    Selection (the epoch, the configuration) used validation data only; the test number is the one
    to report. Random numbers are drawn in a forked RNG so the trial's own stream is untouched.
    """
    crash_point("final-test")
    if trial.pending_best is not None:  # this epoch's: not on disk yet
        best = trial.pending_best[0]
    else:
        best = trial.store.load_best()
    measured: dict[str, Any] = {"best_epoch": int(best["epoch"])}
    with torch.random.fork_rng(devices=[trial.device] if trial.device.type == "cuda" else []):
        model = trial.family_cls.build(trial.hp, trial.settings, trial.device)
        model.load_state_dict(best["family"], nets_only=True)
        if trial.test is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                images, maps = (torch.from_numpy(a).to(trial.device) for a in trial.test)
            test = evaluate(model, images, maps, final=model.has_final_mode)
            measured.update(**test.metrics("test_l1"), test_spearman=test.spearman)
        # Validation measured the same way (for diffusion: with the final sampler, as test), side by side.
        val = evaluate(model, trial.tensors.val_images, trial.tensors.val_maps, final=model.has_final_mode)
    return {**measured, **val.metrics("selected_val_l1")}


def _memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this trial's process (MB; with reused actors, the process's peak so far)
    and on CUDA this trial's peak device memory: what its tensors held (``gpu_peak_mb``) and what
    its process held on the device, PyTorch's cache and the CUDA context included (``gpu_reserved_mb``,
    what sharing a GPU must leave room for)."""
    usage = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        usage["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        usage["gpu_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20 + cuda_context_mb(device)
    return usage


def _finite_weights(family: Family) -> bool:
    return all(torch.isfinite(p).all() for m in family.modules.values() for p in m.parameters())


def _node_id() -> str:
    """The Ray node this trial runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
