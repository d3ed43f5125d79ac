"""The floor under a GPU training epoch: the arithmetic and memory traffic one step cannot avoid.

    python -m benchmarks.floor      # seconds on a CPU; no GPU needed

Counts, with ``torch.utils.flop_counter``, the floating-point operations of one training step of
each family at the report's width 64 (batch 16, 64x64, the study's defaults), and the bytes
Adam's update moves (fp32 weights, gradients and two moments: weights and moments read and
written, gradients read). ``results/floor.json`` keeps them with their provenance; divided by a
GPU's measured matrix rate and copy bandwidth (``benchmarks.gpu``'s ``env`` section) they give
the shortest an epoch of 80 steps (1,280 pairs) could take.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.provenance import provenance
from search.study_file import load_space
from trainables.config import RunSettings
from trainables.families import FAMILIES, find_family
from trainables.family import Family

BATCH, SIZE, WIDTH, STEPS_PER_EPOCH = 16, 64, 64, 1280 // 16
ADAM_BYTES_PER_PARAM = 4 * (2 + 1 + 2 + 2)  # fp32: weights r/w, gradients r, first and second moments r/w


def study_default_model(family: str, width: int) -> tuple[Family, dict]:
    """``family`` built on the CPU from its study's defaults with every network at ``width`` (undivided),
    in training mode, and the hyperparameters it was built from."""
    family_cls = find_family(family)
    fields = set(family_cls.config_cls.__dataclass_fields__)
    chosen = {k: v for k, v in load_space(family).default_config().items() if k in fields}
    chosen.update({k: width for k in family_cls.width_params})
    model = family_cls(family_cls.config_cls(**chosen), RunSettings(epochs=1, width_divisor=1), torch.device("cpu"))
    model.train(True)
    return model, chosen


def count(family: str) -> dict:
    """FLOPs of one training step and parameters of ``family``'s study defaults at width 64."""
    torch.manual_seed(0)
    model, chosen = study_default_model(family, WIDTH)
    image = torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1
    vms = torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1
    valid = torch.ones(BATCH, 1, SIZE, SIZE)
    with FlopCounterMode(display=False) as counter:
        model.train_step(image, vms, valid)
    params = sum(p.numel() for module in model.modules.values() for p in module.parameters())
    return {"family": family, "width": WIDTH, "batch": BATCH, "size": SIZE, "config": chosen,
            "step_flops": int(counter.get_total_flops()), "parameters": int(params),
            "adam_bytes_per_step": int(params * ADAM_BYTES_PER_PARAM), "steps_per_epoch": STEPS_PER_EPOCH}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "floor.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [count(family) for family in FAMILIES]
    for row in rows:
        print(f"{row['family']:12} {row['step_flops'] / 1e9:8.1f} GFLOP a step, {row['parameters'] / 1e6:6.1f}M parameters, "
              f"Adam {row['adam_bytes_per_step'] / 1e9:.2f} GB a step", flush=True)
    Path(args.out).write_text(json.dumps({"provenance": provenance("benchmarks.floor", argv), "families": rows},
                                         indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
