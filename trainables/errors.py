"""The one kind of error a user can fix: each message says what is wrong, where, and how to fix it.

The command catches it and prints its one line (exit 2): a bad dataset (:class:`trainables.images.DataError`), a
runs folder or URI that cannot be used (:class:`trainables.storage.LocationError`), bad options or a bad study
(:class:`search.errors.StudyError`), a malformed study file (:class:`search.space.StudyFileError`).
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with what the user gave; the message says how to fix it."""
