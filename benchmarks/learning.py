"""Do the three families really learn? Train each once with a CPU-sized config.

    python -m benchmarks.learning

Prints each family's best val L1 on the default synthetic dataset next to both baselines
(all-black map, mean training map). No Ray here: the shared training loop is called
directly, so the numbers are the models', not the scheduler's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trainables import family_parts
from trainables.data import resolve_data
from trainables.loop import run_trial

# CPU-sized configs: the report's defaults where they learn in a few epochs, with the
# changes a search finds quickly (the GAN's L1 weight of pix2pix; x0 targets for diffusion).
CONFIGS = {
    "autoencoder": {"epochs": 10, "width_divisor": 4},
    "gan": {"epochs": 8, "width_divisor": 8, "l1_weight": 100.0},
    "diffusion": {"epochs": 6, "width_divisor": 4, "prediction": "x0", "steps": 1000, "sampling_steps": 10,
                  "final_sampling_steps": 50},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "learning.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = resolve_data(None)
    base = data.baselines()
    rows = []
    print(f"{'family':12} {'epochs':>6} {'best val L1':>11} {'vs mean map':>11} {'vs black':>9} {'rho':>6} {'seconds':>8}")
    for family, config in CONFIGS.items():
        _, family_cls, config_cls = family_parts(family)
        reported: list[dict] = []
        start = time.perf_counter()
        run_trial({**config, "threads": args.threads}, data, family_cls, config_cls, report=reported.append)
        seconds = time.perf_counter() - start
        best = min(r["best_val_l1"] for r in reported)
        rho = reported[-1]["val_spearman"]
        row = {"family": family, "config": config, "best_val_l1": best, "val_spearman": rho, "seconds": seconds,
               "vs_mean_map": 1 - best / base["mean_map_l1"], "vs_black": 1 - best / base["black_l1"]}
        rows.append(row)
        print(f"{family:12} {config['epochs']:6d} {best:11.4f} {row['vs_mean_map']:+11.0%} {row['vs_black']:+9.0%} "
              f"{rho:6.2f} {seconds:8.0f}")
    print(f"baselines: all-black map {base['black_l1']:.4f}, mean training map {base['mean_map_l1']:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"baselines": base, "families": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
