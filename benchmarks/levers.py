"""The levers on the main job's speed on the CPU, each measured paired against the default on the same work.

    python -m benchmarks.levers            # 3 repeats, ~15 min on 2 cores
    python -m benchmarks.levers --quick    # 1 repeat, 2 epochs a cell: checks the script

The work: trials of the study defaults at the ``cpu`` preset's size (width divisor 4, train L1 on
160 training pairs) on the synthetic default's first 640 training pairs and its 320 val pairs,
checkpointing every epoch as a search does. A *cell* runs a variant as the main job runs its
trials: two processes at once with one thread each (``--cpus-per-trial 1`` on 2 cores), for a
few epochs; the first epoch warms up (and compiles) and is left out. A *repeat* runs every cell
once, in an order rotated from repeat to repeat, with the same seeds for every cell: each
variant is compared with its family's default cell of the same repeat, and the ratios' mean and
95% interval (Student's t over repeats) are recorded in ``results/levers.json``.

What a cell's number is: *trial-epochs per second* of the whole machine, processes x members /
the mean seconds of a process's epoch (its steps, its measuring, its checkpoint snapshot). The
variants:

- ``channels-last``, ``compile``: the networks in channels-last memory format, or compiled
  (``torch.compile``, inductor's C++ kernels);
- ``1 trial x 2 threads``: one trial at a time with both cores, against two trials at once;
- ``fused x3``: each process trains three autoencoder configurations of one shape as one batched
  network (``trainables/fused.py``), against lone trials (the GAN cannot be fused yet);
- evaluation cadence and checkpoint pacing are not run as cells: each default cell's measured
  phases (``eval_seconds``, ``checkpoint_seconds``) say what measuring every other epoch, or no
  checkpoint, would leave of its epoch.

Test L1 is not measured here. Channels-last, compilation, threads and fusion change the arithmetic's
rounding only; a lever the code turns on by default has its test L1 measured, paired over seeds, by
``benchmarks.lever_quality``. Evaluating every other epoch changes which epoch is selected, and no
measurement of that was made, so it stays off.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance
from search.runner.final import interval
from trainables.storage import write_json_atomic

OUT = Path(__file__).parent / "results" / "levers.json"
# name: (family, processes at once, threads each, run-setting overrides, members fused per process)
CELLS: dict[str, tuple[str, int, int, dict[str, Any], int]] = {
    "gan": ("gan", 2, 1, {}, 1),
    "gan channels-last": ("gan", 2, 1, {"channels_last": "on"}, 1),
    "gan compile": ("gan", 2, 1, {"compile": "on"}, 1),
    "gan 1 trial x 2 threads": ("gan", 1, 2, {}, 1),
    "autoencoder": ("autoencoder", 2, 1, {}, 1),
    "autoencoder fused x3": ("autoencoder", 2, 1, {}, 3),
}
N_TRAIN = 640
FUSED_LR = (0.001, 0.002, 0.0005)  # a fused process's members: greedy's learning-rate block, one shape


def _config(family: str, overrides: dict[str, Any], seed: int, epochs: int, root: str) -> dict[str, Any]:
    from search.study_file import load_space

    return {**load_space(family).default_config(), "epochs": epochs, "width_divisor": 4, "train_eval_size": 160,
            "threads": 0, "seed": seed, "checkpoint_root": root, **overrides}


def _process(args: tuple[str, int, dict[str, Any], int, int, int]) -> list[dict[str, Any]]:
    """One process of a cell: its trial (or fused trials) for ``epochs`` epochs; every reported row."""
    import torch

    from trainables.data import load_dataset
    from trainables.families import find_family
    from trainables.synthetic import ensure_synthetic

    family_name, threads, overrides, members, seed, epochs = args
    torch.set_num_threads(threads)
    data = load_dataset(ensure_synthetic()).subset(N_TRAIN, None)
    family = find_family(family_name)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as root:
        if members == 1:
            from trainables.loop import run_trial

            run_trial(_config(family_name, overrides, seed, epochs, root), data, family, report=rows.append)
        else:
            from trainables.fused import run_fused

            configs = [{**_config(family_name, overrides, seed, epochs, root), "lr": lr} for lr in FUSED_LR[:members]]
            run_fused(configs, data, family, reports=[rows.append] * members)
    return rows


def run_cell(name: str, seed: int, epochs: int) -> dict[str, Any]:
    """A cell once: its processes at once; trial-epochs per second and the default's phases."""
    family, processes, threads, overrides, members = CELLS[name]
    jobs = [(family, threads, overrides, members, seed + i, epochs) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        outputs = pool.map(_process, jobs)
    measured = [r for rows in outputs for r in rows if r["epoch"] > 1]  # the first epoch warms up
    # A process's epoch: each of its members' epochs one after another (fused: each member's share of the steps).
    per_member = statistics.mean(r["epoch_seconds"] + r["checkpoint_seconds"] for r in measured)
    return {"cell": name, "trial_epochs_per_s": processes / per_member,
            "epoch_seconds": per_member * members, "members": members,
            "train_seconds": statistics.mean(r["train_seconds"] for r in measured),
            "eval_seconds": statistics.mean(r["eval_seconds"] for r in measured),
            "checkpoint_seconds": statistics.mean(r["checkpoint_seconds"] for r in measured)}


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant's speed-up over its family's default cell of the same repeat, over repeats; and the projected
    share of the default's epoch that measuring every other epoch, or no checkpoint, would save."""
    rows = []
    for name, (family, *_rest) in CELLS.items():
        mine = [c for c in cells if c["cell"] == name]
        if name == family:
            epoch = [c["train_seconds"] + c["eval_seconds"] + c["checkpoint_seconds"] for c in mine]
            rows.append({"variant": f"{family}: evaluate every other epoch (projected from its phases)",
                         "speedup": interval([e / (e - c["eval_seconds"] / 2) for e, c in zip(epoch, mine)])})
            rows.append({"variant": f"{family}: no checkpoint (projected from its phases)",
                         "speedup": interval([e / (e - c["checkpoint_seconds"]) for e, c in zip(epoch, mine)])})
            continue
        base = {c["repeat"]: c for c in cells if c["cell"] == family}
        ratios = [c["trial_epochs_per_s"] / base[c["repeat"]]["trial_epochs_per_s"] for c in mine if c["repeat"] in base]
        rows.append({"variant": name, "speedup": interval(ratios)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat of 2 epochs a cell (checks the script)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs a cell trains (the first is left out)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    repeats, epochs = (1, 2) if args.quick else (args.repeats, args.epochs)
    names = list(CELLS)
    cells = []
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]  # rotated: no cell always runs first
        for name in order:
            started = time.perf_counter()
            cell = {**run_cell(name, seed=100 * repeat, epochs=epochs), "repeat": repeat}
            cells.append(cell)
            print(f"repeat {repeat} {name}: {cell['trial_epochs_per_s']:.4f} trial-epochs/s "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    result = {"provenance": provenance("benchmarks.levers", sys.argv[1:] if argv is None else argv),
              "n_train": N_TRAIN, "epochs": epochs, "repeats": repeats, "cells": cells, "levers": summarize(cells)}
    write_json_atomic(Path(args.out), result)
    for row in result["levers"]:
        s = row["speedup"]
        print(f"{row['variant']}: {s['mean']:.3f}x" + (f" ± {s['ci95']:.3f}" if s["ci95"] is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
