"""What the SFU reads of an RTP payload: frame starts, keyframes, VP8 picture ids.

Packet-level forwarding never depacketizes; it needs only to know whether a
packet starts a frame that a decoder can start from (the keyframe gate), and,
for VP8, where the picture id and TL0PICIDX sit in the payload descriptor
(RFC 7741 4.2) so each subscriber's stream keeps them continuous when its
source changes. Every function here takes untrusted bytes and never raises.
"""

from __future__ import annotations


class Vp8Descriptor:
    """Positions in one VP8 payload descriptor; offsets are from the payload start."""

    __slots__ = ("keyframe", "length", "picture_id", "picture_id_at", "start", "tl0", "tl0_at")

    def __init__(self) -> None:
        self.length = 0  # descriptor bytes before the VP8 data
        self.start = False  # S bit with partition 0: first packet of a frame
        self.keyframe = False  # ... of a keyframe (frame tag P bit 0)
        self.picture_id: int | None = None  # 15-bit ids only (7-bit ids are left as sent)
        self.picture_id_at = -1
        self.tl0: int | None = None
        self.tl0_at = -1


def parse_vp8(data: bytes, start: int, end: int) -> Vp8Descriptor | None:
    """The descriptor of the VP8 payload ``data[start:end]``; None if truncated."""
    if end - start < 1:
        return None
    desc = Vp8Descriptor()
    first = data[start]
    pos = start + 1
    if first & 0x80:  # X: extension byte
        if pos >= end:
            return None
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I: picture id
            if pos >= end:
                return None
            if data[pos] & 0x80:  # M: 15 bits
                if pos + 2 > end:
                    return None
                desc.picture_id = ((data[pos] & 0x7F) << 8) | data[pos + 1]
                desc.picture_id_at = pos - start
                pos += 2
            else:
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= end:
                return None
            desc.tl0 = data[pos]
            desc.tl0_at = pos - start
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    if pos > end:
        return None
    desc.length = pos - start
    desc.start = bool(first & 0x10) and first & 0x07 == 0
    desc.keyframe = desc.start and pos < end and data[pos] & 0x01 == 0
    return desc


def h264_keyframe_start(data: bytes, start: int, end: int) -> bool:
    """Whether an H.264 RTP payload (RFC 6184) starts an IDR picture or carries an SPS."""
    if end - start < 1:
        return False
    nal_type = data[start] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:  # STAP-A: 16-bit sizes, each followed by a NAL unit
        pos = start + 1
        while pos + 2 < end:
            size = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if size == 0 or pos + size > end:
                return False
            if data[pos] & 0x1F in (5, 7):
                return True
            pos += size
        return False
    if nal_type == 28:  # FU-A: start bit and the fragmented NAL's type
        if end - start < 2:
            return False
        header = data[start + 1]
        return bool(header & 0x80) and header & 0x1F in (5, 7)
    return False


def h264_frame_start(data: bytes, start: int, end: int) -> bool:
    """Whether an H.264 payload begins a NAL unit (not an FU-A continuation)."""
    if end - start < 1:
        return False
    if data[start] & 0x1F == 28:
        return end - start >= 2 and bool(data[start + 1] & 0x80)
    return True


def vp8_keyframe_size(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(width, height) a VP8 keyframe's first packet announces (RFC 6386 9.1); None if not one.

    The reference of the C receive path's reading (``media/_rtpparse.c``).
    """
    desc = parse_vp8(data, start, end)
    if desc is None or not desc.keyframe:
        return None
    pos = start + desc.length
    if pos + 10 > end or data[pos + 3 : pos + 6] != b"\x9d\x01\x2a":
        return None
    width = (data[pos + 6] | (data[pos + 7] << 8)) & 0x3FFF
    height = (data[pos + 8] | (data[pos + 9] << 8)) & 0x3FFF
    return width, height
