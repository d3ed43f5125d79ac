"""Render the measured numbers into the docs, from the result files, between generated markers.

    python -m benchmarks.render           # rewrite every rendered block
    python -m benchmarks.render --check   # exit 1 when a rendered block differs from what the results give

A block sits between ``<!-- rendered: NAME -->`` and ``<!-- /rendered: NAME -->`` in a doc;
everything between the markers is replaced, everything outside them is left alone. Each block
names the commit and the date its numbers were measured on (from the result's ``provenance``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

from benchmarks.tables import bucket, cpu, gpu, publish, reference, searches
from benchmarks.tables.common import RESULTS, ROOT, RenderError

BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    # README.md
    "main-job": ("README.md", searches.main_job_time),
    "preset-times": ("docs/options.md", searches.preset_times),
    "strategies": ("docs/strategies.md", searches.strategy_comparison),
    "publish-recommendation": ("docs/strategies.md", publish.recommendation),
    "unlearnable": ("docs/data.md", searches.unlearnable_run),
    "test-time": ("README.md", cpu.test_time),
    "example-run": ("README.md", searches.example_run),
    "channels": ("README.md", searches.channel_reading),
    "baselines": ("docs/data.md", searches.data_baselines),
    "gpu-summary": ("docs/clusters.md", gpu.gpu_summary),
    "gpu-check": ("docs/clusters.md", gpu.gpu_check),
    # benchmarks/README.md, in the order of its sections
    "overhead": ("benchmarks/README.md", cpu.overhead_table),
    "datapath": ("benchmarks/README.md", cpu.datapath_table),
    "search-efficiency": ("benchmarks/README.md", searches.search_efficiency),
    "publish": ("benchmarks/README.md", publish.publish_table),
    "population": ("benchmarks/README.md", publish.population_table),
    "budget": ("benchmarks/README.md", cpu.budget_table),
    "sampling": ("benchmarks/README.md", cpu.sampling_table),
    "memory": ("benchmarks/README.md", cpu.memory_table),
    "scaling": ("benchmarks/README.md", cpu.scaling_table),
    "cpu-search": ("benchmarks/README.md", searches.cpu_search_table),
    "main-job-profile": ("benchmarks/README.md", searches.main_job_profile),
    "learning": ("benchmarks/README.md", cpu.learning_table),
    "faults": ("benchmarks/README.md", cpu.faults_table),
    "seeds": ("benchmarks/README.md", cpu.seeds_table),
    "gpu-check-section": ("benchmarks/README.md", gpu.gpu_check),
    "gpu-floor": ("benchmarks/README.md", gpu.gpu_floor),
    "gpu-h100": ("benchmarks/README.md", gpu.gpu_tables),
    "gpu-targets": ("benchmarks/README.md", gpu.gpu_targets),
    "gpu-memory": ("benchmarks/README.md", gpu.gpu_memory),
    "startup": ("benchmarks/README.md", cpu.startup_table),
    "levers": ("benchmarks/README.md", cpu.levers_table),
    "lever-quality": ("benchmarks/README.md", cpu.lever_quality_table),
    "same-behaviour": ("benchmarks/README.md", searches.same_behaviour_table),
    # docs/: reference generated from the code
    "options": ("docs/options.md", reference.options_table),
    "strategy-list": ("docs/strategies.md", reference.strategies_table),
    "parquet-schema": ("docs/results.md", reference.schema_table),
    # docs/: measured
    "bad-inputs": ("docs/reliability.md", cpu.bad_inputs_table),
    "faults-summary": ("docs/reliability.md", cpu.faults_summary),
    "bucket-cost": ("benchmarks/README.md", bucket.bucket_cost),
    "bucket-search": ("benchmarks/README.md", bucket.bucket_search),
}
NOT_MEASURED = "<!-- not measured -->"  # put on the line above a table of settings or meanings, not results
BLOCK = re.compile(r"<!-- rendered: ([\w-]+) -->\n.*?<!-- /rendered: \1 -->", re.S)


def render_doc(text: str, doc: str) -> str:
    for name, (where, make) in BLOCKS.items():
        if where != doc:
            continue
        pattern = re.compile(rf"(<!-- rendered: {re.escape(name)} -->\n)(.*?)(<!-- /rendered: {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise RenderError(f"{doc} has no markers for block {name!r}: add '<!-- rendered: {name} -->' and "
                              f"'<!-- /rendered: {name} -->' where it belongs.")
        body = make().rstrip("\n") + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)
    return text


def unmarked_tables(text: str) -> list[str]:
    """Tables outside the rendered blocks not marked as settings (``<!-- not measured -->`` on the line above):
    a measured table typed by hand, which nothing keeps true."""
    lines = BLOCK.sub("", text).split("\n")
    found = []
    for i, line in enumerate(lines[:-1]):
        if (line.startswith("|") and re.match(r"^\|\s*:?-{3}", lines[i + 1])
                and not (i and lines[i - 1].strip() == NOT_MEASURED)):
            found.append(line[:80])
    return found


# Prose (README.md and docs/, outside rendered blocks, code and comments) states no measurement and no comparison:
# those belong in a rendered block, from a result file. A number with a unit, or a comparing word, is refused.
PROSE_DOCS = ("README.md", "docs")
UNIT = re.compile(r"(?<![\w.])\d[\d,.]*\s?(?:x\b|×|%|ms\b|s\b|secs?\b|seconds?\b|min\b|mins\b|minutes?\b|h\b|hours?\b|"
                  r"days?\b|weeks?\b|[KMGT]i?B\b)", re.I)
COMPARISON = re.compile(r"\b(?:faster|slower|quicker|better|worse|beats?|outperforms?|x the|times as)\b", re.I)
# Phrases that name settings or behaviour, not measurements (each is the code's own value, or a rule it applies).
PROSE_ALLOWED = (
    "95%",  # the interval the final stage reports (a setting: mean and 95% interval)
    "When nothing beats the baseline", "nothing beats the", "beats the all-black", "beats them", "beat them",
    "beats_baseline", "no configuration beats", "beats the held one",  # the rules that decide it, by name
    "every 10 s", "after 60 s", "60 s without",  # the lease's heartbeat and timeout (MEMSEARCH_LEASE_TIMEOUT)
    "within 5 s", "default 300 s",  # the store checks' and --store-retry's settings
    "for 60 s and then exit 1", "at most 8 s after",  # Ray's gcs_rpc_server_reconnect_timeout_s; search.run's INTERRUPT_S
    "15% to spare", "95% busy",  # --gpus-per-trial auto's packing rule
    "80/20", "1% of",  # the data split's and zero terminal SNR's rules
    "the better of the two baselines", "the better baseline", "the better one", "better baseline",  # a baseline's name
)


def prose_claims(text: str) -> list[str]:
    """Stretches of prose outside rendered blocks, code and comments that state a measurement or a comparison
    (each paragraph or table row read as one line, so a phrase broken over lines is still read whole)."""
    text = BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        for line in (paragraph.split("\n") if paragraph.lstrip().startswith("|") else [" ".join(paragraph.split())]):
            bare = re.sub(r"`[^`]*`", "", line)
            for allowed in PROSE_ALLOWED:
                bare = bare.replace(allowed, "")
            match = UNIT.search(bare) or COMPARISON.search(bare)
            if match:
                found.append(bare[max(0, match.start() - 50):match.end() + 30].strip())
    return found


def prose_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _provenance_problem(prov: object) -> str | None:
    if not isinstance(prov, dict):
        return "has no provenance object"
    missing = [key for key in ("commit", "command") if not prov.get(key)]
    return f"has a provenance without {' and '.join(missing)}" if missing else None


def result_problems() -> list[str]:
    """Result files without a provenance (commit and command): JSON at the top, or in every entry of a file
    of cases (cpu_search.json); Parquet in its schema metadata."""
    import pyarrow.parquet as pq

    problems = []
    for path in sorted(RESULTS.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            problem = _provenance_problem(data.get("provenance"))
            if problem and data and all(isinstance(v, dict) for v in data.values()):  # a file of cases
                problem = next((f"entry {k!r} {p}" for k, v in data.items()
                                if (p := _provenance_problem(v.get("provenance")))), None)
        elif path.suffix == ".parquet":
            meta = pq.read_schema(path).metadata or {}
            raw = meta.get(b"provenance")
            problem = _provenance_problem(json.loads(raw) if raw else None)
        else:
            problem = "is neither JSON nor Parquet (the docs are rendered from those by python -m benchmarks.render)"
        if problem:
            problems.append(f"{path.relative_to(ROOT)} {problem}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is out of date")
    args = parser.parse_args(argv)
    stale = []
    try:
        for doc in sorted({where for where, _ in BLOCKS.values()}):
            path = ROOT / doc
            text = path.read_text()
            rendered = render_doc(text, doc)
            if rendered != text:
                stale.append(doc)
                if not args.check:
                    path.write_text(rendered)
    except RenderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = [f"{doc}: a table outside the rendered blocks, typed by hand: {table!r}; render it from a result "
                f"(benchmarks/tables/), or mark a table of settings with {NOT_MEASURED} on the line above"
                for doc in sorted({where for where, _ in BLOCKS.values()})
                for table in unmarked_tables((ROOT / doc).read_text())] + result_problems()
    problems += [f"{path.relative_to(ROOT)}: a measurement or comparison in prose, outside a rendered block: "
                 f"{line!r}; render it from a result file, or drop it" for path in prose_docs()
                 for line in prose_claims(path.read_text())]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    if args.check and stale:
        print(f"error: rendered blocks in {', '.join(stale)} differ from benchmarks/results/; "
              "run python -m benchmarks.render and commit the result.", file=sys.stderr)
        return 1
    print("the rendered blocks agree with benchmarks/results/" if args.check
          else "rendered: " + (", ".join(stale) or "nothing changed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
