"""What the benchmarks' command lines share."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def comma_separated(kind: type, positive: bool = False) -> Callable[[str], list[Any]]:
    """An argparse type: a comma-separated list of ``kind`` (argparse names the option in its message)."""
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None
        if positive and not all(0 < v < float("inf") for v in values):  # nan fails every comparison
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be a finite number above 0")
        return values

    return parse
