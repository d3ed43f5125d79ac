"""Opening a runs folder, data folder or study URI: the checks that refuse a bad one before anything starts
(credentials in the URI, an unknown scheme or option, a bucket that does not exist, refused credentials, an endpoint
that does not answer within PROBE_SECONDS), each with one message that says how to fix it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

from trainables.storage import (BUCKET_SCHEMES, PROBE_SECONDS, Location, LocationError, _make_filesystem,
                                location_of)


SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")  # what pyarrow.fs reads


def check_uri(text: str, *, what: str = "--runs-dir") -> None:
    """What can be refused in a URI without asking its server: an unknown scheme, credentials written in it."""
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES:
        raise LocationError(f"{what} {_redacted(parts) if parts.password else text}: Unrecognized filesystem type "
                            f"{parts.scheme!r}; a local path, or a URI with one of {', '.join(SCHEMES)} "
                            "(s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, hdfs://HOST/PATH, file:///PATH).")
    if parts.username or parts.password:
        raise LocationError(f"{what} {_redacted(parts)} carries credentials in the URI, which would be recorded in "
                            "the study; put them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for "
                            "S3) or give the nodes a role.")


def open_location(text: str | Path, *, what: str = "--runs-dir") -> Location:
    """A local path or URI as a :class:`Location`, its bucket checked to answer (URIs only).

    Raises :class:`LocationError`, with what to fix, for: an unknown scheme, credentials in the
    URI, unknown options, missing or refused credentials, a bucket that does not exist, an
    endpoint that does not answer within :data:`PROBE_SECONDS`. Nothing is written.
    """
    where = location_of(text)
    if where.is_local:
        return where
    text = str(text)
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise LocationError(f"{what} {_redacted(parts)} carries credentials in the URI, which would be recorded in "
                            "the study; put them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for "
                            "S3) or give the nodes a role.")
    base, bucket_style = where.base, where.base in BUCKET_SCHEMES
    if bucket_style and not parts.netloc:
        raise LocationError(f"{what} {text} names no bucket; write it as {base}BUCKET/PREFIX.")
    options = dict(parse_qsl(parts.query))
    try:
        if base == "s3://" and "region" not in options and "endpoint_override" not in options:
            options["region"] = _bucket_region(parts.netloc, text, what)  # AWS: the bucket's own, for every node
        filesystem = _make_filesystem(base, options, probe=True)
    except LocationError as err:
        raise LocationError(f"{what} {text}: {err}") from None
    except Exception as err:  # noqa: BLE001 - pyarrow says ArrowInvalid/ValueError/OSError for an unknown scheme
        raise LocationError(f"{what} {text}: {str(err).splitlines()[0]} (a local path, or a URI pyarrow.fs understands: "
                            "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, hdfs://HOST/PATH, file:///PATH).") from None
    _probe(filesystem, parts.netloc if bucket_style else where.path, text, what, must_exist=bucket_style)
    return Location(where.path, base, urlencode(options))


def _bucket_region(bucket: str, text: str, what: str) -> str:
    """The AWS region a bucket lives in (pyarrow asks AWS, without credentials), within PROBE_SECONDS."""
    import pyarrow.fs as pafs

    found: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: found.update(region=_try(pafs.resolve_s3_region, bucket)), daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    region = found.get("region")
    if isinstance(region, str):
        return region
    if thread.is_alive():
        raise LocationError(f"{what} {text}: AWS did not answer within {PROBE_SECONDS:.0f} s (asking for bucket "
                            f"{bucket!r}'s region); check the network, or give ?region=... in the URI.")
    raise LocationError(f"{what} {text}: bucket {bucket!r} was not found on AWS ({str(region).splitlines()[0][-120:]}); "
                        "check its name, or give endpoint_override=HOST:PORT for another S3 service.")


def _try(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as err:  # noqa: BLE001 - returned, and reported by the caller
        return err


def _probe(filesystem: Any, bucket: str, text: str, what: str, *, must_exist: bool) -> None:
    """Ask for the bucket (or the path) once, within PROBE_SECONDS; a clear message for each way that fails."""
    import pyarrow.fs as pafs

    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            answer["info"] = filesystem.get_file_info(bucket)
        except Exception as err:  # noqa: BLE001 - reported below
            answer["error"] = err

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS + 2.0)
    if thread.is_alive() or _timed_out(answer.get("error")):
        raise LocationError(f"{what} {text}: the endpoint did not answer within {PROBE_SECONDS:.0f} s; check "
                            "endpoint_override and the network (nothing was written).")
    error = answer.get("error")
    if error is not None:
        message = str(error)
        if any(word in message for word in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                            "HTTP status 403", "HTTP status 500", "credentials")):
            found = "" if _have_credentials() else " No credentials were found in the environment."
            raise LocationError(f"{what} {text}: access to bucket {bucket!r} was refused ({_aws_error(message)})."
                                f"{found} Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give "
                                "the node a role that may read and write the bucket.")
        if "NETWORK_CONNECTION" in message or "connect" in message.lower():
            raise LocationError(f"{what} {text}: cannot reach the endpoint ({_aws_error(message)}); check "
                                "endpoint_override and the network.")
        raise LocationError(f"{what} {text}: {message.splitlines()[0]}")
    if must_exist and answer["info"].type == pafs.FileType.NotFound:
        raise LocationError(f"{what} {text}: bucket {bucket!r} does not exist (or this endpoint does not have it); "
                            "create it first, or check its name and endpoint_override.")


def _aws_error(message: str) -> str:
    """The telling part of a pyarrow S3 error ("AWS Error ACCESS_DENIED during HeadBucket operation")."""
    import re

    found = re.search(r"AWS Error [^:]*", message)
    return found.group(0).strip() if found else message.splitlines()[0][-120:]


def _timed_out(error: BaseException | None) -> bool:
    return error is not None and ("curlCode: 28" in str(error) or "Timeout was reached" in str(error))


def _have_credentials() -> bool:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    return any(os.environ.get(k) for k in keys) or Path("~/.aws/credentials").expanduser().is_file()


def _redacted(parts) -> str:
    return f"{parts.scheme}://***@{parts.hostname or ''}{parts.path}"


def fetch_folder(text: str, cache: Path, *, what: str) -> Path:
    """A local copy of the folder at URI ``text`` in ``cache`` (a folder named by the URI's hash), copied
    again only when the listing (names and sizes) differs from the copy's; written beside it and renamed."""
    import hashlib
    import json
    import shutil

    import pyarrow.fs as pafs

    where = open_location(text, what=what)
    folder = cache / hashlib.sha1(text.encode()).hexdigest()[:16]
    infos = where.fs.get_file_info(pafs.FileSelector(where.path, recursive=True, allow_not_found=True))
    listing = sorted([i.path[len(where.path) + 1:], i.size] for i in infos if i.type == pafs.FileType.File)
    if not listing:
        raise LocationError(f"{what} {text}: no files there; it should hold images/ and maps/ (the layouts of docs/data.md).")
    manifest = folder / ".listing.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == listing:
        return folder
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pafs.copy_files(where.path, str(staging), source_filesystem=where.fs, destination_filesystem=pafs.LocalFileSystem())
    (staging / ".listing.json").write_text(json.dumps(listing))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
