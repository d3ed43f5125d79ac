"""The one atomic write: a file is replaced whole or not at all.

Every file of a study on a local disk (JSON, Parquet, checkpoints, arrays; through
:class:`search.store.location.Location`) is written into a temporary file
beside its target and moved into place with ``os.replace``, atomic on POSIX: a reader, or a
driver resumed after a SIGKILL, sees the old version or the new one, never half of one.
``crash`` names a fault-injection point (:mod:`search.faults`) between the two steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from search.faults import crash_point


def write_atomic(path: Path, write: Callable[[Path], None], *, crash: str | None = None, fsync: bool = False,
                 keep_previous: Path | None = None) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; then it replaces ``path`` in one step.

    ``keep_previous``: the version being replaced is moved there first (a checkpoint's fallback).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # one writer per file (the study's lock, a trial folder's lock)
    write(tmp)
    if fsync:
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    if crash:
        crash_point(crash)
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any, *, crash: str | None = None, fsync: bool = False,
                      sort_keys: bool = True) -> None:
    """``payload`` as indented JSON, written atomically."""
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=str) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text), crash=crash, fsync=fsync)
