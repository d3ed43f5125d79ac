"""Whole greedy searches at the `cpu` preset, with their final stage: what a user's first search finds.

    python -m benchmarks.cpu_search --case autoencoder-independent   # ~10-20 min on 2 cores
    python -m benchmarks.cpu_search --case autoencoder-synthetic
    python -m benchmarks.cpu_search --case gan-synthetic             # ~40 min
    python -m benchmarks.cpu_search --case diffusion-synthetic       # ~40 min, final stage top 1

Each case runs ``python -m search.run --strategy greedy --preset cpu`` as a user would, on the
synthetic default or on a set whose maps are drawn independently of their images (300 train,
100 val and 100 test pairs, a fifth of the blocks lit: nothing can be learned, so the all-black
map is the answer). It records, in ``results/cpu_search.json`` under the case's name, the
search's summary (best val L1, both baselines, whether the best beats them, the final stage's
test L1 over seeds), the last lines it printed, where its wall time went (benchmarks/profile.py),
and the commit, command and machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.profile import profile
from benchmarks.provenance import ROOT, provenance
from trainables.storage import write_json_atomic
from trainables.synthetic import SyntheticSpec, cache_root, ensure_synthetic

INDEPENDENT = SyntheticSpec(n_train=300, n_val=100, n_test=100, maps="independent", lit_share=0.2)
# name: (family, data set or None for the synthetic default, extra arguments of search.run)
CASES = {
    "autoencoder-independent": ("autoencoder", INDEPENDENT, ()),
    "autoencoder-synthetic": ("autoencoder", None, ()),
    "gan-synthetic": ("gan", None, ()),
    # The final stage for the top configuration only: diffusion's sampling makes each of its
    # runs ~100 s on 2 cores, and the top 1 is what last round measured (0.51x the all-black map).
    "diffusion-synthetic": ("diffusion", None, ("--final-top-k", "1")),
}
KEPT = ("study", "family", "trials", "counts", "best_val_l1", "best_channel_l1", "best_config", "baselines",
        "beats_baseline", "baseline_margin", "final", "wall_seconds")


def portable(text: str) -> str:
    """A recorded line without this machine's folders: the checkout and the dataset cache."""
    return text.replace(str(cache_root()), "~/.cache/memsearch").replace(f"{ROOT}/", "")


def run_case(name: str, runs_dir: Path) -> dict:
    """Run one case's search to its end; its summary, last printed lines and wall time."""
    model, spec, extra = CASES[name]
    study = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "-m", "search.run", "--strategy", "greedy", "--model", model, "--preset", "cpu",
               "--runs-dir", str(runs_dir), "--study", study, *extra]
    if spec is not None:
        command += ["--data", str(ensure_synthetic(spec))]
    started = datetime.now(timezone.utc)
    lines: list[str] = []
    final_at = None  # when the command said it starts the final stage
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
            if final_at is None and line.startswith("final:"):
                final_at = datetime.now(timezone.utc)
    if process.returncode != 0:
        raise SystemExit(f"error: the search of case {name} failed (exit {process.returncode}); see its output above.")
    ended = datetime.now(timezone.utc)
    summary = json.loads((runs_dir / study / "summary.json").read_text())
    return {"model": model, "data": "synthetic default" if spec is None else spec.name,
            "search_command": portable(" ".join(["python", "-m", "search.run", *command[3:]])),
            "wall_seconds": round((ended - started).total_seconds(), 1), "first_lines": [portable(line) for line in lines[:16]],
            "last_lines": [portable(line) for line in lines[-8:]], "lines": len(lines),
            "summary": {key: summary.get(key) for key in KEPT},
            "profile": profile(runs_dir / study, started, final_at, ended)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", required=True,
                        help="which search to run (repeat for several)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "benchmarks"),
                        help="where the studies are kept (each run makes a new one)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_search.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    for name in args.case:
        entry = {"provenance": provenance("benchmarks.cpu_search", ["--case", name]), **run_case(name, Path(args.runs_dir))}
        results = json.loads(out.read_text()) if out.is_file() else {}
        results[name] = entry
        write_json_atomic(out, results)
        print(f"recorded case {name} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
