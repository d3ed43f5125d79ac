"""The GPU benchmark: the CUDA path of every family at the thesis sizes, measured on one GPU.

    python -m benchmarks.gpu                                  # every section but search (about 8 minutes on an H100)
    python -m benchmarks.gpu --only train,sampling,checks     # some sections
    python -m benchmarks.gpu --only search --search-limit 540 # the thesis greedy GAN search (resumes if cut short)
    python -m benchmarks.gpu --merge FILE.json                # fold another run's sections in and print its tables

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

Results: ``benchmarks/results/gpu-<device>.json`` (every number, each section with its
provenance), merged section by section with earlier runs' results; ``python -m
benchmarks.render`` renders its tables into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.provenance import provenance
from benchmarks.tables.gpu import report
from trainables.families import FAMILIES, find_family

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
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


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _sync() -> None:
    torch.cuda.synchronize()


def _data():
    from trainables.data import resolve_data

    return resolve_data(None, size=64, seed=0)


def _config(family: str, width: int, **settings: Any) -> dict[str, Any]:
    """The study's defaults at thesis width ``width`` (both networks of the GAN), with run settings."""
    from search.space import load_space

    space = load_space(family)
    config = space.default_config()
    for key in find_family(family).width_params:
        config[key] = width
    return {**config, "train_eval_size": 320, "epochs": 100, **settings}


def _device_name() -> str:
    name = torch.cuda.get_device_name().lower()
    for short in ("h100", "h200", "a100", "l40s", "l4", "a10", "4090", "3090", "3070", "v100", "t4"):
        if short in name:
            return short
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# -- env ---------------------------------------------------------------------------------------


def section_env(args) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    times = []
    for i in range(13):
        _sync()
        start = time.perf_counter()
        a @ b
        _sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    tflops = 2 * 8192**3 / _median(times) / 1e12
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    times = []
    for i in range(13):
        _sync()
        start = time.perf_counter()
        dst.copy_(src)
        _sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    bandwidth = 2 * src.nbytes / _median(times) / 1e9
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(), "memory_gib": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16_matmul_tflops": tflops, "copy_gb_s": bandwidth}


# -- train ---------------------------------------------------------------------------------------


def _trial(family: str, config: dict[str, Any], data):
    from trainables.families import find_family
    from trainables.loop import set_up_trial

    return set_up_trial(config, data, find_family(family))


def _evaluate_epoch(trial) -> None:
    """The evaluation passes one epoch makes (BatchNorm re-estimation, val, train subset)."""
    from trainables.evaluation import evaluate, recalibrate_batchnorm

    recalibrate_batchnorm(trial.family, trial.train_images, trial.train_maps, trial.augment, seed=0)
    evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)
    evaluate(trial.family, trial.train_images, trial.train_maps)


def _train_case(family: str, width: int, variant: str, data, epochs: int) -> dict[str, Any]:
    from trainables.device import GpuUtilisation
    from trainables.loop import train_epoch

    torch.cuda.empty_cache()
    trial = _trial(family, _config(family, width, **VARIANTS[variant]), data)
    util = GpuUtilisation(trial.device)
    _sync()
    start = time.perf_counter()
    train_epoch(trial)  # warm-up: cuDNN autotuning, and compilation when compiled
    _evaluate_epoch(trial)
    _sync()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = []
    util.start()
    for _ in range(epochs):
        _sync()
        start = time.perf_counter()
        train_epoch(trial)
        _sync()
        times.append(time.perf_counter() - start)
    busy = util.mean()
    evals = []
    for _ in range(2):
        _sync()
        start = time.perf_counter()
        _evaluate_epoch(trial)
        _sync()
        evals.append(time.perf_counter() - start)
    epoch_s = _median(times)
    row = {"family": family, "width": width, "variant": variant, "train_epoch_s": epoch_s,
           "images_per_s": len(data.train_images) / epoch_s, "eval_s": min(evals), "epoch_s": epoch_s + min(evals),
           "first_epoch_s": first, "warmup_s": max(0.0, first - epoch_s - min(evals)),
           "peak_mb": torch.cuda.max_memory_allocated() / 2**20, "reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
           "gpu_util": busy, "epochs_timed": epochs, "graphed": trial.steps.graph is not None}
    del trial
    torch.cuda.empty_cache()
    return row


def section_train(args) -> dict[str, Any]:
    data = _data()
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


# -- sampling ----------------------------------------------------------------------------------


def section_sampling(args) -> dict[str, Any]:
    from trainables.evaluation import evaluate

    data = _data()
    rows = []
    for width in WIDTHS:
        trial = _trial("diffusion", _config("diffusion", width), data)
        for steps in (10, 25, 50):
            trial.family.hp = dataclasses.replace(trial.family.hp, sampling_steps=steps)
            evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)  # warm-up
            times = []
            for _ in range(3):
                _sync()
                start = time.perf_counter()
                evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)
                _sync()
                times.append(time.perf_counter() - start)
            rows.append({"width": width, "sampler": "ddim", "steps": steps, "images": len(data.val_images),
                         "seconds": _median(times)})
            print(f"sampling diffusion c={width} DDIM-{steps}: {_median(times):.2f} s for {len(data.val_images)} images",
                  flush=True)
        del trial
        torch.cuda.empty_cache()
    return {"rows": rows}


# -- trial ---------------------------------------------------------------------------------------


def section_trial(args) -> dict[str, Any]:
    from trainables.families import find_family
    from trainables.loop import run_trial

    data = _data()
    family_cls = find_family("gan")
    out = {}
    for label, with_checkpoints in (("with checkpoints", True), ("without checkpoints", False)):
        with tempfile.TemporaryDirectory() as root:
            rows = []
            config = _config("gan", 64, epochs=args.trial_epochs, checkpoint_root=root if with_checkpoints else "")
            _sync()
            start = time.perf_counter()
            run_trial(config, data, family_cls, report=rows.append)
            _sync()
            wall = time.perf_counter() - start
        out[label] = {"epochs": args.trial_epochs, "wall_s": wall, "best_val_l1": rows[-1]["best_val_l1"],
                      "median_epoch_s": _median([r["epoch_seconds"] for r in rows[1:]]),
                      "gpu_util": _median([r["gpu_util"] for r in rows if r.get("gpu_util") is not None] or [float("nan")]),
                      "gpu_reserved_mb": max(r.get("gpu_reserved_mb", 0) for r in rows)}
        print(f"trial gan c=64 {args.trial_epochs} epochs {label}: {wall:.1f} s "
              f"(median epoch {out[label]['median_epoch_s']:.3f} s), best val L1 {rows[-1]['best_val_l1']:.4f}",
              flush=True)
    return out


# -- packing -------------------------------------------------------------------------------------


def _packed_trial(config: dict[str, Any], data) -> float:
    from trainables.families import find_family
    from trainables.loop import run_trial

    family_cls = find_family("gan")

    start = time.perf_counter()
    run_trial(config, data, family_cls, report=lambda row: None)
    return time.perf_counter() - start


def section_packing(args) -> dict[str, Any]:
    import ray

    from search.runner.packing import choose_share
    from trainables.measure import GpuProbe, probe_gpu

    data = _data()
    ray.init(num_gpus=1, num_cpus=max(8, os.cpu_count() or 8), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        data_ref = ray.put(data)
        probe = ray.get(ray.remote(num_gpus=1)(probe_gpu).remote("gan", [_config("gan", 64), _config("gan", 100)],
                                                                  data_ref))
        share = choose_share(GpuProbe(**probe))
        print(f"packing: auto probe {probe}; {share.why}", flush=True)
        counts = sorted({1, 2, 4, 8, share.per_gpu})
        rows = []
        for n in counts:
            task = ray.remote(num_gpus=math.floor(10_000 / n) / 10_000, num_cpus=1)(_packed_trial)
            with tempfile.TemporaryDirectory() as root:
                configs = [_config("gan", 64, epochs=args.packing_epochs, seed=seed, checkpoint_root=root)
                           for seed in range(args.packing_trials)]
                start = time.perf_counter()
                trial_s = ray.get([task.remote(c, data_ref) for c in configs])
                wall = time.perf_counter() - start
            epochs_per_hour = args.packing_trials * args.packing_epochs / wall * 3600
            rows.append({"per_gpu": n, "trials": args.packing_trials, "epochs": args.packing_epochs, "wall_s": wall,
                         "median_trial_s": _median(trial_s), "thesis_trials_per_hour": epochs_per_hour / 100})
            print(f"packing {n} per GPU: {args.packing_trials} trials of {args.packing_epochs} epochs in {wall:.1f} s: "
                  f"{epochs_per_hour / 100:.1f} thesis trials (100 epochs) per hour", flush=True)
        base = rows[0]["thesis_trials_per_hour"]
        for row in rows:
            row["vs_one"] = row["thesis_trials_per_hour"] / base
        return {"probe": probe, "auto_per_gpu": share.per_gpu, "auto_fraction": share.fraction, "auto_why": share.why,
                "rows": rows}
    finally:
        ray.shutdown()


# -- search --------------------------------------------------------------------------------------


def section_search(args) -> dict[str, Any]:
    runs = Path(args.search_runs)
    study = runs / "greedy-gan-thesis"
    command = [sys.executable, "-m", "search.run", "--strategy", "greedy", "--model", "gan", "--preset", "thesis",
               "--final-top-k", "0", "--runs-dir", str(runs), "--study", study.name]
    if (study / "study.json").exists():
        command.append("--resume")
    print("search: " + " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT)
    try:
        rc = proc.wait(timeout=args.search_limit)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the driver stops cleanly on SIGTERM: a later run resumes it
        rc = proc.wait()
    wall = time.perf_counter() - start
    summary = json.loads((study / "summary.json").read_text()) if (study / "summary.json").exists() else {}
    record = json.loads((study / "study.json").read_text()) if (study / "study.json").exists() else {}
    segments = [s.get("wall_seconds") for s in record.get("segments", [])]
    return {"trials_table": _search_trials(study),"exit_code": rc, "this_run_s": wall, "finished": bool(summary.get("finished")),
            "segments_s": segments, "total_s": sum(s or 0.0 for s in segments), "trials": summary.get("trials"),
            "counts": summary.get("counts"), "best_val_l1": summary.get("best_val_l1"),
            "baselines": summary.get("baselines"), "gpus_per_trial": [s.get("gpus_per_trial") for s in record.get("segments", [])]}


def _search_trials(study: Path) -> list[dict[str, Any]]:
    """Per trial of the study: its block, status, epochs, wall time, epoch time, GPU use, best val L1."""
    import pandas as pd

    if not (study / "trials.parquet").exists() or not (study / "epochs.parquet").exists():
        return []
    trials, epochs = pd.read_parquet(study / "trials.parquet"), pd.read_parquet(study / "epochs.parquet")
    rows = []
    for _, trial in trials.sort_values("started_at").iterrows():
        mine = epochs[epochs.trial_id == trial.trial_id].sort_values("epoch")
        if mine.empty:
            continue
        rows.append({"trial_id": trial.trial_id, "block": int(trial.greedy_block), "param": trial.greedy_param,
                     "status": trial.status, "epochs": int(mine.epoch.iloc[-1]),
                     "trial_wall_s": float(mine.wall_seconds.iloc[-1]), "median_epoch_s": float(mine.epoch_seconds.median()),
                     "gpu_util": float(mine.gpu_util.median()), "gpu_reserved_mb": float(mine.gpu_reserved_mb.max()),
                     "best_val_l1": float(trial.best_val_l1), "started_at": str(trial.started_at)})
    return rows


# -- checks --------------------------------------------------------------------------------------


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def section_checks(args) -> dict[str, Any]:
    """The CUDA paths computed right, not only fast. Each returns (passed, detail)."""
    from trainables.families import find_family
    from trainables.config import parse_config
    from trainables.evaluation import as_float
    from trainables.loop import run_trial

    data = _data()
    results = {}
    image = as_float(torch.from_numpy(data.val_images[:16].copy()).cuda())

    def outputs(family: str, **settings: Any) -> torch.Tensor:
        family_cls = find_family(family)
        config_cls = family_cls.config_cls
        settings_, hp = parse_config(_config(family, 64, **settings), config_cls)
        torch.manual_seed(0)
        model = family_cls.build(hp, settings_, torch.device("cuda"))
        model.train(False)
        with torch.no_grad(), model.precision.autocast():
            return model.predict(model.fast.input(image)).float()

    for family in FAMILIES:
        reference = outputs(family, precision="fp32")
        for variant, settings in VARIANTS.items():
            if variant == "fp32" or (variant.endswith("compile") and not args.compile):
                continue
            error = _relative(outputs(family, **settings), reference)
            results[f"{family} {variant} vs fp32"] = {"relative_error": error, "passed": math.isfinite(error) and error < 3e-2}

    # Training steps replayed as CUDA graphs against eager ones, from the same start (every family).
    for family in FAMILIES:
        family_cls = find_family(family)
        losses, graphed = {}, None
        for graphs in ("off", "on"):
            rows = []
            run_trial(_config(family, 64, epochs=2, cuda_graphs=graphs), data, family_cls, report=rows.append)
            losses[graphs] = [rows[-1]["train_loss"], rows[-1]["val_l1"]]
            if graphs == "on":
                graphed = not any(r.get("notice") for r in rows)
        gap = max(abs(a - b) / abs(a) for a, b in zip(losses["off"], losses["on"]))
        results[f"{family} 2 epochs with CUDA graphs vs eager"] = {
            "train_loss_and_val_l1": [losses["off"], losses["on"]], "relative_gap": gap, "captured": graphed,
            "passed": bool(graphed) and gap < 0.05}

    # A resumed trial (optimizers, loss scaler and CUDA RNG from its checkpoint) against an uninterrupted one:
    # fp16 (eager, with the loss scaler) and bf16 with CUDA graphs.
    for precision in ("fp16", "bf16"):
        results.update(_resume_check(data, precision))
    for name, result in results.items():
        print(f"check {'PASS' if result['passed'] else 'FAIL'}: {name}: "
              + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "passed"),
              flush=True)
    return {"results": results, "passed": all(r["passed"] for r in results.values())}


def _resume_check(data, precision: str) -> dict[str, Any]:
    from trainables.families import find_family
    from trainables.checkpoints import CHECKPOINT_FORMAT
    from trainables.loop import run_trial

    family_cls = find_family("autoencoder")

    histories = {}
    has_state = False
    for label in ("uninterrupted", "resumed"):
        with tempfile.TemporaryDirectory() as root:
            config = _config("autoencoder", 64, epochs=3, precision=precision, checkpoint_root=root)
            if label == "resumed":
                run_trial({**config, "epochs": 2}, data, family_cls, report=lambda row: None)
                state = torch.load(next(Path(root).glob("*/latest.pt")), map_location="cpu", weights_only=True)
                assert state["format"] == CHECKPOINT_FORMAT
                scaler = state["family"].get("scaler.unet", {})
                has_state = state.get("cuda_rng") is not None and (precision != "fp16" or scaler.get("scale") is not None)
            rows = []
            run_trial(config, data, family_cls, report=rows.append)
            histories[label] = [r for r in rows if not r.get("replayed")]
    a, b = histories["uninterrupted"][-1], histories["resumed"][-1]
    gap = abs(a["val_l1"] - b["val_l1"]) / a["val_l1"]
    what = "loss scaler and CUDA RNG" if precision == "fp16" else "CUDA RNG (graphed steps)"
    return {f"{precision} trial resumed at epoch 2 of 3 vs uninterrupted": {
        "val_l1": [a["val_l1"], b["val_l1"]], "relative_gap": gap, f"checkpoint_has_{what.replace(' ', '_')}": has_state,
        # cuDNN's backward kernels are not bitwise deterministic, so the runs differ by rounding, not by a restart
        "passed": has_state and gap < 0.05}}


# -- results -------------------------------------------------------------------------------------


def _fold(results: dict[str, Any], section: str, measured: Any) -> None:
    """Put a section's results in; a train run of some cases replaces those cases only."""
    if section == "train" and "train" in results:
        ran = {(r["family"], r["width"], r["variant"]) for r in measured["rows"]}
        measured = {**measured, "rows": [r for r in results["train"]["rows"]
                                         if (r["family"], r["width"], r["variant"]) not in ran] + measured["rows"]}
    results[section] = measured


def _write(results: dict[str, Any], out: Path, device: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-{device}.json").write_text(json.dumps(results, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(s for s in SECTIONS if s != "search"),
                        help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu-<device>.json")
    parser.add_argument("--epochs", type=int, default=3, help="train: timed epochs per case (after one warm-up)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"train: some of {', '.join(VARIANTS)}")
    parser.add_argument("--families", default=",".join(FAMILIES), help="train: some of the families")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="train/checks: skip torch.compile")
    parser.add_argument("--trial-epochs", type=int, default=100)
    parser.add_argument("--packing-trials", type=int, default=8)
    parser.add_argument("--packing-epochs", type=int, default=10)
    parser.add_argument("--search-runs", default=os.path.join(tempfile.gettempdir(), "gpu-bench-runs"))
    parser.add_argument("--search-limit", type=float, default=3600.0, help="search: seconds before it is stopped (resumable)")
    parser.add_argument("--merge", default=None, help="a gpu-<device>.json whose sections to fold into --out's")
    parser.add_argument("--render", default=None, help="a gpu-<device>.json: print its tables")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        print(report(json.loads(Path(args.render).read_text())))
        return 0
    if args.merge:
        other = json.loads(Path(args.merge).read_text())
        device = other["_device"]
        path = out / f"gpu-{device}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        for section, measured in other.items():
            _fold(results, section, measured)
        _write(results, out, device)
        print(report(results))
        return 0
    if set(args.variants.split(",")) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        print("error: benchmarks.gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
              "the CPU figures are in benchmarks.run", file=sys.stderr)
        return 2
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"error: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    device = _device_name()
    path = out / f"gpu-{device}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["_device"] = device
    for section in SECTIONS:
        if section not in sections:
            continue
        start = time.perf_counter()
        _fold(results, section, globals()[f"section_{section}"](args))
        results[section]["_measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results[section]["provenance"] = provenance("benchmarks.gpu", sys.argv[1:] if argv is None else argv)
        results[section]["_section_s"] = time.perf_counter() - start
        _write(results, out, device)  # after each section: a run cut short keeps what it measured
        print(f"[{section}: {time.perf_counter() - start:.0f} s]", flush=True)
    print(report(results))
    failed = "checks" in sections and not results["checks"]["passed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
