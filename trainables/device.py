"""How a trial uses its device: precision, memory format, compilation, and what it measures of the GPU.

On CUDA a trial trains in bf16 autocast (fp16 with a loss scaler before Ampere: :func:`native_bf16`),
with fused Adam, each training step replayed as one CUDA graph (``trainables.steps.TrainSteps``),
and with the memory format that ``benchmarks/gpu/`` measured fastest at the thesis sizes
(see :func:`FastPath.resolve`). On the CPU everything is fp32, eager and contiguous: the CPU
path is what the tests and the ``cpu`` preset run.

Each choice is a run setting (``precision``, ``channels_last``, ``compile``, ``cuda_graphs``;
``auto`` by default) that changes only rounding and speed, not what a trial computes, so it is
not part of the trial key: a study resumed with another choice continues its trials.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from trainables.config import PRECISIONS, SWITCHES  # the choices of the run settings


def trial_device() -> torch.device:
    """Where this process trains: CUDA when it was given a GPU. A Ray worker was given one only where Ray assigned
    it (Ray leaves every GPU visible to a task that asked for none, so ``--gpus-per-trial 0``, or GPUs Ray could
    not count without NVML, put each trial on cuda:0 beside the others); any other process, when there is one."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if _in_ray_worker():
        import ray

        return torch.device("cuda" if ray.get_gpu_ids() else "cpu")
    return torch.device("cuda")


def _in_ray_worker() -> bool:
    """Whether this process is a Ray task's or actor's worker (not a driver, not a process without Ray)."""
    import sys

    if "ray" not in sys.modules:  # a worker has imported Ray to run its task
        return False
    import ray._private.worker as ray_worker

    return ray_worker.global_worker.mode == ray_worker.WORKER_MODE


def native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 itself (compute capability 8.0, Ampere, and later). Torch's
    ``is_bf16_supported()`` also says yes for a T4 or V100, where bf16 is emulated without tensor cores."""
    try:
        return torch.cuda.get_device_capability(device)[0] >= 8
    except (RuntimeError, AssertionError):  # no CUDA here: nothing to choose
        return False


class Precision:
    """Mixed precision on CUDA (bf16 where the GPU computes it, :func:`native_bf16`, else fp16 with loss scaling);
    fp32 on CPU.

    ``choice`` (a run setting): ``auto`` as above, ``bf16``/``fp16`` to force one on CUDA,
    ``fp32`` for no autocast. The CPU always trains in fp32.
    """

    def __init__(self, device: torch.device, choice: str = "auto") -> None:
        if choice not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {choice!r}")
        self.device = device
        self.enabled = device.type == "cuda" and choice != "fp32"
        if choice == "fp16" or (choice == "auto" and self.enabled and not native_bf16(device)):
            self.dtype = torch.float16
        else:
            self.dtype = torch.bfloat16
        self.needs_scaling = self.enabled and self.dtype == torch.float16

    @property
    def name(self) -> str:
        return "fp32" if not self.enabled else ("fp16" if self.dtype == torch.float16 else "bf16")

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.needs_scaling)


def _switch(value: str, name: str, auto: bool) -> bool:
    if value not in SWITCHES:
        raise ValueError(f"{name} must be one of {SWITCHES}, got {value!r}")
    return auto if value == "auto" else value == "on"


@dataclass(frozen=True)
class FastPath:
    """Memory format and compilation of a trial's networks."""

    channels_last: bool = False
    compile: bool = False

    @classmethod
    def resolve(cls, device: torch.device, channels_last: str = "auto", compile: str = "auto",
                cpu_channels_last: bool = False) -> "FastPath":
        """The settings' choices, with ``auto`` resolved for this device.

        On the CPU ``auto`` is off, but channels-last is on for a family that says it measured it faster there
        (``cpu_channels_last``: the GAN, benchmarks/README.md section 13). On CUDA it follows what benchmarks/gpu/ measured on an
        H100 at the thesis sizes (64x64 maps, batch 16, c = 64 and 100; benchmarks/README.md,
        section 10): with CUDA graphs, channels-last trained every family 13-21% faster (the
        GAN at c = 64: 0.230 s an epoch against 0.268), so it is on. ``torch.compile`` has not
        been measured there yet, so it stays off unless asked for (``--compile on``). ``on``
        means on, on the CPU too (``benchmarks/levers.py`` measures both levers there).
        """
        cuda = device.type == "cuda"
        return cls(channels_last=_switch(channels_last, "channels_last", cuda or cpu_channels_last),
                   compile=_switch(compile, "compile", False))

    def prepare(self, net: nn.Module) -> nn.Module:
        """The network in this path's memory format, compiled in place (its state_dict keys unchanged)."""
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        if self.compile:
            net.compile(dynamic=False)
        return net

    def input(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch laid out as the networks expect it."""
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch


class GpuUtilisation:
    """The GPU's utilisation (percent of time a kernel ran, NVML's sampled counter) over a stretch of time.

    It reads the whole GPU, so it is a trial's own only while the trial has the GPU to itself
    (how ``--gpus-per-trial auto`` measures). ``None`` where NVML (the nvidia-ml-py package, a
    dependency, and the driver's libnvidia-ml) cannot be read or a CUDA device is missing; :attr:`error` says why.
    """

    def __init__(self, device: torch.device) -> None:
        self.handle = None
        self.since = 0
        self.error: str | None = None  # why NVML could not be read on a CUDA device (None: it can, or no CUDA)
        if device.type != "cuda":
            return
        try:
            import pynvml  # the nvidia-ml-py package, a dependency

            pynvml.nvmlInit()
            index = torch.cuda._get_nvml_device_index(device)  # honours CUDA_VISIBLE_DEVICES, as Ray sets it
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as err:  # noqa: BLE001 - no NVML: utilisation is not measured, and the probe says why
            self.handle = None
            self.error = f"{type(err).__name__}: {err}"[:160]

    def start(self) -> None:
        self.since = int(time.time() * 1e6)

    def mean(self) -> float | None:
        """Mean utilisation in [0, 1] since :meth:`start`."""
        if self.handle is None:
            return None
        nvml = self._nvml
        try:
            _, samples = nvml.nvmlDeviceGetSamples(self.handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, self.since)
            values = [s.sampleValue.uiVal for s in samples if s.timeStamp >= self.since]
            if values:
                return sum(values) / len(values) / 100.0
            return nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0
        except Exception:  # noqa: BLE001
            return None


def cuda_context_mb(device: torch.device) -> float:
    """This process's device memory outside PyTorch's allocator (CUDA context, cuDNN/cuBLAS handles), MB.

    Measured as the GPU's used memory minus what the allocator holds, so it is exact only when
    this process is alone on the GPU; elsewhere a typical value is assumed.
    """
    free, total = torch.cuda.mem_get_info(device)
    outside = (total - free - torch.cuda.memory_reserved(device)) / 2**20
    return outside if 0 < outside < 4096 and os.environ.get("CUDA_MPS_PIPE_DIRECTORY") is None else 600.0
