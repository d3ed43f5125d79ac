"""Bad input, as a user gives it: each case is refused with one line, exit 2, nothing written and no traceback.

    python -m benchmarks.bad_inputs [--keep]

Every case runs the command itself (``python -m search.run ...``, a fresh interpreter) against a runs folder that
already holds a finished study, and checks: exit status 2; one line on stderr, starting ``error:``; no traceback;
not a file of the runs folder written, created or removed. The table of cases and what the command said goes to
``benchmarks/results/bad_inputs.json`` and is rendered into ``docs/reliability.md``; ``tests/test_bad_inputs.py``
runs the same cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
FINISHED = "finished"  # the study every case's runs folder holds
FINISHED_ARGS = ["--strategy", "greedy", "--model", "autoencoder", "--preset", "smoke", "--final-top-k", "0",
                 "--scheduler", "none", "--epochs", "1", "--blocks", "1", "--study", FINISHED]


@dataclass(frozen=True)
class Case:
    kind: str  # command line, study file, data folder, bucket or database, finished study
    what: str  # the bad input, in words
    argv: Callable[[Path], list[str]]  # the command's arguments, given a scratch folder for files the case needs
    says: str  # what its message must contain


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _edited_study_file(scratch: Path, old: str, new: str, family: str = "gan") -> str:
    """The study file of ``family`` with ``old`` (every occurrence) replaced by ``new``."""
    text = (ROOT / "studies" / f"{family}.toml").read_text()
    assert old in text, old
    path = scratch / f"edited-{len(list(scratch.glob('edited-*')))}.toml"
    path.write_text(text.replace(old, new))
    return str(path)


def _file(scratch: Path, name: str, text: str) -> str:
    (scratch / name).write_text(text)
    return str(scratch / name)


def _folder(scratch: Path, name: str, files: dict[str, bytes]) -> str:
    for relative, data in files.items():
        (scratch / name / relative).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name / relative).write_bytes(data)
    return str(scratch / name)


G = ["--strategy", "greedy", "--model", "gan"]
T = ["--strategy", "tpe", "--model", "gan"]
CASES = [
    Case("command line", "an unknown strategy", lambda s: ["--strategy", "grid", "--model", "gan"], "unknown --strategy"),
    Case("command line", "an unknown model", lambda s: ["--strategy", "greedy", "--model", "vae"], "unknown --model"),
    Case("command line", "an unknown preset", lambda s: [*G, "--preset", "huge"], "unknown --preset"),
    Case("command line", "zero epochs", lambda s: [*T, "--epochs", "0"], "--epochs must be a positive"),
    Case("command line", "a negative trial count", lambda s: [*T, "--samples", "-3"], "--samples must be a positive"),
    Case("command line", "a budget of 0 epochs", lambda s: [*T, "--budget-epochs", "0"], "--budget-epochs must be a positive"),
    Case("command line", "an unknown scheduler", lambda s: [*G, "--scheduler", "fifo"], "unknown --scheduler"),
    Case("command line", "an unknown domain", lambda s: [*T, "--domain", "box"], "unknown --domain 'box'"),
    Case("command line", "ranges for greedy", lambda s: [*G, "--domain", "ranges"], "--domain ranges: greedy samples grid only"),
    Case("command line", "an unknown precision", lambda s: [*G, "--precision", "fp8"], "--precision must be one of"),
    Case("command line", "a switch that is not auto, on or off", lambda s: [*G, "--compile", "maybe"],
         "--compile must be one of auto, on, off"),
    Case("command line", "GPUs per trial that is not a number", lambda s: [*G, "--gpus-per-trial", "lots"],
         "--gpus-per-trial is a number of GPUs"),
    Case("command line", "a fraction of GPUs above one", lambda s: [*G, "--gpus-per-trial", "1.5"],
         "above 1 must be a whole number"),
    Case("command line", "no CPU per trial", lambda s: [*G, "--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
    Case("command line", "a size the UNet cannot halve", lambda s: [*G, "--size", "50"], "--size must be a multiple of 32"),
    Case("command line", "a greedy margin above 1", lambda s: [*G, "--greedy-margin", "1.5"], "--greedy-margin is a fraction"),
    Case("command line", "ASHA keeping every trial", lambda s: [*G, "--reduction-factor", "1"],
         "--reduction-factor must be at least 2"),
    Case("command line", "a validation share of 1.5", lambda s: [*G, "--val-share", "1.5"], "--val-share is a share"),
    Case("command line", "a negative wait for a store", lambda s: [*G, "--store-retry", "-1"], "--store-retry is the seconds"),
    Case("command line", "a population of one", lambda s: ["--strategy", "pbt", "--model", "gan", "--population", "1"],
         "at least 2 members"),
    Case("command line", "a perturbation interval as long as a member's training",
         lambda s: ["--strategy", "pbt", "--model", "gan", "--epochs", "4", "--perturbation-interval", "4"], "is not below"),
    Case("command line", "--resume of a study that does not exist", lambda s: [*G, "--resume", "--study", "never-made"],
         "no study 'never-made'"),
    Case("command line", "a Ray cluster nobody listens on", lambda s: [*G, "--address", f"127.0.0.1:{_closed_port()}"],
         "cannot reach the Ray cluster"),
    Case("command line", "an MLflow server nobody listens on",
         lambda s: [*G, "--mlflow", f"http://127.0.0.1:{_closed_port()}"], "cannot reach the MLflow tracking server"),
    Case("study file", "a study file that does not exist", lambda s: [*G, "--space", str(s / "nowhere.toml")], "not found"),
    Case("study file", "not TOML", lambda s: [*G, "--space", _file(s, "broken.toml", "family = [")], "not valid TOML"),
    Case("study file", "an unknown parameter",
         lambda s: [*G, "--space", _edited_study_file(s, "map_loss", "map_losss")], "unknown parameter 'map_losss'"),
    Case("study file", "a default not among its values",
         lambda s: [*G, "--space", _edited_study_file(s, 'values = ["l1+ce", "l1"]\ndefault = "l1+ce"',
                                                      'values = ["l1+ce", "l1"]\ndefault = "ce"')], "not among its values"),
    Case("study file", "a misspelled value in a list that is not the default one",
         lambda s: [*G, "--space", _edited_study_file(s, 'values = ["l1+ce", "l1"]', 'values = ["l1+ce", "l1x"]')],
         "map_loss 'l1x' is not one of l1, ce, l1+ce"),
    Case("study file", "a value no network can take in a list that is not the default one (a width of 0)",
         lambda s: [*G, "--space", _edited_study_file(s, "values = [32, 50, 64, 100]", "values = [0, 50, 64, 100]")],
         "params.g_width: 0 is not a valid value (g_width must be in [1, inf)"),
    Case("study file", "another family's study file",
         lambda s: [*G, "--space", str(ROOT / "studies" / "autoencoder.toml")], "is a autoencoder study file but --model is gan"),
    Case("study file", "population-based training without a [pbt] perturb list",
         lambda s: ["--strategy", "pbt", "--model", "autoencoder"], "has no [pbt] perturb list"),
    Case("data folder", "a folder that does not exist", lambda s: [*G, "--data", str(s / "no-such-data")], "does not exist"),
    Case("data folder", "a file, not a folder", lambda s: [*G, "--data", _file(s, "data.txt", "x")], "is a file, not a folder"),
    Case("data folder", "a folder without images/ and maps/",
         lambda s: [*G, "--data", _folder(s, "empty-data", {"notes.txt": b"x"})], "has no images/ and maps/ folders"),
    Case("data folder", "an image without its map",
         lambda s: [*G, "--data", _folder(s, "lonely", {"images/a.png": b"x", "images/b.png": b"x", "maps/a.png": b"x"})],
         "have no map"),
    Case("data folder", "a split list naming a missing pair",
         lambda s: [*G, "--data", _folder(s, "listed", {"images/a.png": b"x", "maps/a.png": b"x",
                                                        "splits/train.txt": b"a\n", "splits/val.txt": b"zz\n"})],
         "have no image/map pair"),
    Case("data folder", "a split list naming a pair twice",
         lambda s: [*G, "--data", _folder(s, "twice", {"images/a.png": b"x", "maps/a.png": b"x", "images/b.png": b"x",
                                                       "maps/b.png": b"x", "splits/train.txt": b"a\na\n",
                                                       "splits/val.txt": b"b\n"})],
         "train.txt: 1 stems are listed more than once: a"),
    Case("data folder", "an empty split list",
         lambda s: [*G, "--data", _folder(s, "unlisted", {"images/a.png": b"x", "maps/a.png": b"x",
                                                          "splits/train.txt": b"a\n", "splits/val.txt": b"\n"})],
         "val.txt: lists no pair"),
    Case("data folder", "a split list saved as UTF-16 (Notepad's Unicode)",
         lambda s: [*G, "--data", _folder(s, "utf16", {"images/a.png": b"x", "maps/a.png": b"x",
                                                       "splits/train.txt": "a\n".encode("utf-16"),
                                                       "splits/val.txt": b"a\n"})],
         "train.txt: not UTF-8 text"),
    Case("bucket or database", "a scheme nothing reads", lambda s: [*G, "--runs-dir", "foo://bucket/runs"],
         "Unrecognized filesystem type 'foo'"),
    Case("bucket or database", "credentials in a bucket's URI",
         lambda s: [*G, "--runs-dir", "s3://KEY:SECRET@bucket/runs", "--storage", "postgresql://u@127.0.0.1:1/db"],
         "carries credentials in the URI"),
    Case("bucket or database", "a bucket without a database for its lease", lambda s: [*G, "--runs-dir", "s3://bucket/runs"],
         "is a bucket, which has no file lock"),
    Case("bucket or database", "a storage URL that is not a database URL", lambda s: [*T, "--storage", "not a url"],
         "is not a database URL"),
    Case("bucket or database", "a database nobody listens on",
         lambda s: [*T, "--storage", f"postgresql://nobody@127.0.0.1:{_closed_port()}/none"], "cannot reach the database"),
    Case("finished study", "the study file edited under a finished study",
         lambda s: [*FINISHED_ARGS[:-2], "--study", FINISHED, "--space",
                    _edited_study_file(s, "values = [32, 50, 64, 100]", "values = [32, 64, 100]", family="autoencoder")],
         "was created with other settings"),
    Case("finished study", "the finished study under another model",
         lambda s: ["--strategy", "greedy", "--model", "gan", "--study", FINISHED], "was created with other settings"),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder``: (size, modification time in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def make_finished_study(runs: Path) -> None:
    """The study every case's runs folder holds: a greedy autoencoder smoke study of one block, finished."""
    done = subprocess.run([sys.executable, "-m", "search.run", "--runs-dir", str(runs), *FINISHED_ARGS], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the finished study could not be made:\n{done.stderr[-3000:]}")


def run_case(case: Case, runs: Path, scratch: Path) -> dict:
    """The command on one bad input; what it did."""
    argv = case.argv(scratch)
    if "--runs-dir" not in argv:
        argv = ["--runs-dir", str(runs), *argv]
    before = snapshot(runs)
    env = {**os.environ, "RAY_ADDRESS": ""}  # a bad input is refused before any Ray is looked for
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.run", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)
    said = done.stderr.strip().splitlines()
    return {"kind": case.kind, "what": case.what, "argv": argv, "exit": done.returncode,
            "message": said[-1] if said else "", "lines": len(said),
            "traceback": "Traceback" in done.stderr + done.stdout, "says_expected": case.says in done.stderr,
            "wrote_nothing": snapshot(runs) == before, "seconds": time.perf_counter() - start}


def passed(row: dict) -> bool:
    return (row["exit"] == 2 and row["lines"] == 1 and row["message"].startswith("error:") and not row["traceback"]
            and row["says_expected"] and row["wrote_nothing"])


def main(argv: list[str] | None = None) -> int:
    from benchmarks.provenance import provenance

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bad_inputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_inputs.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="memsearch-bad-inputs-"))
    try:
        runs, scratch = work / "runs", work / "scratch"
        scratch.mkdir(parents=True)
        make_finished_study(runs)
        rows = []
        for case in CASES:
            rows.append(run_case(case, runs, scratch))
            row = rows[-1]
            print(f"{'ok ' if passed(row) else 'BAD'} {row['kind']:18} {row['what']:60} {row['seconds']:5.2f} s "
                  f"{row['message'][:100]}", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = {"provenance": provenance("benchmarks.bad_inputs", sys.argv[1:] if argv is None else argv),
              "cases": [{k: v for k, v in r.items() if k != "argv"} | {"argv": " ".join(r["argv"][2:])} for r in rows]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    bad = [r for r in rows if not passed(r)]
    print(f"bad inputs: {len(rows) - len(bad)} of {len(rows)} refused with one line, exit 2, nothing written")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
