"""The GPU benchmark: the CUDA path of every family at the thesis sizes, measured on one GPU.

    python -m benchmarks.gpu                                  # every section but search (about 8 minutes on an H100)
    python -m benchmarks.gpu --only train,sampling,checks     # some sections
    python -m benchmarks.gpu --only search --search-limit 540 # the thesis greedy GAN search (resumes if cut short)
    python -m benchmarks.gpu --merge FILE.json                # fold another run's sections in and print its tables
    python -m benchmarks.gpu --check                          # the short check, at most 8 minutes (check.py)

Sections (each a median over repeats, after a warm-up, with the device synchronised around
every timed region):

- ``env``: the device, and its two ceilings measured here (a bf16 8192^3 matrix product, a
  large device-to-device copy).
- ``train``: per family at c = 64 and 100 (batch 16, 1,280 training + 320 validation pairs,
  64x64): seconds per training epoch, images per second, one epoch's evaluation passes,
  peak memory (tensors, and the process's allocator cache), GPU utilisation; fp32 against
  bf16, contiguous against channels-last, eager against ``torch.compile`` (its compilation
  time shown apart).
- ``sampling``: diffusion validation of 320 images with DDIM-k (k = 10, 25, 50).
- ``trial``: one whole GAN trial (c = 64, 100 epochs, evaluation and checkpoints every
  epoch), as a search runs it, with the default settings.
- ``packing``: trials per hour with 1, 2, 4 and 8 GAN trials sharing one GPU (Ray tasks with
  fractional GPUs, the same trial code), and what ``--gpus-per-trial auto`` chooses.
- ``search``: a thesis-preset greedy GAN search (``python -m search.run``), wall time.
- ``checks``: the CUDA code paths checked, not only timed: bf16 against fp32, channels-last
  and compiled outputs against eager, and a resumed fp16 trial (loss scaler and CUDA RNG from
  its checkpoint) against an uninterrupted one. A failed check makes the script exit 1.

The sections live in ``training.py`` (env, train, sampling, trial), ``checks.py`` and ``cluster.py``
(packing, search); ``__main__.py`` is the command. Results: ``benchmarks/results/gpu-<device>.json`` (every number, each section with its
provenance), merged section by section with earlier runs' results; ``python -m
benchmarks.render`` renders its tables into benchmarks/README.md.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from trainables.families import find_family

RESULTS = Path(__file__).resolve().parent.parent / "results"
ROOT = Path(__file__).resolve().parent.parent.parent
SECTIONS = ("env", "checks", "train", "sampling", "trial", "packing", "search")
WIDTHS = (64, 100)
VARIANTS = {  # name -> run settings
    "fp32": {"precision": "fp32", "channels_last": "off", "compile": "off", "cuda_graphs": "off"},
    "bf16": {"precision": "bf16", "channels_last": "off", "compile": "off", "cuda_graphs": "off"},
    "bf16+cl": {"precision": "bf16", "channels_last": "on", "compile": "off", "cuda_graphs": "off"},
    "bf16+compile": {"precision": "bf16", "channels_last": "off", "compile": "on", "cuda_graphs": "off"},
    "fp32+graphs": {"precision": "fp32", "channels_last": "off", "compile": "off", "cuda_graphs": "on"},
    "bf16+graphs": {"precision": "bf16", "channels_last": "off", "compile": "off", "cuda_graphs": "on"},
    "bf16+cl+graphs": {"precision": "bf16", "channels_last": "on", "compile": "off", "cuda_graphs": "on"},
}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def sync() -> None:
    torch.cuda.synchronize()


def bench_data():
    from trainables.data import resolve_data

    return resolve_data(None, size=64, seed=0)


def thesis_config(family: str, width: int, **settings: Any) -> dict[str, Any]:
    """The study's defaults at thesis width ``width`` (both networks of the GAN), with run settings."""
    from search.study_file import load_space

    space = load_space(family)
    config = space.default_config()
    for key in find_family(family).width_params:
        config[key] = width
    return {**config, "train_eval_size": 320, "epochs": 100, **settings}


def device_name() -> str:
    name = torch.cuda.get_device_name().lower()
    for short in ("h100", "h200", "a100", "l40s", "l4", "a10", "4090", "3090", "3070", "v100", "t4"):
        if short in name:
            return short
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")
