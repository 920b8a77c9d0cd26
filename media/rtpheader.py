"""RTP packets as they arrive from a publisher: a fast, total header parser.

:func:`parse_rtp` reads the fixed header (RFC 3550 5.1), the CSRC list, one-byte
(RFC 8285 4.2, profile ``0xBEDE``) and two-byte (4.3, ``0x100X``) header
extensions and the padding, and returns an :class:`RtpPacket` whose payload is
``data[payload_start:payload_end]``; nothing is copied. Any malformed input
raises :class:`MalformedPacket` (a ``ValueError``) and nothing else: this parses
network input, so it must survive every byte string.

:class:`ExtensionIds` maps the negotiated ``a=extmap`` ids of one connection to
the extensions the SFU reads (mid, rid, repaired-rid, abs-send-time, audio level,
transport-wide sequence number).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .udpout import ACCELERATED, _udpsend

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

_FIXED = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")


class MalformedPacket(ValueError):
    """Input that is not a well-formed RTP packet; ``reason`` names what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PyRtpPacket:
    """One parsed RTP packet; the payload is ``data[payload_start:payload_end]``.

    The reference of ``media._udpsend.RtpPacket`` (the C type :func:`parse_rtp`
    returns where the extension is built), which has the same attributes.
    """

    __slots__ = (
        "data",
        "extensions",
        "marker",
        "payload_end",
        "payload_start",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(
        self,
        data: bytes,
        marker: bool,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload_start: int,
        payload_end: int,
        extensions: dict[int, bytes] | None,
    ) -> None:
        self.data = data
        self.marker = marker
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload_start = payload_start
        self.payload_end = payload_end
        #: Extension id -> element bytes (one- or two-byte form alike); None if none.
        self.extensions = extensions

    @property
    def payload(self) -> bytes:
        return self.data[self.payload_start : self.payload_end]

    @property
    def payload_size(self) -> int:
        return self.payload_end - self.payload_start

    def extension(self, ext_id: int | None) -> bytes | None:
        if ext_id is None or self.extensions is None:
            return None
        return self.extensions.get(ext_id)

    def __repr__(self) -> str:
        return (
            f"RtpPacket(ssrc={self.ssrc:#x}, pt={self.payload_type}, "
            f"seq={self.sequence_number}, ts={self.timestamp}, m={int(self.marker)}, "
            f"payload={self.payload_size})"
        )


def _parse_extensions(data: bytes, profile: int, start: int, end: int) -> dict[int, bytes]:
    elements: dict[int, bytes] = {}
    pos = start
    if profile == 0xBEDE:  # one-byte form
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:  # reserved: stop parsing (RFC 8285 4.2)
                break
            length = (byte & 0x0F) + 1
            pos += 1
            if pos + length > end:
                raise MalformedPacket("header extension element overruns its block")
            elements[ext_id] = data[pos : pos + length]
            pos += length
    else:  # two-byte form, 0x100X
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:  # padding
                pos += 1
                continue
            if pos + 2 > end:
                raise MalformedPacket("header extension element overruns its block")
            length = data[pos + 1]
            pos += 2
            if pos + length > end:
                raise MalformedPacket("header extension element overruns its block")
            elements[ext_id] = data[pos : pos + length]
            pos += length
    return elements


def py_parse_or_reason(data: bytes) -> PyRtpPacket | str:
    """The packet, or why it is malformed (the reference of the C parser)."""
    try:
        return py_parse_rtp(data)
    except MalformedPacket as exc:
        return exc.reason


def py_parse_rtp(data: bytes) -> PyRtpPacket:
    """Parse ``data`` (an unprotected RTP packet) or raise :class:`MalformedPacket`."""
    size = len(data)
    if size < 12:
        raise MalformedPacket("shorter than an RTP header")
    first, second, seq, timestamp, ssrc = _FIXED.unpack_from(data)
    if first >> 6 != 2:
        raise MalformedPacket("not RTP version 2")
    pos = 12 + 4 * (first & 0x0F)
    if pos > size:
        raise MalformedPacket("CSRC list overruns the packet")
    extensions = None
    if first & 0x10:
        if pos + 4 > size:
            raise MalformedPacket("header extension overruns the packet")
        profile, words = _EXT_HEADER.unpack_from(data, pos)
        start = pos + 4
        pos = start + 4 * words
        if pos > size:
            raise MalformedPacket("header extension overruns the packet")
        if profile == 0xBEDE or profile & 0xFFF0 == 0x1000:
            extensions = _parse_extensions(data, profile, start, pos)
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or pos + padding > size:
            raise MalformedPacket("bad padding length")
        end -= padding
    return PyRtpPacket(
        data, bool(second & 0x80), second & 0x7F, seq, timestamp, ssrc, pos, end, extensions
    )


# The packet type the receive path makes: the C one where it is built.
if TYPE_CHECKING:
    RtpPacket = PyRtpPacket
    parse_or_reason: Callable[[bytes], PyRtpPacket | str]
elif ACCELERATED and _udpsend is not None:
    RtpPacket = _udpsend.RtpPacket
    parse_or_reason = _udpsend.parse_rtp
else:
    RtpPacket = PyRtpPacket
    parse_or_reason = py_parse_or_reason


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse ``data`` (an unprotected RTP packet) or raise :class:`MalformedPacket`.

    The receive path calls :data:`parse_or_reason` (one C call, a ``str``
    reason instead of an exception) directly.
    """
    packet = parse_or_reason(data)
    if isinstance(packet, str):
        raise MalformedPacket(packet)
    return packet


@dataclass(frozen=True, slots=True)
class ExtensionIds:
    """The negotiated extension ids of one connection (None: not negotiated)."""

    mid: int | None = None
    rid: int | None = None
    repaired_rid: int | None = None
    abs_send_time: int | None = None
    audio_level: int | None = None
    transport_cc: int | None = None

    @classmethod
    def from_extmap(cls, extmap: Iterable[tuple[int, str]]) -> ExtensionIds:
        """From ``(id, uri)`` pairs, e.g. the ``a=extmap`` lines of an answer."""
        by_uri = {uri: ext_id for ext_id, uri in extmap}
        return cls(
            mid=by_uri.get(URI_MID),
            rid=by_uri.get(URI_RID),
            repaired_rid=by_uri.get(URI_REPAIRED_RID),
            abs_send_time=by_uri.get(URI_ABS_SEND_TIME),
            audio_level=by_uri.get(URI_AUDIO_LEVEL),
            transport_cc=by_uri.get(URI_TRANSPORT_CC),
        )


def text_extension(value: bytes | None) -> str | None:
    """An SDES text extension (mid, rid) as a string; None if absent or not ASCII."""
    if not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None
