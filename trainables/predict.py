"""Regenerate predictions from a trial's checkpoint (for galleries beyond the stored ones).

    python -m trainables.predict runs/greedy-gan/trials/<key>/best.pt --model gan --data DIR --out preds.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from trainables import family_parts
from trainables.config import parse_config
from trainables.loop import EVAL_BATCH, Family, as_float


def load_family(checkpoint: str | Path, model: str, device: torch.device) -> Family:
    """The family a checkpoint (best.pt or latest.pt) was saved from, restored in eval mode on ``device``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    _, family_cls, config_cls = family_parts(model)
    settings, hp = parse_config(state["config"], config_cls)
    family = family_cls(hp, settings, device)
    family.load_state_dict(state["family"], nets_only=True)
    family.train(False)
    return family


def predict_from_checkpoint(checkpoint: str | Path, model: str, images: np.ndarray, *, device: str | None = None) -> np.ndarray:
    """uint8 maps (N, 3, S, S) predicted for uint8 images (N, 3, S, S) by the checkpointed model."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    family = load_family(checkpoint, model, target)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            batch = as_float(torch.from_numpy(np.ascontiguousarray(images[start : start + EVAL_BATCH])).to(target))
            pred = family.predict(batch).float().clamp(-1, 1)
            out.append(((pred + 1) * 127.5).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    from trainables.data import DataError, resolve_data

    parser = argparse.ArgumentParser(prog="python -m trainables.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=None, help="dataset folder (default: the synthetic set)")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--out", required=True, help="output .npz with predictions and stems")
    args = parser.parse_args(argv)
    try:
        if not Path(args.checkpoint).is_file():
            raise DataError(f"checkpoint {args.checkpoint} does not exist")
        data = resolve_data(args.data)
        images = data.val_images if args.split == "val" else data.train_images
        stems = data.val_stems if args.split == "val" else data.train_stems
        preds = predict_from_checkpoint(args.checkpoint, args.model, images)
        np.savez_compressed(args.out, predictions=preds, stems=np.array(stems))
    except (DataError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(preds)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
