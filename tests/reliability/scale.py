"""How hard the reliability tests push: bounded in ``make test``, longer in ``make reliability``.

``HUDDLE_RELIABILITY=full`` (set by ``make reliability``) multiplies example
counts and durations; unset, every fuzzer and fault loop stays small enough for
the suite's ~15-minute budget.
"""

from __future__ import annotations

import os

FULL = os.environ.get("HUDDLE_RELIABILITY") == "full"


def examples(bounded: int, full: int) -> int:
    """Hypothesis/schemathesis example count for this run."""
    return full if FULL else bounded


def seconds(bounded: float, full: float) -> float:
    """A duration (fault loops, soak-like phases) for this run."""
    return full if FULL else bounded
