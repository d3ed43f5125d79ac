"""What every rendered block shares: reading a result file, and naming when and where it was measured."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


class RenderError(Exception):
    """A result file or a marker is missing; the message says which."""


def load(name: str) -> dict:
    path = RESULTS / name
    if not path.is_file():
        raise RenderError(f"{path} is missing; run the benchmark that writes it (its docstring says how).")
    return json.loads(path.read_text())


def measured(prov: dict) -> str:
    """'commit abc1234, 2026-12-01, 2 cores, <cpu>': what a table was measured on."""
    changed = prov.get("changed_files")
    dirty = (any(not f.startswith("benchmarks/results/") for f in changed) if changed is not None  # results are not code
             else prov.get("dirty"))
    commit = (prov.get("commit") or "unknown")[:7] + (" + uncommitted changes" if dirty else "")
    machine = prov.get("machine", {})
    where = machine.get("gpu") or f"{machine.get('cores')} cores, {machine.get('cpu')}"
    return f"commit {commit}, {prov.get('date', '?')[:10]}, {where}"


def section_measured(results: dict, section: str) -> str:
    """When a section of a merged result (``section_provenance``) was measured."""
    prov = (results.get("section_provenance") or {}).get(section)
    if prov:
        return measured(prov)
    date = (results.get("section_dates") or {}).get(section) or results.get("date")
    return f"{date}, {results.get('machine')} (before results recorded their commit)"


BUDGET_CAP = "82a7e92"  # --budget-epochs became a cap: runs measured before it spent over their budget
BEFORE_CAP = (f"measured before commit {BUDGET_CAP}, where `--budget-epochs` became a cap (a trial starts only when its "
              "whole length fits); then the trials running or queued when a search reached its budget finished. What "
              "the cap spends today is section 3d of `benchmarks/README.md` (`python -m benchmarks.budget`)")


def before_cap(commits) -> bool:
    """Whether any of these commits (None: a row from before rows recorded one) predates :data:`BUDGET_CAP`."""
    return any(not isinstance(c, str) or not descends(c, BUDGET_CAP) for c in commits)


def descends(commit: str, ancestor: str) -> bool:
    """Whether ``commit`` contains ``ancestor`` (False where git cannot say: a shallow clone, an unknown commit)."""
    import subprocess

    done = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value:.4f} ({value / base:.2f}x)"


def changed(change: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in change.items()) or "study defaults"


def row_measured(rows: list[dict]) -> str:
    seen = sorted({measured(r["provenance"]) for r in rows if r.get("provenance")})
    undated = sum(1 for r in rows if not r.get("provenance"))
    return "; ".join(seen + ([f"{undated} rows from before results recorded their commit"] if undated else []))
