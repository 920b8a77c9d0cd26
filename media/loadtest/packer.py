"""Pack-only stand-ins for aiortc encoders on the load tester's publishing senders.

``RTCRtpSender._next_encoded_frame`` calls ``encoder.pack()`` for anything that
is not an ``av.Frame`` and creates its encoder with ``get_encoder()`` on first
use. Presetting the sender's encoder with a :class:`Packer` means no codec
context is ever created for pre-encoded media (aiortc's ``OpusEncoder`` opens
libopus in its constructor even when it only packs).
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from aiortc import RTCRtpSender

from .aiortc_compat import h264_payloads, preset_encoder, vp8_payloads


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
            payloads = vp8_payloads(data, self.picture_id)
            self.picture_id = (self.picture_id + 1) % (1 << 15)
        elif self.mime_type == "video/h264":
            payloads = h264_payloads(data)
        else:
            payloads = [data]
        return payloads, timestamp

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise RuntimeError("forwarding senders never encode raw frames")


def install_packer(sender: RTCRtpSender, mime_type: str, clock_rate: int) -> Packer:
    """Give ``sender`` a pack-only encoder so it never instantiates a codec."""
    packer = Packer(mime_type, clock_rate)
    preset_encoder(sender, packer)
    return packer
