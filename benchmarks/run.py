"""The benchmark suite: overhead, data path, search efficiency, diffusion sampling, memory, scaling.

    python -m benchmarks.run --quick        # about 35 minutes on 2 cores (section 3: benchmarks/search.py --quick)
    python -m benchmarks.run                # larger budgets and more repeats
    python -m benchmarks.run --only overhead,sampling

Every figure is a median over repeats, and ratios are measured within one run (these
machines are shared and noisy). Results go to benchmarks/results/quick.json (or full.json),
each section with its provenance; the search-efficiency runs and curves to Parquet
(benchmarks/search.py). Section 1, the overhead, is in benchmarks/overhead.py. ``python -m
benchmarks.render`` writes the quick results' tables into benchmarks/README.md, and this command
prints them.
"""

from __future__ import annotations

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

from benchmarks.provenance import provenance
from benchmarks.overhead import bench_overhead, study_defaults
from benchmarks.search import bench_search, run_search, shared_ray
from trainables.families import FAMILIES, find_family
from trainables.augment import diff_augment
from trainables.checkpoints import load_family
from trainables.data import VMSDataset, resolve_data
from trainables.evaluation import as_float
from trainables.loop import run_trial
from trainables.losses import masked_l1

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


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
    config = {**study_defaults("diffusion"), "epochs": 4 if quick else 10, "width_divisor": 8, "steps": steps,
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
    """Parameters, gradients and Adam state (16 bytes per parameter) plus the outputs of every layer one
    training step runs (fp32, what autograd may keep for the backward pass), for the study's defaults at ``width``.

    The step is the family's own ``train_step`` on two 64x64 pairs, so every network it runs (the GAN's
    discriminator on fake and real pairs, the denoiser on a noised map) is counted as training runs it.
    """
    from benchmarks.floor import study_default_model

    torch.manual_seed(0)
    model, _ = study_default_model(family, width)
    nets = list(model.modules.values())
    params = sum(p.numel() for net in nets for p in net.parameters())
    outputs = 0

    def hook(module, inputs, output):
        nonlocal outputs
        if isinstance(output, torch.Tensor):
            outputs += output.numel()

    handles = [m.register_forward_hook(hook) for net in nets for m in net.modules() if not list(m.children())]
    pairs = 2  # two, so that BatchNorm sees more than one value per channel at a 1x1 bottleneck
    x = torch.zeros(pairs, 3, 64, 64)
    try:
        model.train_step(x, x, torch.ones(pairs, 1, 64, 64))
    finally:
        for h in handles:
            h.remove()
    return (params * 16 + outputs / pairs * batch * 4) / 2**20


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


# Each section's measurement, called with the data set and --quick.
SECTIONS = {
    "overhead": bench_overhead,
    "datapath": bench_datapath,
    "search": lambda data, quick: bench_search(quick),
    "sampling": bench_sampling,
    "memory": lambda data, quick: bench_memory(quick),
    "scaling": lambda data, quick: bench_scaling(quick),
}

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
        results[section] = SECTIONS[section](data, args.quick)
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
