"""The speed levers on by default, judged by what a user publishes: the main job's selected configuration trained
with the lever and without it, over 3 seeds, each run's test L1 measured as the final stage measures it.

    python -m benchmarks.lever_quality            # the GAN's channels-last: 6 runs, ~10 min on 2 cores
    python -m benchmarks.lever_quality --quick    # 1 seed, 2 epochs: checks the script

Section 13 (``benchmarks.levers``) measures each lever's speed; a lever stays on by default only where it is
faster and the selected configuration's test L1 with it stays inside the paired interval (issue 42). The levers
checked here are the ones the code turns on by default on the CPU: channels-last for every family whose
``cpu_channels_last`` says so (``--channels-last auto``). The configuration is the one the main job recommended
(``results/cpu_search.json``, the family's ``<family>-synthetic`` case; the study defaults where that case is
missing), at the ``cpu`` preset's size on the synthetic default (1,280 training, 320 val and 320 test pairs),
trained as the final stage trains it: the preset's epochs, the epoch chosen on val, then the test split read
once. A seed's two runs (lever on, lever off) train at the same time, one thread each, as the main job's two
trials at once do; the seeds are the final stage's (1000, 1001, 1002).

Recorded in ``results/lever_quality.json``: per lever, each seed's test L1, selected val L1 and mean seconds of an
epoch (the first left out) with and without it; the paired difference of test L1 (on minus off, mean and 95%
interval over seeds) and the speed-up (off's epoch over on's, paired by seed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance
from search.runner.final import interval
from trainables.storage import write_json_atomic

OUT = Path(__file__).parent / "results" / "lever_quality.json"
CPU_SEARCH = Path(__file__).parent / "results" / "cpu_search.json"
SEEDS = (1000, 1001, 1002)  # the final stage's


def default_on_levers() -> list[dict[str, Any]]:
    """(family, setting, on, off) of each lever the code turns on by default on the CPU."""
    from trainables.families import FAMILIES, find_family

    return [{"family": name, "lever": "channels-last", "setting": "channels_last", "on": "on", "off": "off"}
            for name in FAMILIES.names() if getattr(find_family(name), "cpu_channels_last", False)]


def selected_configuration(family: str) -> tuple[dict[str, Any], str]:
    """The hyperparameters the main job recommended for ``family`` (its cpu_search case), and where they came from."""
    from search.study_file import load_space
    from trainables.config import parse_config
    from trainables.families import find_family

    case = f"{family}-synthetic"
    cases = json.loads(CPU_SEARCH.read_text()) if CPU_SEARCH.is_file() else {}
    best = ((cases.get(case) or {}).get("summary") or {}).get("best_config")
    if not best:
        return load_space(family).default_config(), "the study file's defaults"
    _, hp = parse_config(best, find_family(family).config_cls)  # its hyperparameters, without the run settings
    commit = (cases[case].get("provenance") or {}).get("commit", "unknown")[:7]
    return (asdict(hp), f"the best configuration of `benchmarks.cpu_search --case {case}` (commit {commit})")


def _run(job: tuple[str, dict[str, Any], str, Any, int, int]) -> dict[str, Any]:
    """One run: the configuration with the lever's setting, trained and measured on test; its last row and epochs."""
    import torch

    from search.runner.options import PRESETS
    from trainables.data import load_dataset
    from trainables.families import find_family
    from trainables.loop import run_trial
    from trainables.synthetic import ensure_synthetic

    family, hp, setting, value, seed, epochs = job
    torch.set_num_threads(1)
    preset = PRESETS["cpu"]
    data = load_dataset(ensure_synthetic())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as root:
        config = {**hp, "epochs": epochs or preset.epochs_for(len(data.train_stems)), "seed": seed, "threads": 1,
                  "width_divisor": preset.width_divisor, "train_eval_size": preset.train_eval_size,
                  "checkpoint_root": root, "evaluate_test": True, setting: value}
        run_trial(config, data, find_family(family), report=rows.append)
    last = rows[-1]
    timed = [r["epoch_seconds"] for r in rows if r["epoch"] > 1] or [rows[0]["epoch_seconds"]]
    return {"seed": seed, "value": value, "test_l1": last.get("test_l1"), "selected_val_l1": last.get("selected_val_l1"),
            "best_epoch": last.get("best_epoch"), "epochs": last["epoch"], "epoch_seconds": statistics.fmean(timed)}


def measure(lever: dict[str, Any], seeds: tuple[int, ...], epochs: int) -> dict[str, Any]:
    hp, source = selected_configuration(lever["family"])
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        jobs = [(lever["family"], hp, lever["setting"], lever[side], seed, epochs) for side in ("on", "off")]
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            on, off = pool.map(_run, jobs)
        runs.append({"seed": seed, "on": on, "off": off})
        print(f"{lever['family']} {lever['lever']} seed {seed}: test L1 {on['test_l1']:.4f} on, {off['test_l1']:.4f} off; "
              f"epoch {on['epoch_seconds']:.1f} s on, {off['epoch_seconds']:.1f} s off "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return {**lever, "configuration": hp, "configuration_source": source, "runs": runs,
            "test_l1_on": interval([r["on"]["test_l1"] for r in runs]),
            "test_l1_off": interval([r["off"]["test_l1"] for r in runs]),
            "difference": interval([r["on"]["test_l1"] - r["off"]["test_l1"] for r in runs]),
            "speedup": interval([r["off"]["epoch_seconds"] / r["on"]["epoch_seconds"] for r in runs])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lever_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed of 2 epochs (checks the script)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    seeds, epochs = (SEEDS[:1], 2) if args.quick else (SEEDS, 0)
    levers = [measure(lever, seeds, epochs) for lever in default_on_levers()]
    write_json_atomic(Path(args.out), {"provenance": provenance("benchmarks.lever_quality",
                                                                sys.argv[1:] if argv is None else argv),
                                       "levers": levers})
    for lever in levers:
        d = lever["difference"]
        print(f"{lever['family']} {lever['lever']}: test L1 on minus off {d['mean']:+.4f}"
              + (f" ± {d['ci95']:.4f}" if d["ci95"] is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
