"""Transport-wide congestion control feedback for publishers that offer it.

Chrome's bandwidth estimation for what it sends (GoogCC) is driven by the
receiver's transport-wide feedback (draft-holmer-rmcat-transport-wide-cc-
extensions-01): every packet carries a transport-wide sequence number in a
header extension, and the receiver reports, every ~50 ms, which of them
arrived and when. :class:`TwccRecorder` records arrivals and builds those
feedback packets (RTPFB, FMT 15): run-length chunks for runs of one status,
two-bit status vectors otherwise, receive deltas in 250 µs ticks (one byte
when small, two bytes signed otherwise).
"""

from __future__ import annotations

import struct

from .rtcp import FMT_TWCC, RTCP_RTPFB

NOT_RECEIVED = 0
SMALL_DELTA = 1
LARGE_DELTA = 2
TICK_US = 250
REFERENCE_US = 64_000
#: At most this many sequence numbers per feedback packet (then the next one goes on).
MAX_STATUS_COUNT = 1000


class TwccRecorder:
    """Arrival times by transport-wide sequence number, and the feedback that reports them."""

    def __init__(self) -> None:
        self._arrivals: dict[int, int] = {}  # unwrapped sequence number -> arrival (µs)
        self._last: int | None = None  # last unwrapped sequence number seen
        self._next: int | None = None  # first sequence number the next feedback reports
        self._count = 0  # feedback packet count (8 bits)

    @property
    def pending(self) -> int:
        return len(self._arrivals)

    def record(self, sequence_number: int, arrival_us: int) -> None:
        """One packet carrying transport-wide ``sequence_number`` arrived at ``arrival_us``."""
        last = self._last
        if last is None:
            seq = sequence_number
        else:
            delta = (sequence_number - last) & 0xFFFF
            if delta >= 0x8000:
                delta -= 0x10000
            seq = last + delta
        if last is None or seq > last:
            self._last = seq
        if self._next is None:
            self._next = seq
        elif seq < self._next:
            return  # already reported as lost; too late
        if len(self._arrivals) < 4 * MAX_STATUS_COUNT:
            self._arrivals[seq] = arrival_us

    def feedback(self, sender_ssrc: int, media_ssrc: int) -> bytes | None:
        """The next feedback packet, or None if nothing arrived since the last one."""
        arrivals = self._arrivals
        if not arrivals or self._next is None:
            return None
        base = self._next
        if min(arrivals) - base >= MAX_STATUS_COUNT:
            # A jump of over MAX_STATUS_COUNT sequence numbers: report from the
            # next one that arrived rather than a feedback of nothing but losses.
            base = self._next = min(arrivals)
        end = min(max(arrivals), base + MAX_STATUS_COUNT - 1)
        first_arrival = min(arrivals[s] for s in range(base, end + 1) if s in arrivals)
        reference = first_arrival // REFERENCE_US
        previous = reference * REFERENCE_US
        symbols: list[int] = []
        deltas: list[bytes] = []
        last_included = base - 1
        for seq in range(base, end + 1):
            arrival = arrivals.get(seq)
            if arrival is None:
                symbols.append(NOT_RECEIVED)
                last_included = seq
                continue
            ticks = (
                (arrival - previous) // TICK_US
                if arrival >= previous
                else -((previous - arrival) // TICK_US)
            )
            if 0 <= ticks <= 0xFF:
                symbols.append(SMALL_DELTA)
                deltas.append(bytes([ticks]))
            elif -0x8000 <= ticks <= 0x7FFF:
                symbols.append(LARGE_DELTA)
                deltas.append(struct.pack("!h", ticks))
            else:
                break  # too far apart for one packet: the next feedback starts here
            previous += ticks * TICK_US
            last_included = seq
        while symbols and symbols[-1] == NOT_RECEIVED:
            symbols.pop()  # never end on losses we may still receive
            last_included -= 1
        if not symbols:
            return None
        for seq in range(base, last_included + 1):
            arrivals.pop(seq, None)
        self._next = last_included + 1
        body = struct.pack(
            "!IIHHI",
            sender_ssrc,
            media_ssrc,
            base & 0xFFFF,
            len(symbols),
            ((reference & 0xFFFFFF) << 8) | self._count,
        )
        self._count = (self._count + 1) & 0xFF
        body += _chunks(symbols) + b"".join(deltas)
        body += bytes(-len(body) % 4)
        return struct.pack("!BBH", 0x80 | FMT_TWCC, RTCP_RTPFB, len(body) // 4) + body


def _chunks(symbols: list[int]) -> bytes:
    out = []
    i, n = 0, len(symbols)
    while i < n:
        run = 1
        while i + run < n and symbols[i + run] == symbols[i] and run < 0x1FFF:
            run += 1
        if run >= 7:
            out.append(struct.pack("!H", (symbols[i] << 13) | run))  # run-length chunk
            i += run
            continue
        group = symbols[i : i + 7]
        word = 0xC000  # status vector chunk, two-bit symbols
        for j, symbol in enumerate(group):
            word |= symbol << (12 - 2 * j)
        out.append(struct.pack("!H", word))
        i += len(group)
    return b"".join(out)
