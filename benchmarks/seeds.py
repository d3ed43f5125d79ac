"""How noisy is one training run? Each family's study default trained with 5 seeds.

    python -m benchmarks.seeds                    # about 25 minutes on 2 cores
    python -m benchmarks.seeds --seeds 3 --families autoencoder

The same configuration, the same data, the same epochs (the ``cpu`` preset's size, as
``benchmarks.learning``); only the training seed differs (weights, batch order,
augmentation). The spread of best val L1 across seeds is the noise every single-run
comparison in a search carries: greedy's decisions (``Family.noise``, ``search/strategies/greedy.py``) use
it as their margin. No Ray: the shared training loop is called directly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.learning import train_default
from benchmarks.provenance import provenance, write_family_rows
from search.runner.options import PRESETS
from trainables.families import FAMILIES
from trainables.data import resolve_data

# The study defaults (where greedy starts), and the GAN at the L1 weight greedy adopts first
# (at the report's weight of 1 its runs are noisier still: see the table).
VARIANTS = {"autoencoder": [{}, {"p_translation": 0.0}],
            # Every L1 weight greedy's block 0 visits (1 is the study default), then what it holds after block 0.
            "gan": [{}, {"l1_weight": 10.0}, {"l1_weight": 100.0}, {"l1_weight": 100.0, "p_translation": 0.0}],
            "diffusion": [{"p_translation": 0.0}]}  # the study default since 2026-11-24: x0 with l1+ce


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per configuration, at least 2 (default 5)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "seeds.json"))
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: a spread over seeds needs at least 2 runs")
    prov = provenance("benchmarks.seeds", sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    data = resolve_data(None)
    epochs = preset.epochs_for(len(data.train_stems))
    rows = []
    print(f"{'family':12} {'changed':16} {'mean':>7} {'sd':>7} {'sd/mean':>7} {'min':>7} {'max':>7}  per seed", flush=True)
    for family in args.families.split(","):
        for change in VARIANTS[family]:
            values, seconds = [], []
            for seed in range(args.seeds):
                reported, took = train_default(family, change, data, preset, epochs, args.threads, seed=seed)
                seconds.append(took)
                values.append(min(r["val_l1"] for r in reported))
            mean, sd = statistics.fmean(values), statistics.stdev(values)
            row = {"family": family, "changed": change, "epochs": epochs, "seeds": list(range(args.seeds)),
                   "best_val_l1": values, "mean": mean, "sd": sd, "cv": sd / mean, "min": min(values),
                   "max": max(values), "seconds_median": statistics.median(seconds), "provenance": prov}
            rows.append(row)
            changed = ",".join(f"{k}={v}" for k, v in change.items()) or "defaults"
            print(f"{family:12} {changed:16} {mean:7.4f} {sd:7.4f} {sd / mean:7.1%} {min(values):7.4f} {max(values):7.4f}  "
                  + " ".join(f"{v:.4f}" for v in values), flush=True)
    write_family_rows(args.out, {"provenance": prov, "preset": args.preset, "epochs": epochs}, rows, list(FAMILIES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
