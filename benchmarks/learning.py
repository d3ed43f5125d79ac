"""Do the three families really learn the maps? Train each once at the `cpu` preset's size.

    python -m benchmarks.learning

Prints each family's best val L1 on the default synthetic dataset, overall and per channel
(red: remembered, green: falsely remembered), next to both baselines (all-black map, mean
training map) on the same split and channel. No Ray here: the shared training loop is
called directly, so the numbers are the models', not the scheduler's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.provenance import provenance, write_family_rows
from search.runner.options import PRESETS
from search.study_file import load_space
from trainables.families import FAMILIES, find_family
from trainables.data import MAP_CHANNELS, resolve_data
from trainables.loop import run_trial

# Each family at its study file's defaults (where greedy starts), with the `cpu` preset's
# widths and epochs: what a user's first trial trains. The GAN also runs at pix2pix's L1 weight.
VARIANTS = {"autoencoder": [{}], "gan": [{}, {"l1_weight": 100.0}],
            "diffusion": [{}, {"denoise_loss": "mse"}]}


def train_default(family: str, change: dict, data, preset, epochs: int, threads: int,
                  seed: int = 0) -> tuple[list[dict], float]:
    """Train ``family``'s study defaults (with ``change``) at the preset's size: (every reported row, seconds)."""
    space = load_space(family)
    family_cls = find_family(family)
    config = {**space.default_config(), **change, "epochs": epochs, "seed": seed,
              "width_divisor": preset.width_divisor, "train_eval_size": preset.train_eval_size, "threads": threads}
    reported: list[dict] = []
    start = time.perf_counter()
    run_trial(config, data, family_cls, report=reported.append)
    return reported, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "learning.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="some of the families; the others' rows in --out are kept")
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.learning", sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    data = resolve_data(None)
    base = data.baselines()
    epochs = preset.epochs_for(len(data.train_stems))
    rows = []
    channels = list(MAP_CHANNELS)
    print(f"{'family':12} {'changed':18} {'best val L1':>11} {'x black':>8} {'x mean':>7} "
          + " ".join(f"{c[:10]:>10} {'x black':>7}" for c in channels) + f" {'rho':>5} {'seconds':>7}")
    families = [f for f in FAMILIES if f in args.families.split(",")]
    for family in families:
        for change in VARIANTS[family]:
            reported, seconds = train_default(family, change, data, preset, epochs, args.threads)
            best = min(reported, key=lambda r: r["val_l1"])
            row = {"family": family, "changed": change, "epochs": epochs, "width_divisor": preset.width_divisor,
                   "best_val_l1": best["val_l1"], "best_epoch": best["epoch"], "val_spearman": best["val_spearman"],
                   "seconds": seconds, "x_black": best["val_l1"] / base["black_l1"],
                   "x_mean_map": best["val_l1"] / base["mean_map_l1"], "provenance": prov}
            for c in channels:
                row[f"val_l1_{c}"] = best[f"val_l1_{c}"]
                row[f"x_black_{c}"] = best[f"val_l1_{c}"] / base[f"black_l1_{c}"]
            rows.append(row)
            changed = ", ".join(f"{k}={v}" for k, v in change.items()) or "defaults"
            print(f"{family:12} {changed:18} {row['best_val_l1']:11.4f} {row['x_black']:8.2f} {row['x_mean_map']:7.2f} "
                  + " ".join(f"{row[f'val_l1_{c}']:10.4f} {row[f'x_black_{c}']:7.2f}" for c in channels)
                  + f" {row['val_spearman']:5.2f} {seconds:7.0f}", flush=True)
    print(f"baselines: all-black map {base['black_l1']:.4f} (remembered {base['black_l1_remembered']:.4f}, "
          f"falsely remembered {base['black_l1_falsely_remembered']:.4f}); mean training map {base['mean_map_l1']:.4f}")
    write_family_rows(args.out, {"provenance": prov, "preset": args.preset, "baselines": base}, rows, list(FAMILIES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
