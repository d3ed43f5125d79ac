"""The GPU benchmark's sections through Ray: trials packed on one GPU, and a thesis-preset greedy GAN search."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu import ROOT, bench_data, median, thesis_config


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

    data = bench_data()
    ray.init(address="local", num_gpus=1, num_cpus=max(8, os.cpu_count() or 8), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        data_ref = ray.put(data)
        probe = ray.get(ray.remote(num_gpus=1)(probe_gpu).remote("gan", [thesis_config("gan", 64), thesis_config("gan", 100)],
                                                                  data_ref))
        share = choose_share(GpuProbe(**probe))
        print(f"packing: auto probe {probe}; {share.why}", flush=True)
        counts = sorted({1, 2, 4, 8, share.per_gpu})
        rows = []
        for n in counts:
            task = ray.remote(num_gpus=math.floor(10_000 / n) / 10_000, num_cpus=1)(_packed_trial)
            with tempfile.TemporaryDirectory() as root:
                configs = [thesis_config("gan", 64, epochs=args.packing_epochs, seed=seed, checkpoint_root=root)
                           for seed in range(args.packing_trials)]
                start = time.perf_counter()
                trial_s = ray.get([task.remote(c, data_ref) for c in configs])
                wall = time.perf_counter() - start
            epochs_per_hour = args.packing_trials * args.packing_epochs / wall * 3600
            rows.append({"per_gpu": n, "trials": args.packing_trials, "epochs": args.packing_epochs, "wall_s": wall,
                         "median_trial_s": median(trial_s), "thesis_trials_per_hour": epochs_per_hour / 100})
            print(f"packing {n} per GPU: {args.packing_trials} trials of {args.packing_epochs} epochs in {wall:.1f} s: "
                  f"{epochs_per_hour / 100:.1f} thesis trials (100 epochs) per hour", flush=True)
        base = rows[0]["thesis_trials_per_hour"]
        for row in rows:
            row["vs_one"] = row["thesis_trials_per_hour"] / base
        return {"probe": probe, "auto_per_gpu": share.per_gpu, "auto_fraction": share.fraction, "auto_why": share.why,
                "rows": rows}
    finally:
        ray.shutdown()


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
