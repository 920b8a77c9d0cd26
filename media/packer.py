"""Pack-only stand-ins for aiortc encoders on the SFU's (and peers') senders.

``RTCRtpSender._next_encoded_frame`` calls ``encoder.pack()`` for anything that
is not an ``av.Frame`` and creates its encoder with ``get_encoder()`` on first
use. Presetting the sender's encoder with a :class:`Packer` means no codec
context is ever created for forwarded media (aiortc's ``OpusEncoder`` opens
libopus in its constructor even when it only packs).
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder


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

    def pack(self, frame: _Packetable) -> tuple[list[bytes], int]:
        data = bytes(frame)
        tb = frame.time_base
        if tb.denominator == self.clock_rate and tb.numerator == 1:
            timestamp = int(frame.pts)
        else:
            timestamp = int(frame.pts * tb * self.clock_rate)
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


def install_packer(sender: RTCRtpSender, mime_type: str, clock_rate: int) -> Packer:
    """Give ``sender`` a pack-only encoder so it never instantiates a codec."""
    packer = Packer(mime_type, clock_rate)
    setattr(sender, "_RTCRtpSender__encoder", packer)  # noqa: B010 (name-mangled private)
    return packer
