"""Transport-wide congestion control feedback: built for publishers, read from subscribers.

Chrome's bandwidth estimation for what it sends (GoogCC) is driven by the
receiver's transport-wide feedback (draft-holmer-rmcat-transport-wide-cc-
extensions-01): every packet carries a transport-wide sequence number in a
header extension, and the receiver reports, every ~50 ms, which of them
arrived and when. :class:`TwccRecorder` records arrivals and builds those
feedback packets (RTPFB, FMT 15): run-length chunks for runs of one status,
two-bit status vectors otherwise, receive deltas in 250 µs ticks (one byte
when small, two bytes signed otherwise).

:func:`parse_feedback` reads such a packet back: what a subscriber says of
the packets the SFU sent it (media/transportcc.py). It accepts anything and
returns None for what is not a well-formed feedback packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Feedback:
    """One transport-wide feedback packet, read."""

    media_ssrc: int
    base: int  # the first transport-wide sequence number it reports
    count: int  # its feedback packet count (8 bits)
    #: Per sequence number from ``base`` on: when it arrived (µs, the receiver's
    #: clock: only differences mean anything), None if it did not (yet).
    arrivals: list[int | None]


def parse_feedback(packet: bytes) -> Feedback | None:
    """The feedback of one RTPFB FMT 15 packet (its RTCP header included), or None."""
    if len(packet) < 20 or packet[0] & 0x1F != FMT_TWCC or packet[1] != RTCP_RTPFB:
        return None
    _, media_ssrc, base, status_count, word = struct.unpack_from("!IIHHI", packet, 4)
    reference = word >> 8
    if reference & 0x800000:
        reference -= 0x1000000
    symbols: list[int] = []
    pos = 20
    end = len(packet)
    while len(symbols) < status_count:
        if pos + 2 > end:
            return None
        (chunk,) = struct.unpack_from("!H", packet, pos)
        pos += 2
        if not chunk & 0x8000:  # run length
            symbol, run = (chunk >> 13) & 0x3, chunk & 0x1FFF
            symbols.extend([symbol] * min(run, status_count - len(symbols)))
        elif not chunk & 0x4000:  # fourteen one-bit symbols
            symbols.extend((chunk >> (13 - i)) & 0x1 for i in range(14))
        else:  # seven two-bit symbols
            symbols.extend((chunk >> (12 - 2 * i)) & 0x3 for i in range(7))
    del symbols[status_count:]
    arrivals: list[int | None] = []
    at = reference * REFERENCE_US
    for symbol in symbols:
        if symbol == NOT_RECEIVED:
            arrivals.append(None)
            continue
        if symbol == SMALL_DELTA:
            if pos + 1 > end:
                return None
            ticks = packet[pos]
            pos += 1
        elif symbol == LARGE_DELTA:
            if pos + 2 > end:
                return None
            (ticks,) = struct.unpack_from("!h", packet, pos)
            pos += 2
        else:
            return None  # the reserved symbol
        at += ticks * TICK_US
        arrivals.append(at)
    return Feedback(media_ssrc, base, word & 0xFF, arrivals)
