"""A trial's checkpoint folder: what is written after its epochs, and how a model is read back.

``<checkpoint_root>/<trial key>/`` holds latest.pt (everything needed to continue exactly),
previous.pt (the latest.pt before it, the fallback), best.pt (the networks of the best
validation epoch) and predictions.npz (that epoch's validation maps). The folder is a
:class:`~trainables.storage.Location`: on the local disk, or in the study's bucket, where
every node that runs the trial finds it. Every file is written whole (the project's one atomic
write on a disk, one upload in a bucket), in a background thread (:meth:`TrialStore.submit`).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from trainables.storage import Location, location_of
from trainables.config import parse_config, resolved_config
from trainables.family import Family

CHECKPOINT_FORMAT = 2
CHECKPOINT_SHARE = 0.1  # at most this share of a trial's time goes to writing latest.pt


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory: a snapshot that training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class TrialStore:
    """A trial's checkpoint folder: latest.pt (every epoch) with previous.pt (the epoch before), best.pt and predictions.npz.

    The one storage object a trial's worker receives (picklable until a write runs): its folder (a
    :class:`~trainables.storage.Location`, which knows its filesystem) and its trial key, both from the study store
    (search.runner.plan.TrialConfigs.storage); the worker joins no path."""

    def __init__(self, folder: Location | str | Path, key: str | None = None) -> None:
        self.folder = folder if isinstance(folder, Location) else location_of(folder)
        self.key = key or self.folder.name  # the trial key of what trains here (a member's folder is not named by it)
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
        """Hold the folder while training: a duplicate config waits, then resumes from it.

        In a bucket there is no file lock: the search never runs one configuration twice at once
        (its trial key names the folder), and the background write is awaited all the same."""
        if not self.folder.is_local:
            try:
                yield
            finally:
                self.wait()
            return
        self.folder.make_dirs()
        with open(self.folder.local / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                try:
                    self.wait()  # the last checkpoint on disk before another process may take the folder
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def save_latest(self, state: dict[str, Any]) -> None:
        """Write latest.pt; the one it replaces becomes previous.pt, the fallback if latest.pt is ever unreadable."""
        (self.folder / "latest.pt").write(lambda handle: torch.save(state, handle), crash="checkpoint-tmp",
                                          keep_previous=self.folder / "previous.pt")

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint: latest.pt, else previous.pt, else None (start afresh).

        Each file is written whole and renamed into place, so a crash leaves an older file,
        not half of one; this guards against what renames cannot (a disk that lost the
        file's tail, a truncated copy). A fallback is noted in :attr:`notice`.
        """
        problems = []
        for name in ("latest.pt", "previous.pt"):
            path = self.folder / name
            try:
                if not path.is_file():
                    continue
                with path.reader() as handle:
                    state = torch.load(handle, map_location="cpu", weights_only=True)
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
        from trainables.storage import write_arrays

        (self.folder / "best.pt").write(lambda handle: torch.save(state, handle))
        write_arrays(self.folder / "predictions.npz", predictions=predictions, per_image_l1=per_image_l1,
                     stems=np.array(stems))

    def load_best(self) -> dict[str, Any]:
        """best.pt: the networks of the best validation epoch (after the background write has landed)."""
        self.wait()
        return load_state(self.folder / "best.pt")


def write_checkpoint(trial: Any, progress: Any) -> None:
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
    latest = checkpoint_state(trial, progress)
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


def checkpoint_state(trial: Any, progress: Any) -> dict[str, Any]:
    """Everything needed to continue a trial exactly (model, optimizers, scalers, every RNG), copied to the host."""
    device = trial.device
    return host_copy({
        "format": CHECKPOINT_FORMAT, "epoch": progress.epoch, "status": progress.history[-1]["status"],
        "history": progress.history, "best_val_l1": progress.best,
        "config": resolved_config(trial.settings, trial.hp), "family": trial.family.state_dict(),
        "image_size": int(trial.tensors.val_images.shape[-1]),  # the side the model was trained at (predict's input)
        "batch_rng": trial.batch_gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    })


def load_state(checkpoint: str | Path | Location) -> dict[str, Any]:
    """A checkpoint's contents (a local path, or a file in a study's bucket), on the CPU."""
    where = checkpoint if isinstance(checkpoint, Location) else location_of(checkpoint)
    with where.reader() as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)


def load_family(checkpoint: str | Path | Location, model: str, device: torch.device) -> Family:
    """The family a checkpoint (best.pt or latest.pt) was saved from, restored in eval mode on ``device``."""
    return family_from_state(load_state(checkpoint), model, device)


def family_from_state(state: dict[str, Any], model: str, device: torch.device) -> Family:
    """The family of a loaded checkpoint (``load_state``), restored in eval mode on ``device``."""
    from trainables.families import find_family

    family_cls = find_family(model)
    settings, hp = parse_config(state["config"], family_cls.config_cls)
    family = family_cls(hp, settings, device)
    family.load_state_dict(state["family"], nets_only=True)
    family.train(False)
    return family
