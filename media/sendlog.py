"""What one subscriber connection sent, by transport-wide sequence number.

The send half of transport-wide congestion control (transport-cc): every
packet the SFU sends on a connection that negotiated the transport-wide
sequence number extension gets the connection's next number, stamped by the
down (:mod:`media.downstream`), and an entry in the connection's log: when it
left and its size on the wire (with its IP and UDP headers,
:data:`TRANSPORT_OVERHEAD`). The subscriber's feedback says which numbers
arrived when (:func:`media.twcc.parse_feedback`); :mod:`media.transportcc`
looks the send side up here to feed the estimator (:mod:`media.gcc`).

The log is a ring of :data:`SIZE` entries: numbers older than that are
forgotten. ``media._udpsend.SendLog`` (``media/_sendlog.c``) is the one the
C downs write; :class:`PySendLog` is its twin for the Python downs, same
interface, tested against each other. Times are ``time.monotonic`` in
microseconds.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .udpout import _udpsend

#: Entries kept (a power of two; the C log's SENDLOG_SIZE).
SIZE = 8192
#: What a datagram costs a link beyond itself, counted in its size here: its IPv4
#: and UDP headers (the C log's TRANSPORT_OVERHEAD). The estimate is of what the
#: link carries, as libwebrtc's: a 400 kbit/s shaper counts 28 bytes more per
#: packet than the SRTP the SFU writes, 12 % at audio's and a lowest layer's rates.
TRANSPORT_OVERHEAD = 28


def monotonic_us() -> int:
    """The log's clock: ``time.monotonic`` in microseconds."""
    return time.monotonic_ns() // 1000


class SendLog(Protocol):
    """What :class:`PySendLog` and ``media._udpsend.SendLog`` both are."""

    @property
    def next(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def disorder(self) -> int: ...
    def take(self, size: int, /) -> int: ...
    def lookup(self, base: int, count: int, /) -> list[tuple[int, int] | None]: ...


class PySendLog:
    """The Python twin of ``media._udpsend.SendLog``."""

    def __init__(self, first: int = 0) -> None:
        self.next = first & 0xFFFF
        self.packets = 0
        self.bytes = 0
        self.disorder = 0  # packets logged out of number order (0 unless a bug)
        self._last_logged: int | None = None
        self._ring: list[tuple[int, int, int] | None] = [None] * SIZE  # (seq, at_us, size)
        #: The down whose queued batch holds numbered packets not sent yet (see
        #: media/_udpsend.h): another down numbering a packet sends it first.
        self.pending: Any = None

    def stamp(self) -> int:
        """The next number (the down writes it, then :meth:`record` s the packet)."""
        seq = self.next
        self.next = (seq + 1) & 0xFFFF
        return seq

    def record(self, seq: int, size: int, at_us: int) -> None:
        size += TRANSPORT_OVERHEAD
        self._ring[seq & (SIZE - 1)] = (seq, at_us, size)
        if self._last_logged is not None and seq != (self._last_logged + 1) & 0xFFFF:
            self.disorder += 1
        self._last_logged = seq
        self.packets += 1
        self.bytes += size

    def take(self, size: int) -> int:
        if size < 0:
            raise ValueError("size must be >= 0")
        seq = self.stamp()
        self.record(seq, size, monotonic_us())
        return seq

    def lookup(self, base: int, count: int) -> list[tuple[int, int] | None]:
        if not 0 <= count <= SIZE:
            raise ValueError("count must be within 0 .. the log's size")
        out: list[tuple[int, int] | None] = []
        ring = self._ring
        for i in range(count):
            seq = (base + i) & 0xFFFF
            entry = ring[seq & (SIZE - 1)]
            out.append((entry[1], entry[2]) if entry is not None and entry[0] == seq else None)
        return out


def new_log(accelerated: bool) -> SendLog:
    """A log for the C downs (``accelerated``) or the Python ones."""
    if accelerated and _udpsend is not None:
        log: SendLog = _udpsend.SendLog()
        return log
    return PySendLog()
