"""The README's test command, timed as CI runs it: ``.ci/run`` on a clean clone of this commit.

    python -m benchmarks.suite        # about 16 minutes on 2 cores

``.ci/run`` makes its own virtual environment, installs the project with its test extras, runs
pytest, checks the rendered docs and that no Ray or PostgreSQL process is left behind. This
records in ``results/tests.json`` the whole run's wall time (install included), pytest's counts,
its own seconds, its slowest tests and each test file's seconds (setup, calls and teardown summed:
where the suite's time goes; pytest is asked for every duration through ``PYTEST_ADDOPTS``), with
the provenance of the commit tested. The tree must
be clean: what is timed is the clone of HEAD, so uncommitted changes would not be in it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import ROOT, provenance
from trainables.storage import write_json_atomic

COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed).*) in ([\d.]+)s")
SLOWEST = 15  # tests recorded by name
SLOW = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)")


def parse(lines: list[str]) -> dict:
    """pytest's final counts, its seconds and the slowest tests, from the run's output."""
    summary = next((m for m in map(SUMMARY.match, reversed(lines)) if m), None)
    if summary is None:
        raise SystemExit("error: pytest printed no summary line; see the output above.")
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(summary.group(1))}
    durations = [{"seconds": float(m.group(1)), "phase": m.group(2), "test": m.group(3)}
                 for m in map(SLOW.match, lines) if m]
    files: dict[str, float] = {}
    for row in durations:
        path = row["test"].split("::", 1)[0]
        files[path] = files.get(path, 0.0) + row["seconds"]
    return {"counts": counts, "pytest_seconds": float(summary.group(2)),
            "slowest": sorted(durations, key=lambda r: -r["seconds"])[:SLOWEST],
            "files": {path: round(seconds, 1) for path, seconds in files.items()}}  # the file is written key-sorted


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tests.json"))
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.suite", argv)
    if prov["dirty"]:
        print("error: the tree has uncommitted changes (" + ", ".join(prov.get("changed_files", [])[:5]) + "); the suite "
              "runs on a clean clone of HEAD, so commit them (or stash them) first.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="memsearch-suite-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        start = time.perf_counter()
        lines: list[str] = []
        env = {**os.environ, "PYTEST_ADDOPTS": (os.environ.get("PYTEST_ADDOPTS", "") + " --durations=0").strip()}
        with subprocess.Popen([str(clone / ".ci" / "run")], cwd=clone, stdout=subprocess.PIPE, env=env,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
        wall = time.perf_counter() - start
    if process.returncode != 0:
        print(f"error: .ci/run failed (exit {process.returncode}) on commit {prov['commit'][:7]}; nothing recorded.",
              file=sys.stderr)
        return 1
    result = {"provenance": prov, "command": ".ci/run on a clean clone (the README's test command, then render --check)",
              "wall_seconds": round(wall, 1), **parse(lines)}
    write_json_atomic(Path(args.out), result)
    print(f"recorded in {args.out}: {result['counts']} in {result['pytest_seconds']:.0f} s of pytest, "
          f"{wall:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
