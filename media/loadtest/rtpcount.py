"""Header-only counting of received RTP, for load generators.

A load generator's subscriber exists to make the server send; what it must
report is what arrived: packets, bytes, loss, frames, keyframes, freezes.
aiortc's receive path (RTP parsing with header extensions, the remote bitrate
estimator, NACK generation, jitter buffering) costs several times what the
SFU spends forwarding the same packet, so with it one generator core cannot
keep 64 subscribers fed, and the benchmark would measure the generator.

:class:`RtpCounter` replaces one DTLS transport's RTP handler (after
aiortc's SRTP ``unprotect``, so the payload is readable) with a counter that
reads the fixed RTP header and, for VP8, the payload descriptor and frame tag:

- per SSRC: packets, bytes, extended highest sequence number, loss as
  RFC 3550 counts it (expected - received), RTX packets apart;
- per media stream: a frame ends with the marker bit; its size, whether it
  was a VP8 keyframe (or, for other codecs, the first frame), and the arrival
  time go to ``on_frame(mid, kind, nbytes, keyframe)``; a VP8 keyframe's
  picture size (which simulcast layer a subscriber gets) to
  ``on_size(mid, (width, height))``.

The server still gets the feedback a real receiver sends, so its RTCP work
is part of what a benchmark measures: each media stream's counts stand in
for aiortc's ``StreamStatistics``, so the receiver's own RTCP loop sends
receiver reports (fraction and cumulative lost, highest sequence number,
LSR/DLSR; jitter is not computed and reads 0), and every video stream sends a
REMB with its measured bitrate about once a second, as aiortc's estimator
does (unless ``remb=False``: :class:`media.loadtest.sfuclient.SfuClient`
sends one REMB for its whole connection instead). It sends no NACK and no
PLI: loss is reported as it happened. The mapping from SSRC to transceiver
is aiortc's own (SDP ``a=ssrc`` lines, then the ``mid`` header extension
through the router). The private names this
needs are reached through :mod:`media.loadtest.aiortc_compat`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci

from media.aiortc_compat import negotiated_codecs

from .aiortc_compat import (
    header_extensions_map,
    receiver_remote_streams,
    receiver_rtcp_ssrc,
    receiver_rtx_ssrcs,
    replace_rtp_handler,
    rtp_router,
    send_receiver_rtcp,
)
from .frames import vp8_frame_size

logger = logging.getLogger(__name__)


@dataclass
class StreamCount:
    """What arrived on one SSRC."""

    mid: str
    kind: str
    rtx: bool
    vp8: bool
    packets: int = 0
    bytes: int = 0
    base_seq: int = -1
    highest: int = -1  # extended (with wrap-arounds)
    frame_bytes: int = 0
    frame_key: bool = False
    frames: int = 0
    receiver: Any = None
    remb_at: float = 0.0
    remb_bytes: int = 0
    _expected_prior: int = 0
    _received_prior: int = 0

    @property
    def expected(self) -> int:
        return 0 if self.base_seq < 0 else self.highest - self.base_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)

    # --- what aiortc's receiver reads of a StreamStatistics (RR, getStats) --

    @property
    def packets_received(self) -> int:
        return self.packets

    @property
    def packets_lost(self) -> int:
        return min(self.expected - self.packets, 0x7FFFFF)

    @property
    def max_seq(self) -> int:
        return self.highest & 0xFFFF

    @property
    def jitter(self) -> int:
        return 0

    @property
    def fraction_lost(self) -> int:
        """Lost fraction since the last report, in 1/256 (read once per report)."""
        expected, received = self.expected, self.packets
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (received - self._received_prior)
        self._expected_prior, self._received_prior = expected, received
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval


def _vp8_frame_start(payload: bytes) -> int:
    """Where the VP8 frame starts in the first packet of a frame; -1 if not a first packet."""
    if len(payload) < 2:
        return -1
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit, partition 0
        return -1
    pos = 1
    if first & 0x80:  # X
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            pos += 2 if pos < len(payload) and payload[pos] & 0x80 else 1
        if ext & 0x40:  # L
            pos += 1
        if ext & 0x30:  # T or K
            pos += 1
    return pos if pos < len(payload) else -1


def vp8_keyframe(payload: bytes) -> bool:
    """Whether an RTP payload starts a VP8 keyframe (RFC 7741 descriptor, RFC 6386 tag)."""
    pos = _vp8_frame_start(payload)
    return pos >= 0 and payload[pos] & 0x01 == 0


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) of the VP8 keyframe an RTP payload starts, else None."""
    pos = _vp8_frame_start(payload)
    return vp8_frame_size(payload[pos:]) if pos >= 0 else None


class RtpCounter:
    """Counts the RTP arriving on ``pc``'s (bundled) DTLS transport."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        transport: Any,
        on_frame: Callable[[str, str, int, bool], None],
        on_size: Callable[[str, tuple[int, int]], None] | None = None,
        *,
        remb: bool = True,
    ) -> None:
        self._pc = pc
        self._remb = remb  # False: the owner sends one REMB for the connection
        self.transport = transport
        self._on_frame = on_frame
        self._on_size = on_size
        self.streams: dict[int, StreamCount | None] = {}
        replace_rtp_handler(transport, self._handle)

    async def _handle(self, data: bytes, arrival_time_ms: int) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        streams = self.streams
        if ssrc in streams:
            stream = streams[ssrc]
        else:
            stream = streams[ssrc] = self._identify(ssrc, data)
        if stream is None:
            return
        seq = (data[2] << 8) | data[3]
        stream.packets += 1
        stream.bytes += len(data)
        if stream.base_seq < 0:
            stream.base_seq = stream.highest = seq
        else:
            delta = (seq - stream.highest) & 0xFFFF
            if delta < 0x8000:  # ahead (a later packet, maybe after a gap)
                stream.highest += delta
        if stream.rtx:
            return
        header = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= header + 4:  # header extension
            header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
        payload = data[header:]
        if stream.frame_bytes == 0:
            if stream.vp8:
                stream.frame_key = vp8_keyframe(payload)
                if stream.frame_key and self._on_size is not None:
                    size = vp8_keyframe_size(payload)
                    if size is not None:
                        self._on_size(stream.mid, size)
            else:  # every audio frame stands alone; other video: the first only
                stream.frame_key = stream.kind == "audio" or stream.frames == 0
        stream.frame_bytes += len(payload)
        if data[1] & 0x80:  # marker: the frame is complete
            stream.frames += 1
            nbytes, stream.frame_bytes = stream.frame_bytes, 0
            self._on_frame(stream.mid, stream.kind, nbytes, stream.frame_key)
            if stream.kind == "video" and self._remb:
                now = time.monotonic()
                if now - stream.remb_at >= 1.0:
                    await self._send_remb(ssrc, stream, now)

    async def _send_remb(self, ssrc: int, stream: StreamCount, now: float) -> None:
        """Receiver Estimated Maximum Bitrate: what arrived over the last second."""
        elapsed = now - stream.remb_at
        bitrate = int((stream.bytes - stream.remb_bytes) * 8 / elapsed) if stream.remb_at else 0
        stream.remb_at, stream.remb_bytes = now, stream.bytes
        receiver = stream.receiver
        rtcp_ssrc = receiver_rtcp_ssrc(receiver)
        if bitrate <= 0 or rtcp_ssrc is None:
            return
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, [ssrc])
        )
        await send_receiver_rtcp(receiver, packet)

    def _identify(self, ssrc: int, data: bytes) -> StreamCount | None:
        """The stream of a new SSRC, as aiortc's router maps it (None: unknown)."""
        transport = self.transport
        router = rtp_router(transport)
        receiver = router.ssrc_table.get(ssrc)
        if receiver is None:
            try:
                packet = RtpPacket.parse(data, header_extensions_map(transport))
            except ValueError:
                return None
            receiver = router.route_rtp(packet)
        if receiver is None:
            return None
        transceiver = next((t for t in self._pc.getTransceivers() if t.receiver is receiver), None)
        if transceiver is None:
            return None
        receiver = transceiver.receiver
        rtx_ssrcs = receiver_rtx_ssrcs(receiver)
        codecs = negotiated_codecs(transceiver)
        mimes = {c.payloadType: str(c.mimeType).lower() for c in codecs}
        rtx = ssrc in rtx_ssrcs or mimes.get(data[1] & 0x7F) == "video/rtx"
        stream = StreamCount(
            mid=str(transceiver.mid),
            kind=str(transceiver.kind),
            rtx=rtx,
            vp8="video/vp8" in mimes.values(),
            receiver=receiver,
        )
        if not rtx:
            # aiortc's RTCP loop sends receiver reports for these (and
            # getStats() reads them): ours stand in for its statistics.
            receiver_remote_streams(receiver)[ssrc] = stream
        return stream

    def totals(self, kind: str) -> dict[str, int]:
        """Packets, loss and RTX packets of every stream of ``kind``."""
        out = {"packets": 0, "lost": 0, "rtx": 0, "bytes": 0}
        for stream in self.streams.values():
            if stream is None or stream.kind != kind:
                continue
            out["packets"] += stream.packets
            out["bytes"] += stream.bytes
            if stream.rtx:
                out["rtx"] += stream.packets
            else:
                out["lost"] += stream.lost
        return out
