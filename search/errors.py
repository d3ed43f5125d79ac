"""The errors a user can fix: each message says what is wrong, where, and how to fix it."""

from __future__ import annotations


from trainables.errors import InputError


class StudyError(InputError):
    """A problem with the study folder or the options; the message says how to fix it."""
