"""The GPU benchmark's checks: the CUDA paths computed right, not only fast (a failed check makes it exit 1)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu import VARIANTS, bench_data, thesis_config
from trainables.families import FAMILIES


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def section_checks(args) -> dict[str, Any]:
    """The CUDA paths computed right, not only fast. Each returns (passed, detail)."""
    from trainables.families import find_family
    from trainables.config import parse_config
    from trainables.evaluation import as_float
    from trainables.loop import run_trial

    data = bench_data()
    results = {}
    image = as_float(torch.from_numpy(data.val_images[:16].copy()).cuda())

    def outputs(family: str, **settings: Any) -> torch.Tensor:
        family_cls = find_family(family)
        config_cls = family_cls.config_cls
        settings_, hp = parse_config(thesis_config(family, 64, **settings), config_cls)
        torch.manual_seed(0)
        model = family_cls.build(hp, settings_, torch.device("cuda"))
        model.train(False)
        with torch.no_grad(), model.precision.autocast():
            return model.predict(model.fast.input(image)).float()

    for family in FAMILIES:
        reference = outputs(family, precision="fp32")
        for variant, settings in VARIANTS.items():
            if variant == "fp32" or (variant.endswith("compile") and not args.compile):
                continue
            error = _relative(outputs(family, **settings), reference)
            results[f"{family} {variant} vs fp32"] = {"relative_error": error, "passed": math.isfinite(error) and error < 3e-2}

    # Training steps replayed as CUDA graphs against eager ones, from the same start (every family).
    for family in FAMILIES:
        family_cls = find_family(family)
        losses, graphed = {}, None
        for graphs in ("off", "on"):
            rows = []
            run_trial(thesis_config(family, 64, epochs=2, cuda_graphs=graphs), data, family_cls, report=rows.append)
            losses[graphs] = [rows[-1]["train_loss"], rows[-1]["val_l1"]]
            if graphs == "on":
                graphed = not any(r.get("notice") for r in rows)
        gap = max(abs(a - b) / abs(a) for a, b in zip(losses["off"], losses["on"]))
        results[f"{family} 2 epochs with CUDA graphs vs eager"] = {
            "train_loss_and_val_l1": [losses["off"], losses["on"]], "relative_gap": gap, "captured": graphed,
            "passed": bool(graphed) and gap < 0.05}

    # A resumed trial (optimizers, loss scaler and CUDA RNG from its checkpoint) against an uninterrupted one:
    # fp16 (eager, with the loss scaler) and bf16 with CUDA graphs.
    for precision in ("fp16", "bf16"):
        results.update(_resume_check(data, precision))
    for name, result in results.items():
        print(f"check {'PASS' if result['passed'] else 'FAIL'}: {name}: "
              + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "passed"),
              flush=True)
    return {"results": results, "passed": all(r["passed"] for r in results.values())}


def _resume_check(data, precision: str) -> dict[str, Any]:
    from trainables.families import find_family
    from trainables.checkpoints import CHECKPOINT_FORMAT
    from trainables.loop import run_trial

    family_cls = find_family("autoencoder")

    histories = {}
    has_state = False
    for label in ("uninterrupted", "resumed"):
        with tempfile.TemporaryDirectory() as root:
            config = thesis_config("autoencoder", 64, epochs=3, precision=precision, checkpoint_root=root)
            if label == "resumed":
                run_trial({**config, "epochs": 2}, data, family_cls, report=lambda row: None)
                state = torch.load(next(Path(root).glob("*/latest.pt")), map_location="cpu", weights_only=True)
                assert state["format"] == CHECKPOINT_FORMAT
                scaler = state["family"].get("scaler.unet", {})
                has_state = state.get("cuda_rng") is not None and (precision != "fp16" or scaler.get("scale") is not None)
            rows = []
            run_trial(config, data, family_cls, report=rows.append)
            histories[label] = [r for r in rows if not r.get("replayed")]
    a, b = histories["uninterrupted"][-1], histories["resumed"][-1]
    gap = abs(a["val_l1"] - b["val_l1"]) / a["val_l1"]
    what = "loss scaler and CUDA RNG" if precision == "fp16" else "CUDA RNG (graphed steps)"
    return {f"{precision} trial resumed at epoch 2 of 3 vs uninterrupted": {
        "val_l1": [a["val_l1"], b["val_l1"]], "relative_gap": gap, f"checkpoint_has_{what.replace(' ', '_')}": has_state,
        # cuDNN's backward kernels are not bitwise deterministic, so the runs differ by rounding, not by a restart
        "passed": has_state and gap < 0.05}}
