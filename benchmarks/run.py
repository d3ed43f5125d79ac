"""The benchmark suite: overhead, data path, search efficiency, diffusion sampling, memory, scaling.

    python -m benchmarks.run --quick        # about 35 minutes on 2 cores (section 3: benchmarks/search.py --quick)
    python -m benchmarks.run                # larger budgets and more repeats
    python -m benchmarks.run --only overhead,sampling

Every figure is a median over repeats, and ratios are measured within one run (these
machines are shared and noisy). Results go to benchmarks/results/quick.json (or full.json),
each section with its provenance; the search-efficiency runs and curves to Parquet
(benchmarks/search.py). ``python -m benchmarks.render`` writes the quick results' tables into
benchmarks/README.md, and this command prints them.
"""

from __future__ import annotations

import functools
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.provenance import provenance
from benchmarks.search import bench_search, run_search, shared_ray
from trainables.families import FAMILIES, find_family
from trainables.augment import diff_augment, hide_invalid
from trainables.checkpoints import load_family
from trainables.data import VMSDataset, resolve_data
from trainables.evaluation import as_float
from trainables.loop import run_trial, train
from trainables.losses import masked_l1, masked_mse

RESULTS = Path(__file__).parent / "results"
TRAIN_EVAL = 160  # training images on which train L1 is measured each epoch (as the cpu preset)
ROOT = Path(__file__).resolve().parent.parent


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _study_defaults(family: str) -> dict[str, Any]:
    from search.space import load_space

    space = load_space(family)
    return {**space.fixed, **space.defaults()}


# -- 1. framework overhead -----------------------------------------------------------------


def _bare_epoch(family: str, hp: dict[str, Any], data: VMSDataset, width_divisor: int) -> callable:
    """A plain PyTorch loop for the same model on the same tensors: train, then one val pass."""
    from models.diffusion import DenoiserConfig, NoiseSchedule, build_denoiser, sample
    from models.layers import scaled_width
    from models.patchgan import PatchGANConfig, build_patchgan
    from models.unet import UNetConfig, build_unet

    images, maps = torch.from_numpy(data.train_images), torch.from_numpy(data.train_maps)
    val_images, val_maps = torch.from_numpy(data.val_images), torch.from_numpy(data.val_maps)
    batch = hp["batch_size"]
    train_eval = torch.linspace(0, len(images) - 1, min(TRAIN_EVAL, len(images))).long()
    if family == "gan":
        gen = build_unet(UNetConfig(width=scaled_width(hp["g_width"], width_divisor), norm=hp["g_norm"]))
        disc = build_patchgan(PatchGANConfig(width=scaled_width(hp["d_width"], width_divisor), norm=hp["d_norm"]))
        g_opt = torch.optim.Adam(gen.parameters(), lr=hp["g_lr"], betas=(hp["g_beta1"], 0.999))
        d_opt = torch.optim.Adam(disc.parameters(), lr=hp["d_lr"], betas=(hp["d_beta1"], 0.999))
        model = gen
    elif family == "diffusion":
        model = build_denoiser(DenoiserConfig(width=scaled_width(hp["width"], width_divisor), norm=hp["norm"]), hp["steps"])
        schedule = NoiseSchedule(hp["schedule"], hp["steps"], hp["beta_start"], hp["beta_end"], prediction=hp["prediction"])
        opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], 0.999))
    else:
        model = build_unet(UNetConfig(width=scaled_width(hp["width"], width_divisor), norm=hp["norm"]))
        opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], 0.999))

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(images))
        for first in range(0, len(images), batch):
            idx = order[first : first + batch]
            if len(idx) < 2:
                continue
            x, y, valid = diff_augment(as_float(images[idx]), as_float(maps[idx]))
            if family == "gan":
                disc.requires_grad_(False)
                fake = gen(x)
                g_loss = (F.mse_loss(disc(hide_invalid(fake, valid), x), torch.ones(len(x), 1, 4, 4))
                          + hp["l1_weight"] * masked_l1(fake, y, valid))
                g_opt.zero_grad()
                g_loss.backward()
                g_opt.step()
                disc.requires_grad_(True)
                fake_s, real_s = disc(hide_invalid(fake.detach(), valid), x), disc(hide_invalid(y, valid), x)
                d_loss = 0.5 * (F.mse_loss(fake_s, torch.zeros_like(fake_s)) + F.mse_loss(real_s, torch.ones_like(real_s)))
                d_opt.zero_grad()
                d_loss.backward()
                d_opt.step()
            elif family == "diffusion":
                y = hide_invalid(y, valid)
                t = torch.randint(0, hp["steps"], (len(x),))
                noise = torch.randn_like(y)
                loss = masked_mse(model(x, schedule.add_noise(y, noise, t), t), schedule.target(y, noise, t), valid)
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                loss = masked_l1(model(x), y, valid)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():  # the same measurements our loop makes: val L1, and train L1 on a fixed subset
            for split_images, split_maps in ((val_images, val_maps), (images[train_eval], maps[train_eval])):
                for first in range(0, len(split_images), 64):
                    x = as_float(split_images[first : first + 64])
                    pred = (sample(model, schedule, x, sampling_steps=hp["sampling_steps"]) if family == "diffusion"
                            else model(x))
                    F.l1_loss(pred, as_float(split_maps[first : first + 64]))

    return epoch


def _timed(cls):
    """A Ray logger callback that adds up the time it spends on each reported result."""

    class Timed(cls):
        spent, calls = 0.0, 0

        def on_trial_result(self, *args, **kwargs):
            start = time.perf_counter()
            super().on_trial_result(*args, **kwargs)
            self.spent += time.perf_counter() - start
            self.calls += 1

    return Timed()


def bench_overhead(data: VMSDataset, quick: bool) -> dict[str, Any]:
    """Epoch time inside our trainable under Ray Tune against a bare loop, same model, same tensors."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    epochs = 4 if quick else 8
    divisor = 8
    threads = 1
    out: dict[str, Any] = {"epochs": epochs, "width_divisor": divisor, "threads": threads, "families": {}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for family in FAMILIES:
            hp = _study_defaults(family)
            if family == "diffusion":
                hp.update(prediction="x0", steps=500)
            trainable = functools.partial(train, family=find_family(family))
            rows: list[dict] = []

            class Collect(tune.Callback):
                def on_trial_result(self, iteration, trials, trial, result, **info):
                    rows.append(dict(result))

            loggers = [_timed(cls) for cls in (JsonLoggerCallback, CSVLoggerCallback, TBXLoggerCallback)]

            config = {**hp, "epochs": epochs, "width_divisor": divisor, "threads": threads, "train_eval_size": TRAIN_EVAL}
            with tempfile.TemporaryDirectory() as tmp:
                config["checkpoint_root"] = tmp
                tune.Tuner(tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
                           param_space=config,
                           run_config=tune.RunConfig(storage_path=tmp, verbose=0, callbacks=[Collect(), *loggers])).fit()
            ours = _median([r["epoch_seconds"] for r in rows[1:]])  # the first epoch warms up
            # Ray's own result files (result.json, progress.csv, TensorBoard events), which the search
            # writes for ExperimentAnalysis and TensorBoard: their cost per reported epoch.
            logs_s = sum(cb.spent for cb in loggers) / max(1, min(cb.calls for cb in loggers))
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            epoch = _bare_epoch(family, hp, data, divisor)
            epoch()  # warm-up
            bare_times = []
            for _ in range(epochs - 1):
                start = time.perf_counter()
                epoch()
                bare_times.append(time.perf_counter() - start)
            bare = _median(bare_times)
            out["families"][family] = {"ours_s": ours, "bare_s": bare, "ratio": ours / bare,
                                       "ray_logs_ms": logs_s * 1000, "ray_logs_fraction": logs_s / ours}
            print(f"  overhead {family}: ours {ours:.2f} s/epoch, bare {bare:.2f} s/epoch, ratio {ours / bare:.3f}; "
                  f"Ray's result files {logs_s * 1000:.2f} ms per epoch ({logs_s / ours:.3%} of an epoch)", flush=True)
    finally:
        ray.shutdown()
    torch.set_num_threads(os.cpu_count() or 1)
    # Scheduling overhead of a whole search: wall time against training time / concurrency.
    summary, trials = run_search("random", "autoencoder", seed=0, samples=8, scheduler="none", preset="bench-small")
    train_sum = float(trials["wall_seconds"].sum())
    span = (trials["ended_at"].max() - trials["started_at"].min()).total_seconds()
    out["search"] = {"trials": len(trials), "wall_s": summary.wall_seconds, "trials_span_s": span,
                     "train_s_sum": train_sum, "concurrency": 2, "ratio": summary.wall_seconds / (train_sum / 2),
                     "ratio_span": span / (train_sum / 2)}
    print(f"  whole search: wall {summary.wall_seconds:.1f} s (first start to last end {span:.1f} s) vs training "
          f"{train_sum:.1f} s / 2 -> {out['search']['ratio']:.2f} ({out['search']['ratio_span']:.2f})", flush=True)
    return out


# -- 2. data path ----------------------------------------------------------------------------


class FileDataset(torch.utils.data.Dataset):
    """What hand-rolled scripts do: open, decode and resize the image files every epoch."""

    def __init__(self, folder: Path, stems: list[str], size: int, ext: str = ".png") -> None:
        self.folder, self.stems, self.size, self.ext = folder, stems, size, ext

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int):
        from trainables.images import decode_rgb

        stem = self.stems[index]
        image, _ = decode_rgb(self.folder / "images" / f"{stem}{self.ext}", self.size)
        vms, _ = decode_rgb(self.folder / "maps" / f"{stem}{self.ext}", self.size)
        return torch.from_numpy(image), torch.from_numpy(vms)


def _large_jpeg_copy(folder: Path, stems: list[str], target: Path, side: int = 384) -> Path:
    """The synthetic images as the larger JPEGs a real VISCHEMA copy holds (resized every epoch)."""
    from PIL import Image

    for kind in ("images", "maps"):
        (target / kind).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            Image.open(folder / kind / f"{stem}.png").resize((side, side), Image.Resampling.BILINEAR).save(
                target / kind / f"{stem}.jpg", quality=90)
    return target


def bench_datapath(data: VMSDataset, quick: bool) -> dict[str, Any]:
    from models.unet import UNetConfig, build_unet
    from trainables.synthetic import SyntheticSpec, ensure_synthetic

    folder = ensure_synthetic(SyntheticSpec())
    repeats = 3 if quick else 5
    torch.set_num_threads(1)
    model = build_unet(UNetConfig(width=8, norm="batch"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, maps = torch.from_numpy(data.train_images), torch.from_numpy(data.train_maps)

    def step(x, y):
        x, y, valid = diff_augment(as_float(x), as_float(y))
        loss = masked_l1(model(x), y, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def resident_epoch():
        order = torch.randperm(len(images))
        for first in range(0, len(images), 16):
            idx = order[first : first + 16]
            step(images[idx], maps[idx])

    def file_epoch(dataset):
        def epoch():
            for x, y in torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True, num_workers=0):
                step(x, y)
        return epoch

    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = _large_jpeg_copy(folder, data.train_stems, Path(tmp))
        for name, epoch in (("resident", resident_epoch),
                            ("files", file_epoch(FileDataset(folder, data.train_stems, data.size))),
                            ("jpeg384", file_epoch(FileDataset(jpegs, data.train_stems, data.size, ".jpg")))):
            epoch()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                epoch()
                times.append(time.perf_counter() - start)
            timings[name] = _median(times)
    torch.set_num_threads(os.cpu_count() or 1)
    result = {"resident_s": timings["resident"], "files_s": timings["files"], "jpeg384_s": timings["jpeg384"],
              "ratio_files_over_resident": timings["files"] / timings["resident"],
              "ratio_jpeg384_over_resident": timings["jpeg384"] / timings["resident"],
              "model": "UNet c=8, 1 thread", "images": len(images)}
    print(f"  data path: resident {timings['resident']:.2f} s, 64px PNG files {timings['files']:.2f} s, "
          f"384px JPEG files {timings['jpeg384']:.2f} s per epoch", flush=True)
    return result


# -- 3. search efficiency: benchmarks/search.py ---------------------------------------------------


# -- 4. diffusion evaluation --------------------------------------------------------------------


def bench_sampling(data: VMSDataset, quick: bool) -> dict[str, Any]:
    from models.diffusion import sample

    steps = 500 if quick else 2000
    n_val = 96 if quick else len(data.val_images)
    family_cls = find_family("diffusion")
    # The study's defaults (the x0 target read as the map's logits, trained with l1+ce), fewer steps.
    config = {**_study_defaults("diffusion"), "epochs": 4 if quick else 10, "width_divisor": 8, "steps": steps,
              "threads": os.cpu_count() or 1}
    with tempfile.TemporaryDirectory() as tmp:
        config["checkpoint_root"] = tmp
        run_trial(config, data, family_cls, report=lambda row: None)
        family = load_family(next(Path(tmp).iterdir()) / "best.pt", "diffusion", torch.device("cpu"))
    images = as_float(torch.from_numpy(data.val_images[:n_val]))
    truth = as_float(torch.from_numpy(data.val_maps[:n_val]))
    rows = []
    for sampler, k in [("ddim", 10), ("ddim", 25), ("ddim", 50), ("ddim", 100), ("ancestral", steps)]:
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        preds = torch.cat([sample(family.net, family.schedule, images[i : i + 32], sampler=sampler, sampling_steps=k,
                                  generator=generator) for i in range(0, n_val, 32)])
        seconds = time.perf_counter() - start
        l1 = float((preds - truth).abs().mean())
        rows.append({"sampler": sampler, "steps": k, "seconds": seconds, "val_l1": l1,
                     "seconds_per_image": seconds / n_val})
        print(f"  sampling {sampler} {k} steps: {seconds:.1f} s for {n_val} images, val L1 {l1:.4f}", flush=True)
    return {"trained_steps": steps, "images": n_val, "width": "c=8 (64/8)", "rows": rows,
            "trained": {k: config[k] for k in ("prediction", "denoise_loss", "schedule", "p_translation")}}


# -- 5. memory ------------------------------------------------------------------------------------


def _mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _estimate_gpu_mb(family: str, width: int, batch: int = 16) -> float:
    """Parameters, gradients and Adam state (16 bytes per parameter) plus saved activations (fp32)."""
    from models.diffusion import DenoiserConfig, build_denoiser
    from models.patchgan import PatchGANConfig, build_patchgan
    from models.unet import UNetConfig, build_unet

    nets = {"autoencoder": [build_unet(UNetConfig(width=width))],
            "gan": [build_unet(UNetConfig(width=width)), build_patchgan(PatchGANConfig(width=width))],
            "diffusion": [build_denoiser(DenoiserConfig(width=width), 2000)]}[family]
    params = sum(p.numel() for net in nets for p in net.parameters())
    activations = 0

    def hook(module, inputs, output):
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    handles = [m.register_forward_hook(hook) for net in nets for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        if family == "diffusion":
            nets[0](x, x, torch.zeros(1, dtype=torch.long))
        else:
            out = nets[0](x)
            if family == "gan":
                nets[1](out, x)
                nets[1](out, x)  # D sees fake and real
    for h in handles:
        h.remove()
    return (params * 16 + activations * batch * 4) / 2**20


def bench_memory(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"families": {}}
    for family in FAMILIES:
        with tempfile.TemporaryDirectory() as runs:
            baseline = _mem_available_kb()
            lowest = [baseline]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    lowest.append(_mem_available_kb())
                    time.sleep(0.25)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            proc = subprocess.run([sys.executable, "-m", "search.run", "--strategy", "greedy", "--model", family,
                                   "--preset", "cpu", "--epochs", "2", "--blocks", "1", "--runs-dir", runs,
                                   "--study", "mem", "--final-top-k", "0"], cwd=ROOT, capture_output=True, text=True)
            stop.set()
            watcher.join()
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            driver_mb = json.loads((Path(runs) / "mem" / "summary.json").read_text())["driver_peak_rss_mb"]
            epochs = pd.read_parquet(Path(runs) / "mem" / "epochs.parquet")
            trial_mb = float(epochs.groupby("trial_id")["peak_rss_mb"].max().max())
        whole_mb = (baseline - min(lowest)) / 1024.0
        out["families"][family] = {"driver_peak_rss_mb": driver_mb, "trial_peak_rss_mb": trial_mb,
                                   "whole_search_mb": whole_mb,
                                   "gpu_estimate_mb_c64": _estimate_gpu_mb(family, 64),
                                   "gpu_estimate_mb_c100": _estimate_gpu_mb(family, 100)}
        print(f"  memory {family}: driver {driver_mb:.0f} MB, trial {trial_mb:.0f} MB, whole search {whole_mb:.0f} MB; "
              f"GPU estimate c=64 {out['families'][family]['gpu_estimate_mb_c64']:.0f} MB", flush=True)
    data = resolve_data(None)
    out["dataset_mb"] = sum(a.nbytes for a in (data.train_images, data.train_maps, data.val_images, data.val_maps)) / 2**20
    out["note"] = ("driver peak: the search driver's own peak RSS (summary.json); trial peak: the largest trial process's "
                   "peak RSS (epochs.parquet); whole search: the drop in MemAvailable while the search ran, all Ray "
                   "processes included")
    return out


# -- 6. scaling ------------------------------------------------------------------------------------


def bench_scaling(quick: bool) -> dict[str, Any]:
    samples = 6 if quick else 12
    out = {}
    ray = shared_ray()
    for concurrent in (1, 2):
        summary, trials = run_search("random", "autoencoder", seed=0, samples=samples, scheduler="none",
                                  max_concurrent=concurrent)
        out[f"concurrent_{concurrent}"] = {"trials": len(trials), "wall_s": summary.wall_seconds,
                                           "trials_per_hour": len(trials) / summary.wall_seconds * 3600}
        print(f"  scaling {concurrent} concurrent: {out[f'concurrent_{concurrent}']['trials_per_hour']:.0f} trials/hour",
              flush=True)
    ray.shutdown()
    out["speedup"] = out["concurrent_2"]["trials_per_hour"] / out["concurrent_1"]["trials_per_hour"]
    return out


SECTIONS = ("overhead", "datapath", "search", "sampling", "memory", "scaling")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets: about 35 minutes on 2 cores")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    # Ray's own loggers are added by hand where they are measured (overhead), not twice.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        print(f"error: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    data = resolve_data(None)
    prov = provenance("benchmarks.run", sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "provenance": prov, "section_provenance": {section: prov for section in chosen},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "quick": args.quick,
        "machine": f"{os.cpu_count()} CPU cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
                   f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    started = time.perf_counter()
    for section in chosen:
        print(f"{section} ...", flush=True)
        t0 = time.perf_counter()
        if section == "overhead":
            results[section] = bench_overhead(data, args.quick)
        elif section == "datapath":
            results[section] = bench_datapath(data, args.quick)
        elif section == "search":
            results[section] = bench_search(args.quick)
        elif section == "sampling":
            results[section] = bench_sampling(data, args.quick)
        elif section == "memory":
            results[section] = bench_memory(args.quick)
        elif section == "scaling":
            results[section] = bench_scaling(args.quick)
        results.setdefault("section_seconds", {})[section] = time.perf_counter() - t0
    results["total_seconds"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "full"
    previous = RESULTS / f"{name}.json"
    if args.only and previous.exists():  # --only re-measures some sections: keep the others' last results
        merged = json.loads(previous.read_text())
        merged.setdefault("section_dates", {})
        merged.setdefault("section_provenance", {})
        for section in chosen:
            merged[section] = results[section]
            merged["section_dates"][section] = results["date"]
            merged["section_provenance"][section] = prov
        results = {**merged, "date": merged.get("date"), "total_seconds": results["total_seconds"], "provenance": prov}
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.quick:  # the docs are rendered from quick.json (python -m benchmarks.render)
        from benchmarks.tables import cpu

        for section in chosen:
            print(getattr(cpu, f"{section}_table", lambda: results[section].get("markdown", ""))())
    print(f"total {results['total_seconds'] / 60:.1f} min; raw results in {RESULTS}/{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
