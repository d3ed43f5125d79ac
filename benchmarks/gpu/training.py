"""The GPU benchmark's timing sections: the device's ceilings (env), a training epoch per family, width and
variant (train), diffusion sampling, and one whole GAN trial."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import torch

from benchmarks.gpu import VARIANTS, WIDTHS, bench_data, median, sync, thesis_config


def section_env(args) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    times = []
    for i in range(13):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    tflops = 2 * 8192**3 / median(times) / 1e12
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    times = []
    for i in range(13):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    bandwidth = 2 * src.nbytes / median(times) / 1e9
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(), "memory_gib": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16_matmul_tflops": tflops, "copy_gb_s": bandwidth}


def _trial(family: str, config: dict[str, Any], data):
    from trainables.families import find_family
    from trainables.loop import set_up_trial

    return set_up_trial(config, data, find_family(family))


def _evaluate_epoch(trial) -> None:
    """The evaluation passes one epoch makes (BatchNorm re-estimation, val, train subset)."""
    from trainables.evaluation import evaluate, recalibrate_batchnorm

    recalibrate_batchnorm(trial.family, trial.calibration, trial.augment)
    evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)
    evaluate(trial.family, trial.train_images, trial.train_maps)


def _train_case(family: str, width: int, variant: str, data, epochs: int) -> dict[str, Any]:
    from trainables.device import GpuUtilisation
    from trainables.loop import train_epoch

    torch.cuda.empty_cache()
    trial = _trial(family, thesis_config(family, width, **VARIANTS[variant]), data)
    util = GpuUtilisation(trial.device)
    sync()
    start = time.perf_counter()
    train_epoch(trial)  # warm-up: cuDNN autotuning, and compilation when compiled
    _evaluate_epoch(trial)
    sync()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = []
    util.start()
    for _ in range(epochs):
        sync()
        start = time.perf_counter()
        train_epoch(trial)
        sync()
        times.append(time.perf_counter() - start)
    busy = util.mean()
    evals = []
    for _ in range(2):
        sync()
        start = time.perf_counter()
        _evaluate_epoch(trial)
        sync()
        evals.append(time.perf_counter() - start)
    epoch_s = median(times)
    row = {"family": family, "width": width, "variant": variant, "train_epoch_s": epoch_s,
           "images_per_s": len(data.train_images) / epoch_s, "eval_s": min(evals), "epoch_s": epoch_s + min(evals),
           "first_epoch_s": first, "warmup_s": max(0.0, first - epoch_s - min(evals)),
           "peak_mb": torch.cuda.max_memory_allocated() / 2**20, "reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
           "gpu_util": busy, "epochs_timed": epochs, "graphed": trial.steps.graph is not None}
    del trial
    torch.cuda.empty_cache()
    return row


def section_train(args) -> dict[str, Any]:
    data = bench_data()
    rows = []
    variants = [v for v in args.variants.split(",") if v != "bf16+compile" or args.compile]
    for family in args.families.split(","):
        for width in WIDTHS:
            for variant in variants:
                row = _train_case(family, width, variant, data, args.epochs)
                rows.append(row)
                print(f"train {family} c={width} {variant}: {row['train_epoch_s']:.3f} s/epoch "
                      f"({row['images_per_s']:.0f} img/s) + eval {row['eval_s']:.3f} s, "
                      f"peak {row['peak_mb']:.0f} MB, util {row['gpu_util'] if row['gpu_util'] is None else round(row['gpu_util'], 2)}, "
                      f"warm-up {row['warmup_s']:.1f} s", flush=True)
    return {"rows": rows}


def section_sampling(args) -> dict[str, Any]:
    from trainables.evaluation import evaluate

    data = bench_data()
    rows = []
    for width in WIDTHS:
        trial = _trial("diffusion", thesis_config("diffusion", width), data)
        for steps in (10, 25, 50):
            trial.family.hp = dataclasses.replace(trial.family.hp, sampling_steps=steps)
            evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)  # warm-up
            times = []
            for _ in range(3):
                sync()
                start = time.perf_counter()
                evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)
                sync()
                times.append(time.perf_counter() - start)
            rows.append({"width": width, "sampler": "ddim", "steps": steps, "images": len(data.val_images),
                         "seconds": median(times)})
            print(f"sampling diffusion c={width} DDIM-{steps}: {median(times):.2f} s for {len(data.val_images)} images",
                  flush=True)
        del trial
        torch.cuda.empty_cache()
    return {"rows": rows}


def section_trial(args) -> dict[str, Any]:
    from trainables.families import find_family
    from trainables.loop import run_trial

    data = bench_data()
    family_cls = find_family("gan")
    out = {}
    for label, with_checkpoints in (("with checkpoints", True), ("without checkpoints", False)):
        with tempfile.TemporaryDirectory() as root:
            rows = []
            config = thesis_config("gan", 64, epochs=args.trial_epochs, checkpoint_root=root if with_checkpoints else "")
            sync()
            start = time.perf_counter()
            run_trial(config, data, family_cls, report=rows.append)
            sync()
            wall = time.perf_counter() - start
        out[label] = {"epochs": args.trial_epochs, "wall_s": wall, "best_val_l1": rows[-1]["best_val_l1"],
                      "median_epoch_s": median([r["epoch_seconds"] for r in rows[1:]]),
                      "gpu_util": median([r["gpu_util"] for r in rows if r.get("gpu_util") is not None] or [float("nan")]),
                      "gpu_reserved_mb": max(r.get("gpu_reserved_mb", 0) for r in rows)}
        print(f"trial gan c=64 {args.trial_epochs} epochs {label}: {wall:.1f} s "
              f"(median epoch {out[label]['median_epoch_s']:.3f} s), best val L1 {rows[-1]['best_val_l1']:.4f}",
              flush=True)
    return out
