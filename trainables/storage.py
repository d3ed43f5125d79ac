"""Where a study's files live: a local folder or a bucket, behind one small interface.

``--runs-dir`` (and ``--data``, the dashboard's and ``search.predict``'s study argument) is a
local path or a URI that :func:`pyarrow.fs.FileSystem.from_uri` understands: ``s3://bucket/prefix``
with its query options (``?endpoint_override=host:port&scheme=http&region=...``), ``gs://``,
``hdfs://``, ``file://``. A :class:`Location` is one file or folder there; the study store
(:mod:`search.store.study`) and a trial's checkpoints (:mod:`trainables.checkpoints`) read and
write through it, and nothing else touches a study's files.

Writes are whole or nothing on both kinds. A local file is written beside its target and moved
into place with ``os.replace`` (:func:`write_atomic`, atomic on POSIX: a reader, or a driver resumed after a
SIGKILL, sees the old version or the new one, never half of one); an object store has no rename, but a PUT (or a
multipart upload's completion) makes an object appear whole, so each file is one upload. A checkpoint's
``previous.pt`` is a server-side copy of ``latest.pt`` before the new upload. ``crash`` names a fault-injection
point (:mod:`trainables.faults`) between the two steps. A store that stops answering is waited for
(:mod:`trainables.retry`).

This module sits at the training floor: the driver's study store (search/store/study.py) and a trial's checkpoints
(trainables/checkpoints.py) both write through it.

Credentials are the filesystem's own: for S3 the ``AWS_*`` variables, ``~/.aws`` or the node's
role, on the driver and on every node that runs trials. A URI that carries them
(``s3://KEY:SECRET@bucket``) is refused: the URI is recorded in the study and its trials' configs.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

from trainables.errors import InputError
from trainables.faults import crash_point
from trainables.retry import retrying

IO_LOG = "MEMSEARCH_IO_LOG"  # a file: every write and read of a study file appends a line to it (benchmarks/bucket.py)
PROBE_SECONDS = 5.0  # an endpoint that does not answer within this is refused before Ray starts
# The S3 query options this accepts (pyarrow's own names); anything else is refused, not ignored.
S3_OPTIONS = {"endpoint_override", "scheme", "region", "connect_timeout", "request_timeout"}
_filesystems: dict[str, Any] = {}  # one pyarrow filesystem per (scheme, authority, query), per process
_lock = threading.Lock()


class LocationError(InputError):
    """A runs folder, data folder or study URI that cannot be used; the message says why and how to fix it."""


_GIVE_UP = ("NotFound", "NoSuchKey", "NoSuchBucket", "ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId",
            "SignatureDoesNotMatch", "HTTP status 403", "HTTP status 404")


def _not_answering(err: BaseException) -> bool:
    """A store that does not answer (refused, reset, timed out, 5xx), not one that answers no."""
    return (isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, PermissionError))
            and not any(w in str(err) for w in _GIVE_UP))


def _retrying(what: str, where: "Location", call: Callable[[], Any]) -> Any:
    """A remote store's call, waited for while the store does not answer (trainables.retry)."""
    return retrying(f"bucket: {what} {where.name}", call, _not_answering)


def is_uri(text: str | Path) -> bool:
    return "://" in str(text) and not str(text).startswith("file://")


def is_database_url(url: str | None) -> bool:
    """A URL of a database server (PostgreSQL, MySQL), not a file (SQLite): what holds a bucket study's lease."""
    return bool(url) and url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres", "mysql")


@dataclass(frozen=True)
class Location:
    """One file or folder: a local path (``fs`` None) or a path in a pyarrow filesystem, with the URI that made it."""

    path: str  # local: absolute path; remote: the path as pyarrow names it ("bucket/prefix/..." for s3 and gs)
    base: str = ""  # remote: what names the filesystem ("s3://", "gs://", "hdfs://host:port"); local: ""
    query: str = ""  # remote: the URI's query, carried to every child (the endpoint, the region)

    @property
    def is_local(self) -> bool:
        return not self.base

    @property
    def fs(self):
        return None if self.is_local else _filesystem(self.base, self.query)

    @property
    def local(self) -> Path:
        if not self.is_local:
            raise TypeError(f"{self} is not on the local disk")
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        return Location(self.path.rstrip("/").rsplit("/", 1)[0], self.base, self.query)

    def __truediv__(self, part: str) -> "Location":
        return Location(f"{self.path.rstrip('/')}/{part}", self.base, self.query)

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.base}{self.path}" + (f"?{self.query}" if self.query else "")

    # -- reading ------------------------------------------------------------------------

    def _remote_type(self) -> str:
        """What the bucket holds at the path: "File", "Directory" (a prefix) or "NotFound"."""
        return _retrying("looking up", self, lambda: self.fs.get_file_info(self.path).type.name)

    def exists(self) -> bool:
        return Path(self.path).exists() if self.is_local else self._remote_type() != "NotFound"

    def is_file(self) -> bool:
        return Path(self.path).is_file() if self.is_local else self._remote_type() == "File"

    def is_dir(self) -> bool:
        return Path(self.path).is_dir() if self.is_local else self._remote_type() == "Directory"

    def read_bytes(self) -> bytes:
        started = time.perf_counter()
        if self.is_local:
            data = Path(self.path).read_bytes()
        else:
            def get() -> bytes:
                with self.fs.open_input_stream(self.path) as handle:
                    return handle.read()

            data = _retrying("reading", self, get)
        _account("read" if self.is_local else "get", self, len(data), started)
        return data

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def reader(self):
        """A binary file object to read from (its bytes, read once)."""
        return io.BytesIO(self.read_bytes())

    def files(self) -> list["Location"]:
        """Every file below this folder (recursively), sorted by path."""
        if self.is_local:
            root = Path(self.path)
            return [Location(str(p)) for p in sorted(root.rglob("*")) if p.is_file()] if root.is_dir() else []
        import pyarrow.fs as pafs

        infos = _retrying("listing", self, lambda: self.fs.get_file_info(
            pafs.FileSelector(self.path, recursive=True, allow_not_found=True)))
        return [Location(i.path, self.base, self.query) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.File]

    # -- writing ------------------------------------------------------------------------

    def make_dirs(self) -> None:
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)  # an object store has no folders to make

    def write(self, fill: Callable[[Any], None], *, crash: str | None = None, fsync: bool = False,
              keep_previous: "Location | None" = None) -> None:
        """Replace the file whole: ``fill(handle)`` writes its bytes into a binary file object.

        ``keep_previous``: the version being replaced is kept there first (a checkpoint's fallback).
        ``crash`` names a fault-injection point just before the new version becomes visible.
        """
        started = time.perf_counter()
        if self.is_local:
            size = 0

            def to_file(tmp: Path) -> None:
                nonlocal size
                with open(tmp, "wb") as handle:
                    fill(handle)
                    size = handle.tell()

            write_atomic(Path(self.path), to_file, crash=crash, fsync=fsync,
                         keep_previous=None if keep_previous is None else Path(keep_previous.path))
            _account("write", self, size, started)
            return
        buffer = io.BytesIO()
        fill(buffer)
        if crash:
            crash_point(crash)
        fs = self.fs
        if keep_previous is not None and self.is_file():
            _retrying("copying", keep_previous, lambda: fs.copy_file(self.path, keep_previous.path))
            _account("head+copy", keep_previous, 0, started)
            started = time.perf_counter()

        def put() -> None:
            with fs.open_output_stream(self.path) as handle:  # the object appears whole when the stream closes
                handle.write(buffer.getbuffer())

        _retrying("writing", self, put)
        _account("put", self, buffer.getbuffer().nbytes, started)

    def write_bytes(self, data: bytes, **kwargs: Any) -> None:
        self.write(lambda handle: handle.write(data), **kwargs)

    def write_text(self, text: str, **kwargs: Any) -> None:
        self.write_bytes(text.encode("utf-8"), **kwargs)

    def delete(self) -> None:
        if self.is_local:
            Path(self.path).unlink(missing_ok=True)
        elif self.is_file():
            _retrying("deleting", self, lambda: self.fs.delete_file(self.path))


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


def write_arrays(where: Location, **arrays: Any) -> None:
    """Arrays as a compressed ``.npz``, written whole (lists become arrays)."""
    import numpy as np

    where.write(lambda handle: np.savez_compressed(handle, **{k: np.asarray(v) for k, v in arrays.items()}))


def read_arrays(where: Location) -> dict[str, Any] | None:
    """The arrays of an ``.npz`` (None if absent)."""
    import numpy as np

    if not where.is_file():
        return None
    with where.reader() as handle, np.load(handle) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _account(op: str, where: Location, nbytes: int, started: float) -> None:
    """One line in the I/O log, when $MEMSEARCH_IO_LOG names one: op, file name, bytes, seconds."""
    log = os.environ.get(IO_LOG)
    if log:
        with open(log, "a") as handle:  # one short line per call: appends from several processes stay whole
            handle.write(f"{op}\t{where.name}\t{nbytes}\t{time.perf_counter() - started:.6f}\n")


def _filesystem(base: str, query: str):
    """The pyarrow filesystem of a URI's scheme, authority-free part and query (cached per process)."""
    key = f"{base}?{query}"
    with _lock:
        if key not in _filesystems:
            _filesystems[key] = _make_filesystem(base, dict(parse_qsl(query)), probe=False)
        return _filesystems[key]


BUCKET_SCHEMES = ("s3://", "gs://", "gcs://")  # the bucket is the path's first part, as pyarrow names it


def _make_filesystem(base: str, options: dict[str, str], *, probe: bool):
    import pyarrow.fs as pafs

    if base == "s3://":
        unknown = sorted(set(options) - S3_OPTIONS)
        if unknown:
            raise LocationError(f"unknown S3 option(s) {', '.join(unknown)}; the ones understood: "
                                f"{', '.join(sorted(S3_OPTIONS))}.")
        timeouts = {"connect_timeout": float(options.get("connect_timeout", PROBE_SECONDS)),
                    "request_timeout": PROBE_SECONDS if probe else float(options.get("request_timeout", 60))}
        return pafs.S3FileSystem(endpoint_override=options.get("endpoint_override"), scheme=options.get("scheme"),
                                 region=options.get("region"), **timeouts,
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1 if probe else 3))
    uri = base + ("placeholder" if base in BUCKET_SCHEMES else "/") + (f"?{urlencode(options)}" if options else "")
    return pafs.FileSystem.from_uri(uri)[0]


def location_of(text: str | Path) -> Location:
    """A path or URI recorded by a study (a trial's ``checkpoint_root``), as a :class:`Location`, without
    asking the bucket anything: it was checked when the study made it."""
    text = str(text)
    if not is_uri(text):
        return Location(str(Path(text[len("file://"):] if text.startswith("file://") else text).expanduser().resolve()))
    parts = urlsplit(text)
    if f"{parts.scheme}://" in BUCKET_SCHEMES:
        return Location((parts.netloc + parts.path).rstrip("/"), f"{parts.scheme}://", parts.query)
    return Location(parts.path.rstrip("/") or "/", f"{parts.scheme}://{parts.netloc}", parts.query)

