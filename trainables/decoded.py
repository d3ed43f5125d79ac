"""Decoded splits kept on disk, so that a second search on the same files does not decode them again.

Decoding is most of what reading a dataset costs: every image and map file opened, converted to RGB and resized to
the working resolution. The arrays of a split are kept in the cache (``$MEMSEARCH_CACHE/decoded``, see
:func:`trainables.synthetic.cache_root`) under a key made of the working size and, for every pair, its stem, both
files' paths, sizes and modification times: a file replaced, edited, added or removed gives another key, and the
files are decoded again. A split that fails to decode is never kept (its error is raised as before).

At most :data:`KEEP` splits stay (the least recently used go first); ``MEMSEARCH_DECODED_CACHE=0`` turns the cache off.
Arrays are written to a temporary file and renamed into place, so a reader never sees half a file and searches
started at once on the same data (several processes) each find a whole one or decode themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from trainables.images import DataError
from trainables.synthetic import cache_root

# Bump FORMAT when what a split decodes to changes (conversion, resizing), so old entries are not read. 2: EXIF
# rotation applied, 16-bit scaled by its depth, float read as [0, 1].
FORMAT = 2
STALE_S = 3600  # a temporary file this old was left by a search that was killed as it wrote
KEEP = 6  # splits kept; with VISCHEMA's 1,600 pairs at 256 px, one is about 0.6 GB
Pairs = list[tuple[str, Path, Path]]


def enabled() -> bool:
    return os.environ.get("MEMSEARCH_DECODED_CACHE", "1") != "0"


def key(pairs: Pairs, size: int) -> str:
    """The split's identity: the working size and each pair's stem, paths, sizes and modification times."""
    digest = hashlib.sha256(f"{FORMAT}\0{size}".encode())
    for stem, image_path, map_path in pairs:
        digest.update(stem.encode())
        for path in (image_path, map_path):
            try:
                stat = os.stat(path)
            except OSError as err:  # a broken link, or a file moved away since the folder was read
                raise DataError(f"{path}: cannot be read ({err.strerror}); restore the file (or the link's target), "
                                "or move the pair out of the dataset.") from None
            digest.update(f"\0{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def cached(pairs: Pairs, size: int, decode: Callable[[Pairs, int], tuple[np.ndarray, np.ndarray]]
           ) -> tuple[np.ndarray, np.ndarray]:
    """``decode(pairs, size)``, or what it returned the last time for the same files."""
    if not enabled() or not pairs:
        return decode(pairs, size)
    folder = cache_root() / "decoded"
    path = folder / f"{key(pairs, size)}.npz"
    try:
        with np.load(path) as kept:
            images, maps = kept["images"], kept["maps"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # not kept, or unreadable: decode afresh
        pass
    else:
        with contextlib.suppress(OSError):  # a cache this user may read but not write is still read
            os.utime(path)  # recently used
        return images, maps
    images, maps = decode(pairs, size)
    _keep(folder, path, images, maps)
    return images, maps


def _keep(folder: Path, path: Path, images: np.ndarray, maps: np.ndarray) -> None:
    """Write the arrays whole (a temporary file renamed into place), then drop the least recently used beyond KEEP
    and temporary files a killed search left. A cache that cannot be written (read-only, full) only costs the next
    search a decode."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, images=images, maps=maps)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return
    entries = sorted(folder.glob("*.npz"), key=_used, reverse=True)
    stale = [p for p in folder.glob("*.tmp") if _used(p) < time.time() - STALE_S]
    for old in entries[KEEP:] + stale:
        with contextlib.suppress(OSError):  # removed by another search meanwhile
            old.unlink()


def _used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed by another search meanwhile
        return 0.0
