"""How far along a search is and how long it has left, from what this run has measured.

The time left is the epochs still to train (trials still planned, each expected to run as
many epochs as the finished ones did on average, ASHA's early stops included, plus the
final stage's runs) divided by the rate at which this run has trained epochs so far
(all concurrent trials together). The first trial's epochs give the first estimate; it
settles as trials finish. On a terminal a status line is kept up to date after every epoch;
in a log each finished trial's line carries the same figures.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SearchProgress:
    """Trials done / planned, epochs, elapsed and remaining time of one driver run."""

    def __init__(self, planned: Callable[[], int], *, epochs_per_trial: int, done_trials: int, final_runs: int,
                 stream: TextIO | None = None, live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.planned = planned  # the search's trial count as now planned (greedy's grows or shrinks with its path)
        self.epochs_per_trial = epochs_per_trial
        self.done = done_trials
        self.final_runs = final_runs
        self._stream = stream  # None: sys.stdout, looked up when written (Ray pickles the callbacks holding this)
        self.live = self.stream.isatty() if live is None else live
        self.clock = clock
        self.started = clock()
        self.epochs = 0  # epochs trained by this run (replayed ones are not)
        self.finished_epochs: list[int] = []  # epochs run by each trial that finished in this run
        self._shown = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    def on_epoch(self, result: dict[str, Any]) -> None:
        if result.get("replayed"):
            return
        self.epochs += 1
        if self.live:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
            self._shown = True

    def on_trial(self, row: dict[str, Any]) -> None:
        self.done += 1
        if row.get("epochs_run"):
            self.finished_epochs.append(int(row["epochs_run"]))

    def clear(self) -> str:
        """What to print before a normal line so it replaces the live status line."""
        if self.live and self._shown:
            self._shown = False
            return "\r\033[K"
        return ""

    def remaining_seconds(self) -> float | None:
        elapsed = self.clock() - self.started
        if self.epochs == 0 or elapsed <= 0:
            return None
        per_trial = (sum(self.finished_epochs) / len(self.finished_epochs) if self.finished_epochs
                     else self.epochs_per_trial)
        to_run = max(0, self.planned() - self.done) * per_trial + self.final_runs * self.epochs_per_trial
        # Epochs of trials still running count against what they have left to run.
        in_flight = self.epochs - sum(self.finished_epochs)
        return max(0.0, to_run - in_flight) / (self.epochs / elapsed)

    def line(self) -> str:
        planned = max(self.planned(), self.done)
        left = self.remaining_seconds()
        final = f" + {self.final_runs} final runs" if self.final_runs else ""
        estimate = f"about {duration(left)} left" if left is not None else "time left: after the first epoch"
        return (f"{self.done}/{planned} trials{final}, {self.epochs} epochs trained, "
                f"{duration(self.clock() - self.started)} elapsed, {estimate}")


def measure_epoch_seconds(family: str, config: dict[str, Any], data: Any, device: str = "cpu",
                          steps: int = 3) -> float:
    """Seconds one epoch of ``config`` takes here: a few training steps and one evaluation batch, timed
    (after a warm-up) on the device and with the threads a trial gets, scaled to the data's size.

    An epoch is the training batches over the training pairs plus the evaluation passes the loop
    makes (BatchNorm re-estimation and train L1 on the fixed training subset, val L1 on the whole
    validation split; for diffusion each is a few-step sampling run).
    """
    import math

    import torch

    from trainables import family_parts
    from trainables.augment import AugmentConfig
    from trainables.config import parse_config
    from trainables.loop import EVAL_BATCH, TrainSteps, as_float

    _, family_cls, config_cls = family_parts(family)
    settings, hp = parse_config(config, config_cls)
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
            eval_s = (time.perf_counter() - start) * len(images[:EVAL_BATCH]) / EVAL_BATCH
        train_eval = min(settings.train_eval_size, n_train)
        eval_batches = (n_val + 2 * train_eval) / EVAL_BATCH
        return math.ceil(n_train / batch) * step_s + eval_batches * eval_s
    finally:
        torch.set_num_threads(threads)


def measure_trial_epoch(family: str, config: dict[str, Any], data: Any, epochs: int = 2) -> dict[str, Any]:
    """The last epoch's row of a short real trial of ``config`` (no checkpoints): what a search's
    trial does per epoch on this device, evaluation included (on CUDA: graphed steps after the
    first epoch's capture, cuDNN's choices made)."""
    from trainables import family_parts
    from trainables.loop import run_trial

    _, family_cls, config_cls = family_parts(family)
    rows: list[dict[str, Any]] = []
    run_trial({**config, "epochs": epochs, "checkpoint_root": "", "evaluate_test": False}, data, family_cls,
              config_cls, report=rows.append)
    return rows[-1]


def measure_on_worker(family: str, configs: list[dict[str, Any] | None], data: Any) -> list[float | None]:
    """Seconds per epoch of each config (None: skipped), on the device this process has.

    On the CPU, :func:`measure_epoch_seconds` (a few steps, scaled); on a GPU, where the first
    epoch captures CUDA graphs and a few steps say little, the second epoch of a short trial
    (:func:`measure_trial_epoch`). The driver runs it as a Ray task with a trial's resources, so
    it is measured where trials train and the driver itself never opens a CUDA context.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if device == "cuda":
            return [measure_trial_epoch(family, config, data)["epoch_seconds"] if config is not None else None
                    for config in configs]
        return [measure_epoch_seconds(family, config, data, device=device) if config is not None else None
                for config in configs]
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def estimate_line(*, blocks: list[int], epochs: int, final_runs: int, concurrency: int, epoch_s: float,
                  widest_epoch_s: float | None = None, startup_s: float = 15.0) -> str:
    """The first line's promise: rounds of trials (each block's trials in parallel as far as
    ``concurrency`` allows, blocks one after another) times epochs times the measured epoch:
    of the study default, and of its widest models (where the search may end up)."""
    import math

    rounds = sum(math.ceil(n / concurrency) for n in blocks if n)
    final_rounds = math.ceil(final_runs / concurrency) if final_runs else 0
    low = startup_s + (rounds + final_rounds) * epochs * epoch_s
    final = f" + {final_runs} final runs" if final_runs else ""
    line = (f"estimate: {sum(blocks)} trials{final} of up to {epochs} epochs, {concurrency} at a time; one epoch of "
            f"the study default measured here at {epoch_s:.1f} s")
    if widest_epoch_s and widest_epoch_s > epoch_s * 1.05:
        high = startup_s + (rounds + final_rounds) * epochs * widest_epoch_s
        return (line + f", of its widest models {widest_epoch_s:.1f} s: about {duration(low)} to {duration(high)} "
                "if every trial ran all its epochs (ASHA's early stops make it shorter)")
    return line + f": about {duration(low)} if every trial ran all its epochs (ASHA's early stops make it shorter)"
