"""The one training loop every family shares: data on device, epochs, metrics, checkpoints.

A family (see :class:`Family`) only says how to take one optimisation step and how to
predict maps; this module runs the epochs, measures train/val L1 and Spearman's rho,
detects divergence, checkpoints (every epoch, atomically) and reports to Ray Tune.

Checkpoints live in ``<checkpoint_root>/<trial key>/`` where the key hashes what the
trial trains (not its epoch budget). A trial started again with the same config, after
a driver crash, a Ray retry or in a resumed study, finds its checkpoint, replays the
epochs it already reported and continues at the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import resource
import threading
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.augment import AugmentConfig, diff_augment, hide_invalid
from trainables.config import RunSettings, parse_config, resolved_config, trial_key
from trainables.data import MAP_CHANNELS, VMSDataset
from trainables.device import FastPath, GpuUtilisation, Precision, cuda_context_mb

CHECKPOINT_FORMAT = 2
DIVERGED_L1 = 2.0  # the worst possible L1 between maps in [-1, 1]: how searchers score a diverged trial
EVAL_BATCH = 64


def step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and update through the (possibly disabled) loss scaler."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class Family(ABC):
    """One model family inside the shared loop.

    The loop calls, in order: ``__init__`` (build nets and optimizers on ``device``),
    ``load_state_dict`` when resuming, then each epoch ``train_step`` per batch (in train
    mode), ``calibration_forward`` on a fixed set of augmented training batches (BatchNorm
    statistics are re-estimated from them, see :func:`recalibrate_batchnorm`), ``predict`` per validation
    batch (in eval mode), and ``state_dict`` to checkpoint. ``final_predict`` is used once
    after the last epoch.
    """

    def __init__(self, hp: Any, settings: RunSettings, device: torch.device) -> None:
        self.hp, self.settings, self.device = hp, settings, device
        self.precision = Precision(device, settings.precision)
        self.fast = FastPath.resolve(device, settings.channels_last, settings.compile)

    @classmethod
    def build(cls, hp: Any, settings: RunSettings, device: torch.device) -> "Family":
        """The family with its networks in the device's fast path (memory format, compilation)."""
        family = cls(hp, settings, device)
        for module in family.modules.values():
            family.fast.prepare(module)
        return family

    @property
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]: ...

    @property
    def prediction_modules(self) -> dict[str, nn.Module]:
        """The networks ``predict`` runs (the GAN's discriminator is not one of them)."""
        return self.modules

    @abstractmethod
    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on an augmented batch; returns detached scalar losses (``train_loss`` at least).

        ``valid`` (N, 1, H, W) is 0 where augmentation hid the image: the map there is unknown
        and must not enter any loss.
        """

    def calibration_forward(self, image: torch.Tensor, vms: torch.Tensor) -> None:
        """Run the prediction networks as training does on one batch (for BatchNorm statistics); no global RNG."""
        self.predict(image)

    @abstractmethod
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Maps in [-1, 1] for a batch of images."""

    has_final_mode = False  # True when final_predict differs from predict (diffusion's final sampler)

    def final_predict(self, image: torch.Tensor) -> torch.Tensor:
        """Maps from the family's final evaluation mode (only called when ``has_final_mode``)."""
        return self.predict(image)

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def scalers(self) -> dict[str, torch.amp.GradScaler]:
        """The fp16 loss scalers (disabled on CPU and with bf16); their state is checkpointed."""
        return {}

    def state_dict(self, nets_only: bool = False) -> dict[str, Any]:
        """Networks, optimizers and loss scalers (``nets_only``: the networks, all a prediction needs)."""
        state = {f"net.{k}": m.state_dict() for k, m in self.modules.items()}
        if nets_only:
            return state
        state.update({f"opt.{k}": o.state_dict() for k, o in self.optimizers().items()})
        state.update({f"scaler.{k}": s.state_dict() for k, s in self.scalers().items()})
        return state

    def load_state_dict(self, state: dict[str, Any], nets_only: bool = False) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[f"net.{name}"])
        if nets_only:
            return
        cuda = self.device.type == "cuda"
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state[f"opt.{name}"])
            # Saved on another device (a CPU trial resumed on a GPU, or back): the step count lives on the
            # device exactly when the optimizer is capturable, as CUDA graphs need (trainables/config.py).
            for group in optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = cuda
            for param_state in optimizer.state.values():
                if isinstance(param_state.get("step"), torch.Tensor):
                    param_state["step"] = param_state["step"].to(self.device if cuda else "cpu")
        for name, scaler in self.scalers().items():  # a resumed fp16 trial continues with the same loss scale
            if f"scaler.{name}" in state:
                scaler.load_state_dict(state[f"scaler.{name}"])

    def train(self, mode: bool = True) -> None:
        for module in self.modules.values():
            module.train(mode)


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


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory: a snapshot that training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(127.5).sub_(1.0)


class TrainSteps:
    """A trial's training steps: gather the batch, augment it, and take the family's step.

    On CUDA (run setting ``cuda_graphs``, on by default there) the whole step, from the batch
    indices to the optimizer update, is captured once as a CUDA graph and replayed for every
    later batch of the same size: a few thousand kernel launches from Python become one, which
    is what bounds these small models on a GPU (benchmarks/README.md, section 10). The first
    steps run eagerly, as PyTorch's recipe asks (they are real steps of the epoch), then one
    is captured. Replays draw from the same CUDA random stream as eager steps, so a trial
    trains the same way, and resumes the same way, with or without graphs. A step that cannot
    be captured (a host synchronisation inside it) falls back to eager steps, with a notice.
    fp16 with its loss scaler reads the scale on the host, so it runs eagerly.
    """

    WARMUP = 3

    def __init__(self, family: "Family", images: torch.Tensor, maps: torch.Tensor, augment: AugmentConfig,
                 graphs: bool) -> None:
        self.family, self.images, self.maps, self.augment = family, images, maps, augment
        self.graphs = graphs and images.is_cuda and not family.precision.needs_scaling
        self.graph: Any = None
        self.index: torch.Tensor | None = None  # the graph's static input: the batch's indices
        self.outputs: dict[str, torch.Tensor] = {}
        self.warm = 0
        self.notice: str | None = None

    def _step(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        image, vms = as_float(self.images[index]), as_float(self.maps[index])
        image, vms, valid = diff_augment(image, vms, self.augment)
        return self.family.train_step(self.family.fast.input(image), self.family.fast.input(vms), valid)

    def __call__(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.graphs:
            return self._step(index)
        if self.index is None:
            self.index = torch.empty_like(index)
            self.side = torch.cuda.Stream(self.images.device)
        if index.shape != self.index.shape:  # a last, smaller batch: eagerly
            return self._step(index)
        self.index.copy_(index)
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        if self.warm < self.WARMUP:  # eager steps on a side stream before the capture (PyTorch's recipe)
            self.warm += 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                outputs = self._step(self.index)
            torch.cuda.current_stream().wait_stream(self.side)
            return outputs
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self._step(self.index)
        except Exception as err:  # noqa: BLE001 - anything that cannot be captured: eager from here on
            self.graphs = False
            self.notice = f"training steps run eagerly: the step could not be captured as a CUDA graph ({str(err)[:160]})"
            torch.cuda.synchronize(self.images.device)
            return self._step(index)
        self.graph, self.outputs = graph, outputs
        graph.replay()
        return outputs


def image_scores(maps: torch.Tensor) -> np.ndarray:
    """Image-level memorability implied by a map: mean of the 'remembered' channel in [0, 1]."""
    return ((maps[:, 0].float() + 1.0) / 2.0).mean(dim=(1, 2)).cpu().numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties (NaN when either side is constant)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


class TrialStore:
    """A trial's checkpoint folder: latest.pt (every epoch) with previous.pt (the epoch before), best.pt and predictions.npz."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.notice: str | None = None  # what load_latest had to fall back from, for the trial's first report
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_started = 0.0  # when the last checkpoint write began (perf_counter)
        self.last_cost: float | None = None  # and what it cost, snapshot and write (None: none yet)

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` (file writes) in the background, after the previous one: training goes on meanwhile.

        On a GPU an epoch takes about as long as writing a checkpoint of these models (hundreds
        of MB with Adam's moments), so writing in the foreground doubled a trial's time.
        """
        self.wait()
        self._writer = threading.Thread(target=self._run, args=(job,), name=f"checkpoint {self.folder.name}")
        self._writer.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - re-raised in the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Until the background write is on disk; its error, if any, is raised here."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder while training: a duplicate config waits, then resumes from it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                try:
                    self.wait()  # the last checkpoint on disk before another process may take the folder
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _save(self, obj: Any, name: str) -> None:
        tmp = self.folder / f".{name}.tmp"
        torch.save(obj, tmp)
        os.replace(tmp, self.folder / name)

    def save_latest(self, state: dict[str, Any]) -> None:
        """Write latest.pt; the one it replaces becomes previous.pt, the fallback if latest.pt is ever unreadable."""
        tmp = self.folder / ".latest.pt.tmp"
        torch.save(state, tmp)
        if (self.folder / "latest.pt").exists():
            os.replace(self.folder / "latest.pt", self.folder / "previous.pt")
        os.replace(tmp, self.folder / "latest.pt")

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint: latest.pt, else previous.pt, else None (start afresh).

        Each file is written whole and renamed into place, so a crash leaves an older file,
        not half of one; this guards against what renames cannot (a disk that lost the
        file's tail, a truncated copy). A fallback is noted in :attr:`notice`.
        """
        problems = []
        for name in ("latest.pt", "previous.pt"):
            path = self.folder / name
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, I/O: all mean unreadable
                problems.append(f"{name} is unreadable ({str(err).splitlines()[0][:120]})")
                continue
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                problems.append(f"{name} has checkpoint format {state.get('format') if isinstance(state, dict) else '?'}, "
                                f"not {CHECKPOINT_FORMAT}")
                continue
            if problems:
                self.notice = "; ".join(problems) + f"; resumed from {name} (epoch {state['epoch']})"
            return state
        if problems:
            self.notice = "; ".join(problems) + "; restarted from epoch 0"
        return None

    def save_best(self, state: dict[str, Any], predictions: np.ndarray, per_image_l1: np.ndarray, stems: list[str]) -> None:
        self._save(state, "best.pt")
        tmp = self.folder / ".predictions.tmp.npz"
        np.savez_compressed(tmp, predictions=predictions, per_image_l1=per_image_l1, stems=np.array(stems))
        os.replace(tmp, self.folder / "predictions.npz")


@dataclass
class Evaluation:
    """A model's predictions over one split, and their errors."""

    l1: float  # mean absolute error over every pixel and channel, maps in [-1, 1]
    channel_l1: dict[str, float]  # the same per meaningful map channel (MAP_CHANNELS), so a model that ignores one shows it
    per_image_l1: np.ndarray
    spearman: float  # rho between the image-level scores the predicted and true maps imply
    predictions: torch.Tensor  # uint8 (N, 3, H, W)

    def metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: self.l1, **{f"{prefix}_{name}": value for name, value in self.channel_l1.items()}}


def recalibrate_batchnorm(family: Family, images: torch.Tensor, maps: torch.Tensor, augment: AugmentConfig,
                          *, seed: int = 0) -> None:
    """Re-estimate the prediction networks' BatchNorm statistics on a fixed set of training batches.

    During training the running statistics are an exponential average (momentum 0.1) over
    the last few dozen batches, so they wander with the batch order and eval-mode predictions
    jump from epoch to epoch. Here they are recomputed as a plain average (``momentum=None``)
    over the same training images, augmented as in training with a fixed generator: the
    statistics the weights were trained under, without the drift. (Statistics of clean
    images are *not* what the weights expect: measured on the synthetic set, calibrating on
    clean images raised the autoencoder's val L1 from 0.067 to 0.099.) Only the norm layers
    are in train mode here (dropout stays off) and no global random numbers are drawn, so
    training continues exactly as it would have.
    """
    norms = [m for net in family.prediction_modules.values() for m in net.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    family.train(False)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train(True)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad(), family.precision.autocast():
        for start in range(0, len(images), EVAL_BATCH):
            image, vms, valid = diff_augment(as_float(images[start : start + EVAL_BATCH]),
                                             as_float(maps[start : start + EVAL_BATCH]), augment, generator=generator)
            family.calibration_forward(family.fast.input(image), family.fast.input(hide_invalid(vms, valid)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.train(False)


def evaluate(family: Family, images: torch.Tensor, maps: torch.Tensor, final: bool = False) -> Evaluation:
    """Predict a whole split in eval mode and measure it against the true maps."""
    family.train(False)
    preds = []
    with torch.no_grad(), family.precision.autocast():
        for start in range(0, len(images), EVAL_BATCH):
            batch = family.fast.input(as_float(images[start : start + EVAL_BATCH]))
            out = family.final_predict(batch) if final else family.predict(batch)
            preds.append(out.float().clamp(-1, 1))
    family.train(True)
    pred = torch.cat(preds)
    truth = as_float(maps)
    error = (pred - truth).abs()
    per_image = error.mean(dim=(1, 2, 3))
    channel_l1 = {name: float(error[:, c].mean()) for name, c in MAP_CHANNELS.items()}
    rho = spearman(image_scores(pred), image_scores(truth))
    pred_u8 = ((pred + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Evaluation(float(per_image.mean()), channel_l1, per_image.cpu().numpy(), rho, pred_u8)


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


def run_trial(
    config: dict[str, Any],
    data: VMSDataset,
    family_cls: type[Family],
    config_cls: type,
    *,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one configuration, reporting every epoch; returns the last reported row.

    The steps, in order: set the trial up (:func:`_set_up`), resume from its checkpoint and
    replay what it had reported (:func:`_resume`), then per epoch train
    (:func:`_train_epoch`), measure (:func:`_measure`), checkpoint (:func:`_checkpoint`)
    and report.
    """
    report = report or default_report
    trial = _set_up(config, data, family_cls, config_cls)
    with trial.store.locked() if trial.store else contextlib.nullcontext():
        progress, report = _resume(trial, report)
        if progress.ended or progress.epoch >= trial.settings.epochs:
            return progress.history[-1]
        progress.wall_start = time.perf_counter() - (progress.history[-1]["wall_seconds"] if progress.history else 0.0)
        row: dict[str, Any] = {}
        for epoch in range(progress.epoch + 1, trial.settings.epochs + 1):
            epoch_start = time.perf_counter()
            trial.utilisation.start()
            losses = _train_epoch(trial)
            row = _measure(trial, progress, epoch, losses, epoch_start)
            progress.history.append(row)
            _checkpoint(trial, progress)
            report(dict(row))
            if row["status"] == "diverged":
                break
        return row


def _set_up(config: dict[str, Any], data: VMSDataset, family_cls: type[Family], config_cls: type) -> Trial:
    """Parse the config, seed from the trial's key, put the data on the device, build the model."""
    settings, hp = parse_config(config, config_cls)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.threads and device.type == "cpu":
        torch.set_num_threads(settings.threads)
    key = trial_key(settings, hp)
    torch.manual_seed(int(key, 16) % 2**31 ^ settings.seed)
    batch_gen = torch.Generator().manual_seed(int(key, 16) % 2**31 + settings.seed)
    if device.type == "cuda":  # actors are reused across trials: measure this trial's peak only
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels once
    tensors = DeviceData.from_dataset(data, device)
    family = family_cls.build(hp, settings, device)
    store = TrialStore(Path(settings.checkpoint_root) / key) if settings.checkpoint_root else None
    # A fixed, evenly spread subset of the training images: train L1 is measured on it, and
    # BatchNorm statistics are re-estimated on it before every evaluation.
    n = len(tensors.train_images)
    train_eval = torch.linspace(0, n - 1, min(settings.train_eval_size, n)).long().to(device)
    augment = AugmentConfig(**{f.name: getattr(hp, f.name) for f in fields(AugmentConfig)})
    if settings.evaluate_test and not store:
        raise ValueError("evaluate_test needs a checkpoint_root: the test split is measured on best.pt")
    test = (data.test_images, data.test_maps) if settings.evaluate_test and data.has_test else None
    return Trial(settings, hp, device, family_cls, family, tensors, tensors.train_images[train_eval],
                 tensors.train_maps[train_eval], data.val_stems, test, augment, store, batch_gen, _node_id(),
                 GpuUtilisation(device),
                 TrainSteps(family, tensors.train_images, tensors.train_maps, augment,
                            graphs=settings.cuda_graphs != "off" and device.type == "cuda"))


def _resume(trial: Trial, report: Callable[[dict[str, Any]], None]) -> tuple[Progress, Callable[[dict[str, Any]], None]]:
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
    trial.family.load_state_dict(previous["family"])
    trial.batch_gen.set_state(previous["batch_rng"])
    torch.set_rng_state(previous["torch_rng"])
    if trial.device.type == "cuda" and previous.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(previous["cuda_rng"], trial.device)
    history = previous["history"]
    best_channels = {k: v for k, v in history[-1].items() if k.startswith("best_val_l1_")} if history else {}
    for row in history:  # replay, so Ray, ASHA and the searcher see the whole curve
        if row["epoch"] <= trial.settings.epochs:
            report(dict(row, replayed=True))
    return Progress(history, previous["best_val_l1"], best_channels), report


def _train_epoch(trial: Trial) -> dict[str, float]:
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


def _measure(trial: Trial, progress: Progress, epoch: int, losses: dict[str, float], epoch_start: float) -> dict[str, Any]:
    """The epoch's row: divergence, val and train L1 (on eval epochs), best so far (saving best.pt), timing."""
    settings, family, tensors = trial.settings, trial.family, trial.tensors
    diverged = not all(math.isfinite(v) for v in losses.values()) or not _finite_weights(family)
    row: dict[str, Any] = {"epoch": epoch, "status": "diverged" if diverged else "running", **losses,
                           "device": trial.device.type, "node_id": trial.node}
    if diverged:
        row.update(train_l1=float("nan"), val_l1=float("nan"), best_val_l1=DIVERGED_L1, val_spearman=float("nan"))
    elif epoch % settings.eval_every == 0 or epoch == settings.epochs or not progress.history:
        recalibrate_batchnorm(family, trial.train_images, trial.train_maps, trial.augment, seed=settings.seed)
        val = evaluate(family, tensors.val_images, tensors.val_maps)
        train_l1 = evaluate(family, trial.train_images, trial.train_maps).l1
        if val.l1 < progress.best:
            progress.best_channels = {f"best_{k}": v for k, v in val.metrics("val_l1").items() if k != "val_l1"}
            if trial.store:  # written by _checkpoint, with latest.pt
                trial.pending_best = (host_copy({"format": CHECKPOINT_FORMAT, "epoch": epoch, "val_l1": val.l1,
                                                 "config": resolved_config(settings, trial.hp),
                                                 "family": family.state_dict(nets_only=True)}),
                                      val.predictions.cpu().numpy(), val.per_image_l1, trial.val_stems)
        progress.best = min(progress.best, val.l1)
        row.update(train_l1=train_l1, **val.metrics("val_l1"), best_val_l1=progress.best, val_spearman=val.spearman,
                   **(progress.best_channels or {}))
    else:  # between evaluations the last measured values stand
        row.update({k: v for k, v in progress.history[-1].items() if k.startswith(("train_l1", "val_", "best_"))})
    if not diverged and epoch == settings.epochs and family.has_final_mode:
        row["final_val_l1"] = evaluate(family, tensors.val_images, tensors.val_maps, final=True).l1
    if not diverged and epoch == settings.epochs and trial.test is not None:
        row.update(_test_metrics(trial))
    now = time.perf_counter()
    row.update(epoch_seconds=now - epoch_start, wall_seconds=now - progress.wall_start, **_memory(trial.device))
    utilisation = trial.utilisation.mean()
    if utilisation is not None:
        row["gpu_util"] = utilisation
    if trial.steps.notice:  # said once, printed by the search (search.results)
        row["notice"], trial.steps.notice = trial.steps.notice, None
    if diverged or epoch == settings.epochs:
        row["status"] = "diverged" if diverged else "completed"
    return row


def _test_metrics(trial: Trial) -> dict[str, Any]:
    """The test split, read once: the model of the best validation epoch (best.pt), never the last one.

    Selection (the epoch, the configuration) used validation data only; this is the number
    to report. Random numbers are drawn in a forked RNG so the trial's own stream is untouched.
    """
    if trial.pending_best is not None:  # this epoch's: not on disk yet
        best = trial.pending_best[0]
    else:
        trial.store.wait()
        best = torch.load(trial.store.folder / "best.pt", map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        images, maps = (torch.from_numpy(a).to(trial.device) for a in trial.test)
    with torch.random.fork_rng(devices=[trial.device] if trial.device.type == "cuda" else []):
        model = trial.family_cls.build(trial.hp, trial.settings, trial.device)
        model.load_state_dict(best["family"], nets_only=True)
        test = evaluate(model, images, maps, final=model.has_final_mode)
        # Validation measured the same way (for diffusion: with the final sampler, as test), side by side.
        val = evaluate(model, trial.tensors.val_images, trial.tensors.val_maps, final=model.has_final_mode)
    return {**test.metrics("test_l1"), "test_spearman": test.spearman, "best_epoch": int(best["epoch"]),
            **val.metrics("selected_val_l1")}


CHECKPOINT_SHARE = 0.1  # at most this share of a trial's time goes to writing latest.pt


def _checkpoint(trial: Trial, progress: Progress) -> None:
    """latest.pt: everything needed to continue exactly (model, optimizers, scalers, every RNG); and
    best.pt (the networks) when an epoch since the last write was the best so far.

    Snapshotted on the training thread, written in the background. Written after every epoch
    where that costs at most :data:`CHECKPOINT_SHARE` of the trial's time (the CPU: an epoch
    takes seconds, a write tens of milliseconds), else once that much time has passed since
    the last write (an H100: an epoch of the GAN takes 0.3 s, as long as writing its 390 MB),
    and always after the last epoch. A trial resumed from an older latest.pt trains the epochs
    after it again, the same way (every RNG state is in it), and reports them again.
    """
    if not trial.store:
        return
    store = trial.store
    ended = progress.history[-1]["status"] in ("completed", "diverged")
    now = time.perf_counter()
    if not ended and store.last_cost is not None and now - store.last_started < store.last_cost / CHECKPOINT_SHARE:
        return
    device = trial.device
    latest = host_copy({
        "format": CHECKPOINT_FORMAT, "epoch": progress.epoch, "status": progress.history[-1]["status"],
        "history": progress.history, "best_val_l1": progress.best,
        "config": resolved_config(trial.settings, trial.hp), "family": trial.family.state_dict(),
        "batch_rng": trial.batch_gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    })
    best, trial.pending_best = trial.pending_best, None
    snapshot = time.perf_counter() - now

    def write() -> None:  # best.pt first: a latest.pt on disk never claims a best.pt that is not
        start = time.perf_counter()
        if best is not None:
            store.save_best(*best)
        store.save_latest(latest)
        store.last_cost = snapshot + time.perf_counter() - start

    store.last_started = now
    store.submit(write)


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
