"""The node-to-node relay's datagram format: framing, authentication, replay window.

When a room spans nodes (docs/architecture.md, "Rooms across nodes"), a
publisher's track crosses to every other node with subscribers once, as UDP
datagrams between the two nodes' relay sockets (one socket per node, so one
socket pair per node pair). Each datagram::

    0   2  magic  b"HR"
    2   1  version 1
    3   1  type   1 RTP, 3 RTP that starts a new source (a simulcast layer switch on
                  the publisher's node: the receiver's subscribers start over at it),
                  2 PLI (keyframe request, back to the publisher's node),
                  4 NACK (sequence numbers lost between the nodes, back to the
                  publisher's node, which sends them again from its cache)
    4   4  stream the relayed track, as the publisher's node numbered it
    8   8  counter  per sending socket, strictly increasing (replay window)
    16  n  body   RTP: one RTP packet (header, audio level extension, payload); PLI: empty;
                  NACK: 1 to 64 sequence numbers, 16 bits each
    16+n 16 tag   HMAC-SHA256(cluster secret, bytes 0..16+n), first 16 bytes

This is network input: :func:`parse` takes any byte string and either returns
a :class:`Frame` or raises :class:`BadFrame` (with a ``reason`` for the drop
counter); a datagram whose tag does not verify under the cluster secret is
refused before anything else is read. :class:`ReplayWindow` refuses a
counter seen before or more than 1024 behind the newest (a replayed or much
reordered datagram); a sender starts its counter at the wall clock in
nanoseconds, so a restarted node's counters are above its old ones.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from dataclasses import dataclass

MAGIC = b"HR"
VERSION = 1
RTP = 1
PLI = 2
RTP_SWITCH = 3
NACK = 4
TYPES = frozenset({RTP, PLI, RTP_SWITCH, NACK})
#: At most this many sequence numbers in one NACK frame.
MAX_NACK = 64

_HEAD = struct.Struct("!2sBBIQ")
HEAD_SIZE = _HEAD.size  # 16
TAG_SIZE = 16
#: The largest datagram accepted (an RTP packet of a full-size UDP datagram plus framing).
MAX_DATAGRAM = 1500 + HEAD_SIZE + TAG_SIZE
#: Counters this far behind the newest are refused as too old.
WINDOW = 1024


class BadFrame(ValueError):
    """A datagram that is not a valid relay frame; ``reason`` labels the drop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    type: int
    stream: int
    counter: int
    body: bytes


def relay_key(secret: str) -> bytes:
    """The HMAC key of the relay from the cluster secret (``HUDDLE_RELAY_SECRET``, or
    the JWT secret every node of a cluster shares), domain-separated from its other use."""
    return hmac.new(secret.encode(), b"huddle relay v1", hashlib.sha256).digest()


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")[:TAG_SIZE]


def encode(key: bytes, kind: int, stream: int, counter: int, body: bytes = b"") -> bytes:
    """One authenticated datagram."""
    if kind not in TYPES:
        raise ValueError(f"unknown relay frame type {kind}")
    head = _HEAD.pack(MAGIC, VERSION, kind, stream & 0xFFFFFFFF, counter & 0xFFFFFFFFFFFFFFFF)
    data = head + body
    return data + _tag(key, data)


def parse(key: bytes, datagram: bytes) -> Frame:
    """A verified frame, or :class:`BadFrame` (total: any input)."""
    size = len(datagram)
    if size < HEAD_SIZE + TAG_SIZE:
        raise BadFrame("short")
    if size > MAX_DATAGRAM:
        raise BadFrame("long")
    if datagram[:2] != MAGIC:
        raise BadFrame("magic")
    data, tag = datagram[:-TAG_SIZE], datagram[-TAG_SIZE:]
    if not hmac.compare_digest(_tag(key, data), tag):
        raise BadFrame("auth")
    _, version, kind, stream, counter = _HEAD.unpack_from(data)
    if version != VERSION:
        raise BadFrame("version")
    if kind not in TYPES:
        raise BadFrame("type")
    body = data[HEAD_SIZE:]
    if kind == PLI and body:
        raise BadFrame("body")
    if kind == NACK and (not body or len(body) % 2 or len(body) > 2 * MAX_NACK):
        raise BadFrame("body")
    if kind in (RTP, RTP_SWITCH) and len(body) < 12:
        raise BadFrame("body")
    return Frame(kind, stream, counter, body)


def nack_body(seqs: list[int]) -> bytes:
    """The body of a NACK frame (at most :data:`MAX_NACK` sequence numbers)."""
    return b"".join(struct.pack("!H", seq & 0xFFFF) for seq in seqs[:MAX_NACK])


def nack_seqs(body: bytes) -> list[int]:
    """The sequence numbers of a parsed NACK frame's body."""
    return [value for (value,) in struct.iter_unpack("!H", body)]


class Counter:
    """A sending socket's frame counter: starts at the wall clock (ns), +1 per frame."""

    def __init__(self, start: int | None = None) -> None:
        self._next = time.time_ns() if start is None else start

    def take(self) -> int:
        value = self._next
        self._next += 1
        return value


class ReplayWindow:
    """The counters seen from one peer: refuses repeats and those too far behind."""

    def __init__(self, size: int = WINDOW) -> None:
        self._size = size
        self._top: int | None = None
        self._seen = 0  # bit i: top - i was seen

    def accept(self, counter: int) -> bool:
        """Whether ``counter`` is new (and remember it)."""
        top = self._top
        if top is None or counter > top:
            shift = self._size if top is None else counter - top
            mask = (1 << self._size) - 1
            self._seen = ((self._seen << shift) | 1) & mask if shift < self._size else 1
            self._top = counter
            return True
        behind = top - counter
        if behind >= self._size:
            return False
        bit = 1 << behind
        if self._seen & bit:
            return False
        self._seen |= bit
        return True
