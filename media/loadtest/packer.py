"""Pack-only stand-ins for aiortc encoders on the SFU's (and peers') senders.

``RTCRtpSender._next_encoded_frame`` calls ``encoder.pack()`` for anything that
is not an ``av.Frame`` and creates its encoder with ``get_encoder()`` on first
use. Presetting the sender's encoder with a :class:`Packer` means no codec
context is ever created for forwarded media (aiortc's ``OpusEncoder`` opens
libopus in its constructor even when it only packs).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import PACKET_MAX, Vp8Encoder


class _Packetable(Protocol):
    pts: int
    time_base: Any

    def __bytes__(self) -> bytes: ...


class Packer:
    """Splits one encoded frame into RTP payloads for a given codec."""

    def __init__(self, mime_type: str, clock_rate: int) -> None:
        self.mime_type = mime_type.lower()
        self.clock_rate = clock_rate
        self.picture_id = random.randint(0, (1 << 15) - 1)
        if self.mime_type not in ("video/vp8", "video/h264", "audio/opus"):
            raise ValueError(f"cannot forward {mime_type}")

    def timestamp(self, frame: _Packetable) -> int:
        """The RTP timestamp (before the sender's random origin) of ``frame``."""
        tb = frame.time_base
        if tb.denominator == self.clock_rate and tb.numerator == 1:
            return int(frame.pts)
        return int(frame.pts * tb * self.clock_rate)

    def pack(self, frame: _Packetable) -> tuple[list[bytes], int]:
        data = bytes(frame)
        timestamp = self.timestamp(frame)
        if self.mime_type == "video/vp8":
            payloads: list[bytes] = Vp8Encoder._packetize(data, self.picture_id)
            self.picture_id = (self.picture_id + 1) % (1 << 15)
        elif self.mime_type == "video/h264":
            payloads = H264Encoder._packetize(H264Encoder._split_bitstream(data))
        else:
            payloads = [data]
        return payloads, timestamp

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise RuntimeError("forwarding senders never encode raw frames")


# aiortc's VP8 packetizer always writes a 4-byte descriptor (15-bit picture
# id) before at most PACKET_MAX - 4 bytes of the frame.
VP8_CHUNK = PACKET_MAX - 4
_CHUNK_CACHE_SIZE = 16
_chunk_cache: OrderedDict[int, tuple[bytes, list[bytes]]] = OrderedDict()


def shared_vp8_chunks(data: bytes) -> list[bytes]:
    """``data`` split as aiortc's VP8 packetizer splits it, once for all subscribers.

    A publisher's frame reaches every subscriber as the same ``bytes`` object;
    the few most recent splits are kept by identity (holding the object, so
    its id cannot be reused meanwhile). Callers add their own descriptor.
    """
    key = id(data)
    entry = _chunk_cache.get(key)
    if entry is not None and entry[0] is data:
        return entry[1]
    chunks = [data[pos : pos + VP8_CHUNK] for pos in range(0, len(data), VP8_CHUNK)]
    _chunk_cache[key] = (data, chunks)
    if len(_chunk_cache) > _CHUNK_CACHE_SIZE:
        _chunk_cache.popitem(last=False)
    return chunks


def install_packer(sender: RTCRtpSender, mime_type: str, clock_rate: int) -> Packer:
    """Give ``sender`` a pack-only encoder so it never instantiates a codec."""
    packer = Packer(mime_type, clock_rate)
    setattr(sender, "_RTCRtpSender__encoder", packer)  # noqa: B010 (name-mangled private)
    return packer
