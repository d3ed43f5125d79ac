"""``python -m benchmarks.gpu``: the command (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import benchmarks.gpu
from benchmarks.gpu import RESULTS, SECTIONS, VARIANTS, device_name
from benchmarks.gpu.checks import section_checks
from benchmarks.gpu.cluster import section_packing, section_search
from benchmarks.gpu.training import section_env, section_sampling, section_train, section_trial
from benchmarks.provenance import provenance
from benchmarks.tables.gpu import report
from trainables.families import FAMILIES

SECTION_FUNCTIONS = {"env": section_env, "checks": section_checks, "train": section_train,
                     "sampling": section_sampling, "trial": section_trial, "packing": section_packing,
                     "search": section_search}


def _fold(results: dict[str, Any], section: str, measured: Any) -> None:
    """Put a section's results in; a train run of some cases replaces those cases only."""
    if section == "train" and "train" in results:
        ran = {(r["family"], r["width"], r["variant"]) for r in measured["rows"]}
        measured = {**measured, "rows": [r for r in results["train"]["rows"]
                                         if (r["family"], r["width"], r["variant"]) not in ran] + measured["rows"]}
    results[section] = measured


def _write(results: dict[str, Any], out: Path, device: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-{device}.json").write_text(json.dumps(results, indent=1, default=str))


def _check(out: Path, argv: list[str] | None) -> int:
    from benchmarks.gpu.check import run_check

    result = run_check(device_name(), provenance("benchmarks.gpu", sys.argv[1:] if argv is None else argv), out)
    print(f"check: {result['total_s']:.0f} s of its {result['budget_s']} s budget")
    return 0 if result["within_budget"] else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=benchmarks.gpu.__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(s for s in SECTIONS if s != "search"),
                        help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu-<device>.json")
    parser.add_argument("--epochs", type=int, default=3, help="train: timed epochs per case (after one warm-up)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"train: some of {', '.join(VARIANTS)}")
    parser.add_argument("--families", default=",".join(FAMILIES), help="train: some of the families")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="train/checks: skip torch.compile")
    parser.add_argument("--trial-epochs", type=int, default=100)
    parser.add_argument("--packing-trials", type=int, default=8)
    parser.add_argument("--packing-epochs", type=int, default=10)
    parser.add_argument("--search-runs", default=os.path.join(tempfile.gettempdir(), "gpu-bench-runs"))
    parser.add_argument("--search-limit", type=float, default=3600.0, help="search: seconds before it is stopped (resumable)")
    parser.add_argument("--merge", default=None, help="a gpu-<device>.json whose sections to fold into --out's")
    parser.add_argument("--render", default=None, help="a gpu-<device>.json: print its tables")
    parser.add_argument("--check", action="store_true",
                        help="the short check (at most 8 minutes on one H100 or H200): a thesis GAN epoch, DDIM-25 "
                             "over val, the auto probe with NVML, a 2-block greedy thesis search with a 1-seed final "
                             "stage (benchmarks/gpu/check.py); writes gpu-check-<device>.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        print(report(json.loads(Path(args.render).read_text())))
        return 0
    if args.merge:
        other = json.loads(Path(args.merge).read_text())
        device = other["_device"]
        path = out / f"gpu-{device}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        for section, measured in other.items():
            _fold(results, section, measured)
        _write(results, out, device)
        print(report(results))
        return 0
    if set(args.variants.split(",")) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        print("error: benchmarks.gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
              "the CPU figures are in benchmarks.run", file=sys.stderr)
        return 2
    if args.check:
        return _check(out, argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"error: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    device = device_name()
    path = out / f"gpu-{device}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["_device"] = device
    for section in SECTIONS:
        if section not in sections:
            continue
        start = time.perf_counter()
        _fold(results, section, SECTION_FUNCTIONS[section](args))
        results[section]["_measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results[section]["provenance"] = provenance("benchmarks.gpu", sys.argv[1:] if argv is None else argv)
        results[section]["_section_s"] = time.perf_counter() - start
        _write(results, out, device)  # after each section: a run cut short keeps what it measured
        print(f"[{section}: {time.perf_counter() - start:.0f} s]", flush=True)
    print(report(results))
    failed = "checks" in sections and not results["checks"]["passed"]
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())
