"""Sharing a GPU between trials: ``--gpus-per-trial auto``, and a trial that runs out of GPU memory.

Before the search starts, the study's default configuration trains alone on one GPU for a
few seconds (:func:`trainables.measure.probe_gpu`, a Ray task with ``num_gpus=1``); so does its widest
configuration (the most memory a search may need). From what it measures,
:func:`choose_share` sets the GPU fraction per trial: as many trials per GPU as fit in its
memory with a margin, and no more than its idle time can use. Without MPS the GPU runs one
process's kernels at a time, so trials sharing it gain only the time one trial leaves it
idle (Python, kernel launches, evaluation, checkpoints): trials are added until together they
would keep it busy 95% of the time (one at 40% busy: 3; one at 90%: 2; one at 97%: alone).
Measured on an H100 (benchmarks/README.md, section 10): three thesis GAN trials, each 88-95%
busy alone, shared it at 1.2x the throughput of one after another.

A trial that still runs out of GPU memory (a wider configuration than the probe's, another
process on the GPU) is not lost: :class:`OutOfMemoryRetry` gives it twice the share and runs
it again from its checkpoint, up to a whole GPU, without using up ``--max-failures``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainables.measure import GpuProbe

MEMORY_MARGIN = 0.15  # of the GPU's memory, left free: allocator fragmentation, cuDNN workspaces, a wider trial
MOST_PER_GPU = 8
BUSY_TARGET = 0.95  # trials are added until together they would keep the GPU busy this share of the time


@dataclass(frozen=True)
class Share:
    fraction: float  # the GPU fraction each trial asks Ray for
    per_gpu: int
    why: str


def choose_share(probe: GpuProbe, margin: float = MEMORY_MARGIN, most: int = MOST_PER_GPU) -> Share:
    """Trials per GPU: as many as fit in memory with ``margin`` free, no more than the GPU's idle time can use.
    Without the idle time (NVML could not be read) one trial a GPU: memory alone would pack up to ``most`` trials
    that take turns on a GPU one of them may keep busy."""
    if probe.util is None:
        return Share(1.0, 1, f"1 trial per GPU: its utilisation could not be read through NVML "
                             f"({probe.nvml_error or 'no reason given'}), and memory alone says nothing of how busy "
                             "a trial keeps it; give --gpus-per-trial 0.5 (or another share) to pack trials anyway")
    fit = max(1, math.floor(probe.total_mb * (1.0 - margin) / max(probe.footprint_mb, 1.0)))
    memory = f"{fit} fit in {probe.total_mb / 1024:.0f} GiB at {probe.footprint_mb / 1024:.1f} GiB each with {margin:.0%} free"
    useful = max(1, math.ceil(BUSY_TARGET / max(probe.util, 1.0 / most) - 1e-9))  # the fewest that keep it busy
    busy = f"one trial keeps it {probe.util:.0%} busy, so {useful} keep it busy"
    n = max(1, min(fit, useful, most))
    fraction = 1.0 if n == 1 else math.floor(10_000 / n) / 10_000  # Ray counts GPUs in 1/10,000ths
    return Share(fraction, n, f"{n} trials per GPU ({memory}; {busy})")


def ran_out_of_memory(trial) -> bool:
    """Whether the trial's last failure was the GPU running out of memory."""
    try:
        with open(trial.error_file) as handle:
            text = handle.read()
    except (OSError, TypeError):
        return False
    last = text[text.rfind("Failure #"):]
    return "OutOfMemoryError" in last or "out of memory" in last


def _retry_callback():
    from ray import tune

    class OutOfMemoryRetry(tune.Callback):
        """A trial that ran out of GPU memory runs again from its checkpoint with twice the share (up to a GPU).

        Ray Tune requeues a failed trial when ``--max-failures`` allows; here its resources
        are raised before it starts again, and the retry is not counted as a failure.
        """

        def __init__(self, say=print) -> None:
            self.say = say

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            resources = dict(trial.placement_group_factory.required_resources)
            share = resources.get("GPU", 0.0)
            if not share or share >= 1.0 or not ran_out_of_memory(trial):
                return
            grown = min(1.0, share * 2)
            trial.update_resources({"CPU": resources.get("CPU", 1.0), "GPU": grown})
            if trial.max_failures >= 0:
                trial.max_failures += 1  # the user's --max-failures stays for real failures
            self.say(f"trial {trial.trial_id} ran out of GPU memory with {share:g} of a GPU; "
                     f"running it again from its checkpoint with {grown:g}", flush=True)

    return OutOfMemoryRetry


def out_of_memory_retry(say=print):
    """A Ray Tune callback: see :class:`OutOfMemoryRetry` (built lazily: Ray is imported on use)."""
    return _retry_callback()(say)
