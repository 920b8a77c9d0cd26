"""Loss recovery state: NACK generation upstream, a packet cache for downstream NACKs.

:class:`NackTracker` follows one incoming SSRC's sequence numbers and says
which missing packets to NACK now: at once when a gap appears, then again
every ``retry_interval`` up to ``max_retries`` times, forgetting a packet
after ``max_age`` seconds or when the gap is wider than ``max_missing`` (a
keyframe is cheaper then). Packets given up on are counted so the owner can
ask for a keyframe.

:class:`PacketCache` keeps the last ``size`` packets of one publisher stream by
sequence number, shared by every subscriber: a NACK from any of them is
answered from here.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


def seq_newer(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` comes after ``b``."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class NackTracker:
    """Missing sequence numbers of one stream and when to NACK each again."""

    def __init__(
        self,
        *,
        retry_interval: float = 0.1,
        max_retries: int = 3,
        max_age: float = 1.0,
        max_missing: int = 512,
    ) -> None:
        self.retry_interval = retry_interval
        self.max_retries = max_retries
        self.max_age = max_age
        self.max_missing = max_missing
        self.highest: int | None = None
        # seq -> [nacks sent, next due time, first missed at]
        self._missing: dict[int, list[float]] = {}
        self.gave_up = 0
        self.recovered = 0

    @property
    def missing(self) -> int:
        return len(self._missing)

    def received(self, seq: int, now: float) -> bool:
        """Record ``seq``; True if it opened a gap (there is something to NACK)."""
        highest = self.highest
        if highest is None:
            self.highest = seq
            return False
        if seq_newer(seq, highest):
            self.highest = seq
            return self.gap(highest, seq, now)
        self.filled(seq)
        return False

    def gap(self, highest: int, seq: int, now: float) -> bool:
        """``seq`` arrived after ``highest``, with what is between missing; True if
        there is something to NACK. (The C receive path follows ``highest`` itself
        and calls this only when a gap opens.)"""
        gap = (seq - highest - 1) & 0xFFFF
        if gap == 0:
            return False
        if gap > self.max_missing:
            self.gave_up += len(self._missing) + gap
            self._missing.clear()
            return False
        missing = self._missing
        for i in range(1, gap + 1):
            missing[(highest + i) & 0xFFFF] = [0, now, now]
        if len(missing) > self.max_missing:
            for old in list(missing)[: len(missing) - self.max_missing]:
                del missing[old]
                self.gave_up += 1
        return True

    def filled(self, seq: int) -> None:
        """``seq`` arrived late (reordered or retransmitted): no longer missing."""
        if self._missing.pop(seq, None) is not None:
            self.recovered += 1

    def due(self, now: float) -> list[int]:
        """Sequence numbers to NACK now (and schedules their next retry)."""
        out = []
        missing = self._missing
        for seq, entry in list(missing.items()):
            sent, due_at, first = entry
            if now - first > self.max_age or sent >= self.max_retries:
                if due_at <= now:
                    del missing[seq]
                    self.gave_up += 1
                continue
            if due_at <= now:
                entry[0] = sent + 1
                entry[1] = now + self.retry_interval
                out.append(seq)
        return out

    def next_due(self) -> float | None:
        """When :meth:`due` has work next (None: nothing missing)."""
        if not self._missing:
            return None
        return min(entry[1] for entry in self._missing.values())

    def reset(self) -> None:
        self.highest = None
        self._missing.clear()


class PacketCache(Generic[T]):
    """The last ``size`` packets of one stream, by 16-bit sequence number."""

    def __init__(self, size: int = 1024) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("cache size must be a power of two")
        self._mask = size - 1
        self._seqs: list[int] = [-1] * size
        self._items: list[T | None] = [None] * size
        self.hits = 0
        self.misses = 0
        self.newest_seq: int | None = None  # the newest sequence number put
        self.keyframe_seq: int | None = None  # where the latest keyframe put starts

    def put(self, seq: int, item: T, keyframe: bool = False) -> None:
        slot = seq & self._mask
        self._seqs[slot] = seq
        self._items[slot] = item
        newest = self.newest_seq
        if newest is None or seq_newer(seq, newest):
            self.newest_seq = seq
        if keyframe:
            self.keyframe_seq = seq

    def get(self, seq: int) -> T | None:
        slot = seq & self._mask
        if self._seqs[slot] == seq:
            self.hits += 1
            return self._items[slot]
        self.misses += 1
        return None

    def holds(self, seq: int) -> bool:
        """Whether packet ``seq`` is cached (not counted as a hit or a miss)."""
        return self._seqs[seq & self._mask] == seq

    def clear(self) -> None:
        self._seqs = [-1] * len(self._seqs)
        self._items = [None] * len(self._items)
        self.newest_seq = self.keyframe_seq = None
