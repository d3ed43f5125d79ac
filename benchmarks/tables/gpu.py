"""Blocks from the lent GPU's results (``benchmarks/gpu/``: gpu-<device>.json) and the FLOP floor (floor.json)."""

from __future__ import annotations

from typing import Any

from benchmarks.tables.common import load, measured


def gpu_floor() -> str:
    """benchmarks/README.md, section 10: the GAN epoch's floor on the H100 (floor.json over gpu-h100.json's rates)."""
    floor, gpu = load("floor.json"), load("gpu-h100.json")
    gan = next(row for row in floor["families"] if row["family"] == "gan")
    env = gpu["env"]
    epoch_flops = gan["step_flops"] * gan["steps_per_epoch"]
    compute_s = epoch_flops / (env["bf16_matmul_tflops"] * 1e12)
    memory_s = gan["adam_bytes_per_step"] * gan["steps_per_epoch"] / (env["copy_gb_s"] * 1e9)
    return "\n".join([
        f"**The floor.** One training step of the GAN at c = {gan['width']} (batch {gan['batch']}, "
        f"{gan['size']}x{gan['size']}) is {gan['step_flops'] / 1e9:.1f} GFLOP",
        f"(`torch.utils.flop_counter`, `python -m benchmarks.floor`, {measured(floor['provenance'])}), so an epoch of "
        f"{gan['steps_per_epoch']} steps is {epoch_flops / 1e12:.1f} TFLOP:",
        f"{compute_s * 1e3:.0f} ms at the {env['device']}'s measured bf16 matrix rate "
        f"({env['bf16_matmul_tflops']:.0f} TFLOP/s); Adam's update moves",
        f"{gan['adam_bytes_per_step'] / 1e9:.2f} GB a step ({gan['parameters'] / 1e6:.1f}M parameters: weights and "
        f"two moments read and written, gradients read, fp32),",
        f"{memory_s * 1e3:.0f} ms an epoch at its measured copy rate ({env['copy_gb_s'] / 1e3:.1f} TB/s). "
        f"An epoch cannot take much under {(compute_s + memory_s):.2f} s."])


def gpu_memory() -> str:
    """benchmarks/README.md, findings: GPU memory per trial as measured on the H100 (gpu-h100.json's train rows)."""
    gpu = load("gpu-h100.json")
    rows = gpu["train"]["rows"]
    parts = []
    for width in sorted({r["width"] for r in rows}):
        at = [r for r in rows if r["width"] == width]
        parts.append(f"c = {width}: {min(r['peak_mb'] for r in at) / 1024:.1f}-{max(r['peak_mb'] for r in at) / 1024:.1f} GB "
                     f"allocated at peak, up to {max(r['reserved_mb'] for r in at) / 1024:.1f} GB reserved")
    return (f"Measured on the {gpu['env']['device']} ({gpu['train'].get('_measured_at', '?')[:10]}, `python -m "
            "benchmarks.gpu --only train`, batch 16), per trial, every family and variant: " + "; ".join(parts)
            + "; each process holds its CUDA context on top of what torch reserves.")


def _env(env: dict[str, Any], level: str) -> list[str]:
    return [f"torch {env['torch']} (CUDA {env['cuda']}), {env['memory_gib']:.0f} GiB, {env['multiprocessors']} SMs; "
            f"measured ceilings: bf16 matrix product {env['bf16_matmul_tflops']:.0f} TFLOP/s, "
            f"device copy {env['copy_gb_s']:.0f} GB/s.", ""]


def _train(train: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} Training epochs (1,280 pairs, batch 16, 64x64; evaluation = BatchNorm re-estimation + val 320 + train 320)", "",
             "| family | c | variant | train s/epoch | images/s | eval s | peak MB (tensors / cache) | GPU util | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in train["rows"]:
        util = "n/a" if r["gpu_util"] is None else f"{r['gpu_util']:.0%}"
        lines.append(f"| {r['family']} | {r['width']} | {r['variant']} | {r['train_epoch_s']:.3f} | {r['images_per_s']:.0f} | "
                     f"{r['eval_s']:.3f} | {r['peak_mb']:.0f} / {r['reserved_mb']:.0f} | {util} | {r['warmup_s']:.1f} |")
    return [*lines, ""]


def _sampling(sampling: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} Diffusion validation sampling (320 images, bf16)", "", "| c | sampler | seconds |", "|---|---|---|"]
    lines += [f"| {r['width']} | DDIM-{r['steps']} | {r['seconds']:.2f} |" for r in sampling["rows"]]
    return [*lines, ""]


def _trial(trial: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} One GAN trial (c = 64, as a search runs it: evaluation every epoch)", "",
             "| | epochs | wall s | median epoch s | GPU util | process on GPU, MB | best val L1 |", "|---|---|---|---|---|---|---|"]
    for label, r in trial.items():
        if label.startswith("_"):
            continue
        lines.append(f"| {label} | {r['epochs']} | {r['wall_s']:.1f} | {r['median_epoch_s']:.3f} | {r['gpu_util']:.0%} | "
                     f"{r['gpu_reserved_mb']:.0f} | {r['best_val_l1']:.4f} |")
    return [*lines, ""]


def _packing(packing: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} Trials sharing one GPU (GAN c = 64; auto chose {packing['auto_per_gpu']}: {packing['auto_why']})", "",
             "| trials per GPU | trials x epochs | wall s | median trial s | thesis trials per hour | vs one |",
             "|---|---|---|---|---|---|"]
    for r in packing["rows"]:
        lines.append(f"| {r['per_gpu']} | {r['trials']} x {r['epochs']} | {r['wall_s']:.1f} | {r['median_trial_s']:.1f} | "
                     f"{r['thesis_trials_per_hour']:.1f} | {r['vs_one']:.2f}x |")
    return [*lines, ""]


def _search(search: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} Thesis-preset greedy GAN search (python -m search.run --strategy greedy --model gan --preset thesis)", "",
             f"{'finished' if search['finished'] else 'NOT finished'}: {search['trials']} trials ({search['counts']}), "
             f"wall {search['total_s']:.0f} s over {len(search['segments_s'])} segment(s) "
             f"({', '.join(f'{s:.0f} s' for s in search['segments_s'] if s)}), GPU share per trial "
             f"{search['gpus_per_trial']}, best val L1 {search['best_val_l1']}", ""]
    if search.get("trials_table"):
        lines += ["| block | parameter | status | epochs | trial wall s | median epoch s | GPU util | process on GPU, MB | best val L1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['block']} | {r['param']} | {r['status']} | {r['epochs']} | {r['trial_wall_s']:.1f} | "
                  f"{r['median_epoch_s']:.3f} | {r['gpu_util']:.0%} | {r['gpu_reserved_mb']:.0f} | {r['best_val_l1']:.4f} |"
                  for r in search["trials_table"]]
        lines.append("")
    return lines


def _before(before: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} Before: {before['note']}", "", "| family | c | variant | train s/epoch | eval s | GPU util |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['width']} | {r['variant']} | {r['train_epoch_s']:.3f} | {r['eval_s']:.3f} | "
              f"{r['gpu_util']:.0%} |" for r in before["train"]["rows"]]
    lines += ["", "| one GAN trial, c = 64 | epochs | wall s | median epoch s |", "|---|---|---|---|"]
    lines += [f"| {label} | {r['epochs']} | {r['wall_s']:.1f} | {r['median_epoch_s']:.3f} |"
              for label, r in before["trial"].items() if not label.startswith("_")]
    return [*lines, ""]


def _checks(checks: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} Checks", ""]
    for name, r in checks["results"].items():
        detail = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "passed")
        lines.append(f"- {'PASS' if r['passed'] else 'FAIL'} {name}: {detail}")
    return [*lines, ""]


# The sections of a result file, in the order they are printed.
SECTIONS = (("env", _env), ("train", _train), ("sampling", _sampling), ("trial", _trial), ("packing", _packing),
            ("search", _search), ("before", _before), ("checks", _checks))


def report(results: dict[str, Any], level: str = "##") -> str:
    """Every table of a gpu-<device>.json, headed at ``level`` (printed by benchmarks.gpu, rendered into the README)."""
    lines = [] if level != "##" else [f"# GPU benchmark: {results.get('env', {}).get('device', '?')}", ""]
    for key, section in SECTIONS:
        if results.get(key):
            lines += section(results[key], level)
    return "\n".join(lines)


def gpu_tables() -> str:
    """benchmarks/README.md, section 10: every table of gpu-h100.json, with its provenance."""
    gpu = load("gpu-h100.json")
    env = gpu["env"]
    sections = [s for s in gpu.values() if isinstance(s, dict) and s.get("provenance")]
    provs = {(p["commit"], p["command"]): p for p in [s["provenance"] for s in sections] + [gpu.get("provenance")] if p}
    head = ("Measured " + "; ".join(f"{measured(p)}, `{p['command']}`" for p in provs.values())
            + f" (`results/gpu-h100.json`); torch {env['torch']}, CUDA {env['cuda']}.")
    notes = {p["reconstructed"] for p in provs.values() if p.get("reconstructed")}
    return " ".join([head, *sorted(notes)]) + "\n\n" + report(gpu, level="####")


def _alone(search: dict) -> list[dict]:
    """The search's trials that had the GPU to themselves: completed, the only trial of their block."""
    table = search.get("trials_table") or []
    per_block: dict[int, int] = {}
    for row in table:
        per_block[row["block"]] = per_block.get(row["block"], 0) + 1
    return [r for r in table if per_block[r["block"]] == 1 and r["status"] == "completed"]


def gpu_targets() -> str:
    """benchmarks/README.md, section 10: the GPU issue's targets against gpu-h100.json."""
    gpu = load("gpu-h100.json")
    search, trial, sampling = gpu["search"], gpu["trial"], gpu["sampling"]["rows"]
    alone = _alone(search)
    first = [r for r in search["trials_table"] if r["block"] == 0]
    before = gpu.get("before", {}).get("trial", {})
    trial_cell = (", ".join(f"{r['trial_wall_s']:.1f} s (block {r['block']})" for r in alone)
                  + ": search trials alone on the GPU, as a search runs them (evaluation every epoch, checkpoints). "
                  + "Standalone: " + ", ".join(f"{label} {r['wall_s']:.1f} s" for label, r in trial.items()
                                               if not label.startswith("_")))
    if before:
        trial_cell += ". Before CUDA graphs: " + ", ".join(f"{label} {r['wall_s']:.0f} s" for label, r in before.items()
                                                         if not label.startswith("_"))
    ddim25 = [r for r in sampling if r["steps"] == 25]
    rows = [("the GAN at c = 64, 100 epochs, at most 60 s per trial", trial_cell,
             "yes" if alone and max(r["trial_wall_s"] for r in alone) <= 60 else "no"),
            ("DDIM-25 validation of 320 images in at most 2 s",
             ", ".join(f"{r['seconds']:.2f} s at c = {r['width']}" for r in ddim25),
             "yes" if ddim25 and max(r["seconds"] for r in ddim25) <= 2 else "no")]
    blocks = len({r["block"] for r in search["trials_table"]})
    rows.append(("the thesis-preset greedy GAN search in at most 15 minutes",
                 ("finished" if search["finished"] else "**not run to the end**")
                 + f": {blocks} blocks ({search['trials']} trials) in {search['total_s'] / 60:.1f} minutes over "
                 f"{len(search['segments_s'])} segments, on an earlier study file",
                 ("yes" if search["total_s"] <= 900 else "no") if search["finished"] else "not shown"))
    if "packing" in gpu:
        best = max(gpu["packing"]["rows"], key=lambda r: r["vs_one"])
        rows.append(("trials per hour with `--gpus-per-trial auto` at least 3x one trial per GPU",
                     f"{best['vs_one']:.2f}x with {best['per_gpu']} trials per GPU", "yes" if best["vs_one"] >= 3 else "no"))
    elif first and alone:
        shared = sum(r["trial_wall_s"] for r in first) / len(first)
        one = sum(r["trial_wall_s"] for r in alone) / len(alone)
        rows.append(("trials per hour with `--gpus-per-trial auto` at least 3x one trial per GPU",
                     f"**the packing section was not measured**. In the search, {len(first)} graphed trials sharing the "
                     f"GPU (block 0) took {shared:.0f} s each against {one:.0f} s alone: {len(first) * one / shared:.1f}x "
                     "the throughput of one after another", "no"))
    return "\n".join(["| target (the issue's, on an H100) | measured | met |", "| --- | --- | --- |",
                      *(f"| {a} | {b} | {c} |" for a, b, c in rows)])


def gpu_summary() -> str:
    """docs/clusters.md: what the CUDA path measured, from gpu-h100.json."""
    gpu = load("gpu-h100.json")
    rows = {(r["family"], r["width"], r["variant"]): r for r in gpu["train"]["rows"]}
    eager, graphed = rows[("gan", 64, "bf16")], rows[("gan", 64, "bf16+cl+graphs")]
    alone = _alone(gpu["search"])
    trial = (", and a whole 100-epoch trial as a search runs it (evaluation every epoch, checkpoints) took "
             + " and ".join(f"{r['trial_wall_s']:.0f} s" for r in alone)) if alone else ""
    return (f"Measured on one {gpu['env']['device']} (`python -m benchmarks.gpu`, `benchmarks/README.md` section 10, "
            f"{measured(gpu['provenance'])}): an epoch of the GAN at c = 64 (1,280 pairs, batch 16) went from "
            f"{eager['train_epoch_s']:.2f} s (eager bf16) to {graphed['train_epoch_s']:.2f} s (graphed, channels-last){trial}; "
            "the report's took 100 minutes on an RTX 3070.")


def gpu_check() -> str:
    """README.md and benchmarks/README.md section 10: the short GPU check (``python -m benchmarks.gpu --check``,
    gpu-check-<device>.json), or, until it has run, when the GPU numbers were last measured."""
    from benchmarks.tables.common import RESULTS

    files = sorted(RESULTS.glob("gpu-check-*.json"))
    last = load("gpu-h100.json")
    if not files:
        return ("`python -m benchmarks.gpu --check` (a thesis GAN epoch, DDIM-25 over val, `--gpus-per-trial auto`'s "
                "probe with NVML, a 2-block greedy thesis search with a 1-seed final stage; at most 8 minutes) has not "
                "yet run on a GPU: no GPU was lent to this project since it was written. Every GPU number in these "
                f"docs was last measured on {measured(last['provenance'])}, on the code of that commit; the GPU path "
                "changed since (the data splits, NVML's fallback) is not measured on a GPU.")
    parts = []
    for path in files:
        check = load(path.name)
        epoch, ddim, probe, search = (check.get(k) or {} for k in ("epoch", "ddim25", "probe", "search"))
        parts.append(
            f"On one {check['provenance']['machine'].get('gpu')} ({measured(check['provenance'])}, "
            f"{check['total_s'] / 60:.1f} minutes of its 8): a thesis GAN epoch (c = 64, graphed) "
            f"{epoch.get('median_epoch_s', float('nan')):.2f} s; DDIM-25 over {ddim.get('images')} val images "
            f"{ddim.get('seconds', float('nan')):.1f} s; the auto probe "
            + (f"read NVML ({probe['util']:.0%} busy) and chose {probe['per_gpu']} trials per GPU"
               if probe.get("nvml_read") else f"could not read NVML ({probe.get('nvml_error')})")
            + f"; a 2-block greedy thesis search with a 1-seed final stage took {search.get('wall_s', 0) / 60:.1f} "
            f"minutes ({search.get('trials')} trials" + (f", final test L1 {search['final_test_l1']:.4f}"
                                                         if search.get("final_test_l1") is not None else "") + ").")
    return "\n\n".join(parts)
