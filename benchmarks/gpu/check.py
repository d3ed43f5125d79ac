"""``python -m benchmarks.gpu --check``: the GPU path as a user's first day takes it, in at most 8 minutes on one
H100 or H200, written to ``benchmarks/results/gpu-check-<device>.json`` with its provenance.

1. ``epoch``: a thesis-size GAN trial (c = 64, the search's defaults: bf16, channels-last, CUDA graphs), a few
   epochs as a search runs them (evaluation every epoch, no checkpoints): the median epoch after the first;
2. ``ddim25``: diffusion validation (c = 64) of the whole val set with DDIM-25, median of three after a warm-up;
3. ``probe``: ``--gpus-per-trial auto``'s measurement (:func:`trainables.measure.probe_gpu`) with NVML, and the share
   it chooses (:func:`search.runner.packing.choose_share`): whether NVML was read, and why not;
4. ``search``: ``python -m search.run --strategy greedy --model gan --preset thesis --blocks 2`` with a 1-seed final
   stage, end to end (its wall time, trials, the final test L1); stopped with SIGTERM at what is left of the budget.

Each part is timed apart and written as soon as it is measured, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu import RESULTS, ROOT, bench_data, median, sync, thesis_config

BUDGET_S = 8 * 60


def _epoch(data) -> dict[str, Any]:
    from trainables.families import find_family
    from trainables.loop import run_trial

    rows: list[dict[str, Any]] = []
    run_trial(thesis_config("gan", 64, epochs=4, checkpoint_root=""), data, find_family("gan"), report=rows.append)
    return {"epochs": len(rows), "median_epoch_s": median([r["epoch_seconds"] for r in rows[1:]]),
            "first_epoch_s": rows[0]["epoch_seconds"], "gpu_util": rows[-1].get("gpu_util"),
            "gpu_reserved_mb": max(r.get("gpu_reserved_mb", 0.0) for r in rows)}


def _ddim25(data) -> dict[str, Any]:
    from benchmarks.gpu.training import _trial
    from trainables.evaluation import evaluate

    trial = _trial("diffusion", thesis_config("diffusion", 64, sampling_steps=25), data)
    evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)  # warm-up
    times = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        evaluate(trial.family, trial.tensors.val_images, trial.tensors.val_maps)
        sync()
        times.append(time.perf_counter() - start)
    return {"images": len(data.val_images), "seconds": median(times)}


def _probe(data) -> dict[str, Any]:
    from search.runner.packing import choose_share
    from search.study_file import load_space
    from trainables.families import find_family
    from trainables.measure import GpuProbe, probe_gpu

    config = {**thesis_config("gan", 64), "checkpoint_root": ""}
    space = load_space("gan")
    widest_value = max(v for p in ("g_width", "d_width") for c in space.by_name[p].choices.values() for v in c.values)
    widest = {**thesis_config("gan", widest_value), "checkpoint_root": ""}
    measured = GpuProbe(**probe_gpu(find_family("gan"), [config, widest], data))
    share = choose_share(measured)
    return {"nvml_read": measured.util is not None, "util": measured.util, "nvml_error": measured.nvml_error,
            "footprint_mb": measured.footprint_mb, "total_mb": measured.total_mb, "per_gpu": share.per_gpu,
            "fraction": share.fraction, "why": share.why}


def _search(limit_s: float) -> dict[str, Any]:
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-runs-"))
    command = [sys.executable, "-m", "search.run", "--strategy", "greedy", "--model", "gan", "--preset", "thesis",
               "--blocks", "2", "--final-top-k", "1", "--final-seeds", "1", "--runs-dir", str(runs), "--study", "check"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT)
    try:
        code = proc.wait(timeout=max(limit_s, 1.0))
    except subprocess.TimeoutExpired:
        proc.terminate()  # the driver saves and exits 130 on SIGTERM
        code = proc.wait()
    summary_file = runs / "check" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    final = (summary.get("final") or {}).get("configurations") or [{}]
    return {"command": " ".join(command[1:]), "exit_code": code, "wall_s": time.perf_counter() - start,
            "finished": bool(summary.get("finished")), "trials": summary.get("trials"), "counts": summary.get("counts"),
            "best_val_l1": summary.get("best_val_l1"), "final_test_l1": (final[0].get("test_l1") or {}).get("mean"),
            "test_black_l1": ((summary.get("final") or {}).get("test_baselines") or {}).get("black_l1")}


def run_check(device: str, provenance: dict[str, Any], out: Path = RESULTS) -> dict[str, Any]:
    """The four parts in order, within :data:`BUDGET_S`; the result file is rewritten after each."""
    started = time.perf_counter()
    data = bench_data()
    result: dict[str, Any] = {"device": device, "budget_s": BUDGET_S, "provenance": provenance}
    path = out / f"gpu-check-{device}.json"
    for name, part in (("epoch", lambda: _epoch(data)), ("ddim25", lambda: _ddim25(data)),
                       ("probe", lambda: _probe(data)),
                       ("search", lambda: _search(BUDGET_S - (time.perf_counter() - started) - 10))):
        start = time.perf_counter()
        result[name] = {**part(), "part_s": time.perf_counter() - start}
        result["total_s"] = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"[check {name}: {result[name]['part_s']:.0f} s] {json.dumps(result[name], default=str)[:300]}",
              flush=True)
    result["within_budget"] = result["total_s"] <= BUDGET_S
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result
