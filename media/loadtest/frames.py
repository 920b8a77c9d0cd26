"""Encoded frames as they travel through the SFU, and keyframe detection."""

from __future__ import annotations

import fractions
from dataclasses import dataclass

import av

VIDEO_CLOCK_RATE = 90000
AUDIO_CLOCK_RATE = 48000
_TIME_BASES: dict[int, fractions.Fraction] = {}


def time_base_for(clock_rate: int) -> fractions.Fraction:
    """The (cached) time base of an RTP clock rate."""
    tb = _TIME_BASES.get(clock_rate)
    if tb is None:
        tb = _TIME_BASES[clock_rate] = fractions.Fraction(1, clock_rate)
    return tb


@dataclass(slots=True)
class EncodedFrame:
    """One encoded audio/video frame, never decoded by the SFU.

    Duck-typed like ``av.Packet`` for aiortc's ``Encoder.pack()`` (``bytes()``,
    ``pts``, ``time_base``), but a plain object: each subscriber gets its own
    instance (its pts is rebased) sharing the same immutable ``data``, which
    an ``av.Packet`` would copy.
    """

    data: bytes
    pts: int
    time_base: fractions.Fraction
    keyframe: bool

    def __bytes__(self) -> bytes:
        return self.data

    def with_pts(self, pts: int) -> EncodedFrame:
        return EncodedFrame(self.data, pts, self.time_base, self.keyframe)

    def to_packet(self) -> av.Packet:  # type: ignore[type-arg]
        """An ``av.Packet`` copy, for consumers that want PyAV objects."""
        packet = av.Packet(self.data)
        packet.pts = self.pts
        packet.time_base = self.time_base
        packet.is_keyframe = self.keyframe
        return packet


def is_vp8_keyframe(data: bytes) -> bool:
    """VP8 frame tag: bit 0 of the first byte is 0 for a keyframe (RFC 6386 9.1)."""
    return len(data) > 0 and data[0] & 0x01 == 0


def vp8_frame_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (RFC 6386 9.1: after the tag, the start
    code 9d 01 2a, then 14-bit width and height), None for an interframe.

    A simulcast subscriber tells the layers apart by it: the SFU sends every
    layer on one SSRC.
    """
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def is_h264_keyframe(data: bytes) -> bool:
    """Annex-B access unit containing an IDR slice (5) or an SPS (7)."""
    pos = data.find(b"\x00\x00\x01")
    while pos != -1 and pos + 3 < len(data):
        if data[pos + 3] & 0x1F in (5, 7):
            return True
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return False


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether ``data`` (a whole depayloaded frame) starts a decodable sequence."""
    name = codec_name.lower()
    if name == "vp8":
        return is_vp8_keyframe(data)
    if name == "h264":
        return is_h264_keyframe(data)
    return True  # audio: every frame stands alone
