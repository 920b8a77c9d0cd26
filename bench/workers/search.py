"""The room count a server holds at the quality bar: a bounded search.

:func:`find_capacity` measures a first guess, then gallops (1, 2, 4, … rooms
away from what it knows) up while rooms hold or down while they fail, and
bisects once it has a count that held below one that failed. It assumes that
holding is monotonic in the room count (fewer rooms than a held count would
hold too) and stops after ``max_steps`` measures, at ``max_rooms``, or when
the next measure would end past ``deadline``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: Measures ``rooms`` rooms at once: True if every room held the quality bar.
Measure = Callable[[int], Awaitable[bool]]


@dataclass
class Search:
    #: The largest count measured to hold (0: none did).
    capacity: int = 0
    #: The smallest count measured to fail (None: none did).
    failed_at: int | None = None
    tried: list[tuple[int, bool]] = field(default_factory=list)
    #: Why it stopped before the bracket closed ("steps", "time", "max_rooms"), or None.
    cut_short: str | None = None

    @property
    def exact(self) -> bool:
        """The capacity is bracketed: ``capacity`` held and ``capacity + 1`` failed."""
        return self.failed_at is not None and self.failed_at == self.capacity + 1


def next_count(lo: int, hi: int | None, last: int, gap: int, max_rooms: int) -> int:
    """The next count to measure given ``lo`` held (0: nothing yet), ``hi`` failed
    (None: nothing yet) and the last gallop ``gap``."""
    if hi is None:
        return min(max_rooms, max(lo, last) + gap)
    if lo == 0:
        return max(1, min(hi, last) - gap)
    return (lo + hi) // 2


async def find_capacity(
    measure: Measure,
    *,
    start: int,
    max_rooms: int,
    max_steps: int,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Search:
    if max_rooms < 1 or max_steps < 1:
        raise ValueError("max_rooms and max_steps must be at least 1")
    result = Search()
    count = min(max(start, 1), max_rooms)
    gap, longest = 1, 0.0
    while True:
        if len(result.tried) >= max_steps:
            result.cut_short = "steps"
            break
        if deadline is not None and clock() + longest > deadline:
            result.cut_short = "time"
            break
        began = clock()
        held = await measure(count)
        longest = max(longest, clock() - began)
        result.tried.append((count, held))
        if held:
            result.capacity = max(result.capacity, count)
        else:
            result.failed_at = count if result.failed_at is None else min(result.failed_at, count)
        if result.failed_at is not None and result.failed_at <= result.capacity + 1:
            break  # bracketed (or not monotonic: the report shows every step)
        if result.failed_at is None and result.capacity >= max_rooms:
            result.cut_short = "max_rooms"
            break
        bracketing = result.failed_at is not None and result.capacity > 0
        count = next_count(result.capacity, result.failed_at, count, gap, max_rooms)
        gap = 1 if bracketing else gap * 2
    return result
