"""What every result file records beside its numbers: the commit, the command and the machine that made them."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(module: str, argv: list[str]) -> dict:
    """The ``provenance`` object of one benchmark run; ``dirty``: code differed from the commit (new files included;
    other benchmarks' result files, written while this one ran, are listed in ``changed_files`` but are not code)."""
    import optuna
    import ray
    import torch

    changed = _git("diff", "--name-only", "HEAD").splitlines() + _git("ls-files", "--others", "--exclude-standard").splitlines()
    return {
        "commit": _git("rev-parse", "HEAD") or None,
        "dirty": any(not name.startswith("benchmarks/results/") for name in changed),
        "changed_files": changed,  # files that differed from the commit, new files included
        "command": " ".join(["python", "-m", module, *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__,
                     "optuna": optuna.__version__},
    }


def this_process() -> dict:
    """The provenance of the command this process runs (``python -m benchmarks.X ...``), for code several commands share."""
    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(ROOT).with_suffix("").parts)
    except ValueError:
        module = script.stem
    return provenance(module, sys.argv[1:])


def write_family_rows(out: str | Path, header: dict, rows: list[dict], order: list[str]) -> None:
    """Write ``header`` and ``rows`` (one per family, ``family`` in ``order``) to the result file ``out``, keeping
    the earlier rows of the families this run did not measure (a run for some families updates only theirs)."""
    out = Path(out)
    measured = {r["family"] for r in rows}
    if out.exists():
        rows = [r for r in json.loads(out.read_text())["families"] if r["family"] not in measured] + rows
    rows = sorted(rows, key=lambda r: order.index(r["family"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**header, "families": rows}, indent=2) + "\n")
