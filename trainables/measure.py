"""How long an epoch takes and how much of a GPU a trial uses, measured where trials train.

:func:`measure_on_worker` gives the search's first estimate its seconds per epoch (a Ray task
with a trial's resources; on a Ray of one node without GPUs, the driver's, the driver calls
:func:`measure_epoch_seconds` itself); :func:`probe_gpu` measures one trial alone on a whole GPU for
``--gpus-per-trial auto`` (:func:`search.runner.packing.choose_share`). Heavy imports (torch, the
families) happen inside the functions: the driver imports this module for :class:`GpuProbe`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.family import Family

# A test hook: a JSON GpuProbe that probe_gpu returns instead of measuring (CPU-only machines).
FAKE_PROBE_ENV = "MEMSEARCH_FAKE_GPU_PROBE"


@dataclass
class GpuProbe:
    """What one trial alone on a GPU used."""

    total_mb: float  # the GPU's memory
    footprint_mb: float  # the widest configuration's process on the device: tensors, allocator cache, CUDA context, data
    util: float | None  # the default configuration's utilisation in [0, 1] (None: NVML could not be read)
    epoch_s: list[float | None] = field(default_factory=list)  # per probed config, as measure_epoch_seconds
    nvml_error: str | None = None  # why the utilisation is missing, when it is


def measure_epoch_seconds(family: "type[Family]", config: dict[str, Any], data: Any, device: str = "cpu",
                          steps: int = 3) -> float:
    """Seconds one epoch of ``config`` takes here: a few training steps and one evaluation batch, timed
    (after a warm-up) on the device and with the threads a trial gets, scaled to the data's size.

    An epoch is the training batches over the training pairs plus the evaluation passes the loop
    makes (BatchNorm re-estimation and train L1 on the fixed training subset, val L1 on the whole
    validation split; for diffusion each is a few-step sampling run).
    """
    import torch

    from trainables.config import parse_config
    from trainables.evaluation import EVAL_BATCH

    family_cls = family
    settings, hp = parse_config(config, family_cls.config_cls)
    threads = torch.get_num_threads()
    try:
        if settings.threads and device == "cpu":
            torch.set_num_threads(settings.threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            target = torch.device(device)
            model = family_cls.build(hp, settings, target)
            n_train, n_val = len(data.train_images), len(data.val_images)
            batch = max(1, min(getattr(hp, "batch_size", 16), n_train))
            images = torch.from_numpy(data.train_images[: max(batch, min(EVAL_BATCH, n_train))].copy()).to(target)
            maps = torch.from_numpy(data.train_maps[: len(images)].copy()).to(target)
            step_s, eval_s = _time_steps(model, images, maps, batch, steps, target)
        train_eval = min(settings.train_eval_size, n_train)
        eval_batches = (n_val + 2 * train_eval) / EVAL_BATCH
        return math.ceil(n_train / batch) * step_s + eval_batches * eval_s
    finally:
        torch.set_num_threads(threads)


def _time_steps(model: Any, images: Any, maps: Any, batch: int, steps: int, target: Any) -> tuple[float, float]:
    """(seconds per training step, seconds per full evaluation batch) of ``model`` on ``images``, after a warm-up."""
    import torch

    from trainables.augment import AugmentConfig
    from trainables.evaluation import EVAL_BATCH, as_float
    from trainables.steps import TrainSteps

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    take_step = TrainSteps(model, images, maps, AugmentConfig(), graphs=False)  # the loop's step, eagerly
    index = torch.arange(batch, device=target)

    def train_step() -> None:
        take_step(index)

    def eval_batch() -> None:
        model.train(False)
        with torch.no_grad(), model.precision.autocast():
            model.predict(model.fast.input(as_float(images[:EVAL_BATCH])))
        model.train(True)

    train_step()
    eval_batch()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    eval_batch()
    sync()
    eval_s = (time.perf_counter() - start) * EVAL_BATCH / len(images[:EVAL_BATCH])  # scaled to a full batch
    return step_s, eval_s


def measure_trial_epoch(family: "type[Family]", config: dict[str, Any], data: Any, epochs: int = 2) -> dict[str, Any]:
    """The last epoch's row of a short real trial of ``config`` (no checkpoints): what a search's
    trial does per epoch on this device, evaluation included (on CUDA: graphed steps after the
    first epoch's capture, cuDNN's choices made)."""
    from trainables.loop import run_trial

    rows: list[dict[str, Any]] = []
    run_trial({**config, "epochs": epochs, "checkpoint_root": "", "evaluate_test": False}, data, family,
              report=rows.append)
    return rows[-1]


def measure_on_worker(family: "type[Family]", configs: list[dict[str, Any] | None], data: Any,
                      registered: dict | None = None) -> list[float | None]:
    """Seconds per epoch of each config (None: skipped), on the device this process has (``registered``: the driver's
    plug-ins, :func:`models.registry.registrations`).

    On the CPU, :func:`measure_epoch_seconds` (a few steps, scaled); on a GPU, where the first
    epoch captures CUDA graphs and a few steps say little, the second epoch of a short trial
    (:func:`measure_trial_epoch`). The driver runs it as a Ray task with a trial's resources, so
    it is measured where trials train and the driver itself never opens a CUDA context (on a Ray
    of one node without GPUs, the driver's, the driver calls :func:`measure_epoch_seconds` itself).
    """
    import torch

    from models.registry import register_missing
    from trainables.device import trial_device

    register_missing(registered or {})
    device = trial_device().type  # a task with a trial's resources: CUDA only where Ray gave it a GPU
    try:
        if device == "cuda":
            return [measure_trial_epoch(family, config, data)["epoch_seconds"] if config is not None else None
                    for config in configs]
        return [measure_epoch_seconds(family, config, data, device=device) if config is not None else None
                for config in configs]
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def probe_gpu(family: "type[Family]", configs: list[dict[str, Any] | None], data: Any) -> dict | None:
    """Run on a worker holding one whole GPU: each config trains alone for two epochs, a real trial
    without checkpoints (:func:`measure_trial_epoch`); its second epoch is measured.

    Returns a :class:`GpuProbe` as a dict (None without CUDA): the footprint is the widest
    trial's process on the device (its tensors, the dataset among them, PyTorch's cache, the
    CUDA context); utilisation and seconds per epoch are the default config's.
    """
    fake = os.environ.get(FAKE_PROBE_ENV)
    if fake:
        return asdict(GpuProbe(**json.loads(fake)))
    import torch

    if not torch.cuda.is_available():
        return None
    rows = []
    try:
        for config in configs:
            torch.cuda.empty_cache()
            rows.append(measure_trial_epoch(family, config, data) if config is not None else None)
        total = torch.cuda.get_device_properties(torch.device("cuda")).total_memory / 2**20
    finally:
        torch.cuda.empty_cache()
    measured = [r for r in rows if r is not None]
    util = measured[0].get("gpu_util")
    if util is None:
        from trainables.device import GpuUtilisation

        error = GpuUtilisation(torch.device("cuda")).error or "NVML gave no utilisation samples"
    return asdict(GpuProbe(total, max(r.get("gpu_reserved_mb", 0.0) for r in measured), util,
                           [r["epoch_seconds"] if r is not None else None for r in rows],
                           nvml_error=None if util is not None else error))
