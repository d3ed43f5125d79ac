"""How long the command takes to answer before any search starts: ``--help``, and a refused option.

    python -m benchmarks.startup [--repeats 9]

Each case is the whole command as a user types it (``python -m search.run ...``, a fresh interpreter each time),
timed over ``--repeats`` runs; the median and the slowest go to ``benchmarks/results/startup.json`` with the
provenance, rendered into ``benchmarks/README.md``. The target is at most one second each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "--help": ["--help"],
    "a refused option": ["--strategy", "greedy", "--model", "gan", "--epochs", "0"],
    "a refused study file": ["--strategy", "pbt", "--model", "autoencoder"],
}
TARGET_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = parser.parse_args(argv)
    rows = []
    for name, case in CASES.items():
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "search.run", *case], cwd=ROOT, capture_output=True)
            seconds.append(time.perf_counter() - start)
        rows.append({"case": name, "argv": case, "median_s": statistics.median(seconds), "max_s": max(seconds),
                     "repeats": args.repeats})
        print(f"{name:22} median {rows[-1]['median_s']:.3f} s, slowest {rows[-1]['max_s']:.3f} s", flush=True)
    result = {"provenance": provenance("benchmarks.startup", sys.argv[1:] if argv is None else argv),
              "target_s": TARGET_S, "cases": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(r["median_s"] <= TARGET_S for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
