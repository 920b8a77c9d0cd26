"""What subscribers tell the SFU: their RTCP, read by Huddle instead of aiortc.

One :class:`SubscriberFeedback` per subscribe connection takes its SRTCP off
the socket (:func:`media.aiortc_compat.intercept_srtp`), as the receive path
does for publishers, and acts on each packet of a compound:

- generic NACK: the lost packets are resent from the publisher's packet cache
  (:meth:`media.fastsend.FastRtp.retransmit`);
- PLI and FIR: a keyframe request, relayed upstream (coalesced there);
- REMB: the subscriber's estimate of its downlink, kept (the adaptation
  reads it when there is no transport-wide feedback);
- transport-wide feedback (RTPFB FMT 15): handed to the connection's
  :class:`media.transportcc.TransportCc`, the send-side estimate;
- receiver reports: fraction lost, cumulative loss, jitter and the round-trip
  time (from LSR/DLSR against the sender reports we sent), kept per stream;
  the connection's loss for the estimate is counted over all its streams'
  packets (:data:`LOSS_MIN_PACKETS` at least), not one block's fraction.

Everything malformed is skipped; nothing here raises into the socket's protocol.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import rtcp
from .aiortc_compat import dtls_transport_of, intercept_srtp
from .metrics import MediaMetrics
from .srtpin import SrtpReceiver

logger = logging.getLogger(__name__)

_NTP_OFFSET = 2208988800
#: The estimate is told the connection's loss once receiver reports covered this
#: many packets since it was last told, counted over every stream (libwebrtc's
#: kLimitNumPackets): a block about a stream that carried two packets since its
#: last report, one lost, says "50 % lost" (measured behind a 400 kbit/s
#: shaper: a lowest layer waiting for its keyframe cut the estimate by a quarter).
LOSS_MIN_PACKETS = 20


class FeedbackTarget(Protocol):
    """A subscriber's sender as feedback sees it (a :class:`media.fastsend.FastRtp`)."""

    def resend(self, sequence_numbers: list[int]) -> int: ...
    def keyframe_wanted(self) -> None: ...
    def reported(self, report: StreamReport) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamReport:
    """One receiver report block about a stream we send."""

    fraction_lost: float  # 0..1, since the subscriber's previous report
    cumulative_lost: int
    jitter: int  # RTP timestamp units
    rtt: float | None  # seconds, None without a matching sender report


def _ntp_middle_now() -> int:
    """The middle 32 bits of the current NTP time (what LSR/DLSR are measured in)."""
    return int((time.time() + _NTP_OFFSET) * 65536) & 0xFFFFFFFF


class SubscriberFeedback:
    """Reads one subscribe connection's RTCP; ``lookup`` maps a media SSRC to its sender."""

    def __init__(
        self,
        name: str,
        lookup: Callable[[int], FeedbackTarget | None],
        *,
        metrics: MediaMetrics,
    ) -> None:
        self.name = name
        self._lookup = lookup
        self._metrics = metrics
        self._dtls: Any = None
        self._srtp: SrtpReceiver | None = None
        self._closed = False
        #: The subscriber's latest REMB (bit/s) and when it came, None before one.
        self.remb: int | None = None
        self.remb_at: float | None = None
        #: Told each transport-wide feedback packet, each round trip measured and
        #: each fraction lost a receiver report gives.
        self.on_transport_feedback: Callable[[bytes], None] | None = None
        self.on_rtt: Callable[[float], None] | None = None
        self.on_loss: Callable[[float], None] | None = None
        # Per reported SSRC: (cumulative lost, extended highest sequence number) of
        # its last block; and lost/expected summed since the estimate was told.
        self._extents: dict[int, tuple[int, int]] = {}
        self._lost = 0
        self._expected = 0
        self.nacks = 0
        self.keyframe_requests = 0
        self.reports = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return f"SubscriberFeedback({self.name})"

    def configure(self, pc: Any) -> None:
        """Take over the connection's incoming SRTCP (idempotent; call after each answer)."""
        if self._closed:
            return
        dtls = dtls_transport_of(pc)
        if dtls is not None and dtls is not self._dtls:
            self._dtls = dtls
            intercept_srtp(dtls, self._on_srtp)

    def _on_srtp(self, session: Any, data: bytes) -> None:
        if self._closed:
            return
        receiver = self._srtp
        if receiver is None or receiver.session is not session:
            receiver = self._srtp = SrtpReceiver(session)
        if not rtcp.is_rtcp(data):
            self.skipped += 1  # a subscriber sends no media on this connection
            return
        plain = receiver.rtcp(data)
        if plain is None:
            self.skipped += 1
            self._metrics.rtp_dropped("srtp")
            return
        try:
            self.handle(plain)
        except Exception:
            logger.exception("%r: failed on a feedback packet", self)

    def handle(self, data: bytes) -> None:
        """Act on one (unprotected) compound RTCP packet."""
        for packet_type, fmt, packet in rtcp.iter_rtcp(data):
            if packet_type == rtcp.RTCP_RTPFB and fmt == rtcp.FMT_NACK:
                self._nack(packet)
            elif packet_type == rtcp.RTCP_PSFB and fmt == rtcp.FMT_PLI:
                self._keyframe(_ssrc_at(packet, 8))
            elif packet_type == rtcp.RTCP_PSFB and fmt == rtcp.FMT_FIR:
                for pos in range(12, len(packet) - 7, 8):  # FCI: SSRC, seq nr, reserved
                    self._keyframe(_ssrc_at(packet, pos))
            elif packet_type == rtcp.RTCP_PSFB and fmt == rtcp.FMT_REMB:
                remb = rtcp.parse_remb(packet)
                if remb is not None:
                    self.remb, self.remb_at = remb[0], time.monotonic()
            elif packet_type == rtcp.RTCP_RTPFB and fmt == rtcp.FMT_TWCC:
                if self.on_transport_feedback is not None:
                    self.on_transport_feedback(packet)
            elif packet_type in (rtcp.RTCP_RR, rtcp.RTCP_SR):
                self._report_blocks(packet, packet_type, fmt)

    def _nack(self, packet: bytes) -> None:
        try:
            media_ssrc, lost = rtcp.parse_nack(packet)
        except ValueError:
            return
        target = self._lookup(media_ssrc)
        self._metrics.nack_received()
        if target is None:
            return
        self.nacks += len(lost)
        target.resend(lost[:64])  # a sane bound on one NACK's repair work

    def _keyframe(self, ssrc: int | None) -> None:
        target = self._lookup(ssrc) if ssrc is not None else None
        if target is not None:
            self.keyframe_requests += 1
            target.keyframe_wanted()

    def _report_blocks(self, packet: bytes, packet_type: int, count: int) -> None:
        start = 8 if packet_type == rtcp.RTCP_RR else 28
        now_middle = _ntp_middle_now()
        for i in range(count):
            pos = start + 24 * i
            if pos + 24 > len(packet):
                return
            ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", packet, pos)
            target = self._lookup(ssrc)
            if target is None:
                continue
            cumulative = lost_word & 0xFFFFFF
            if cumulative & 0x800000:
                cumulative -= 0x1000000
            rtt = None
            if lsr:
                rtt = max(0.0, ((now_middle - lsr - dlsr) & 0xFFFFFFFF) / 65536)
                if self.on_rtt is not None:
                    self.on_rtt(rtt)
            self.reports += 1
            fraction = (lost_word >> 24) / 256
            self._count_loss(ssrc, cumulative, highest)
            target.reported(StreamReport(fraction, cumulative, jitter, rtt))
        if self._expected >= LOSS_MIN_PACKETS:
            lost, expected = self._lost, self._expected
            self._lost = self._expected = 0
            if self.on_loss is not None:
                self.on_loss(min(1.0, max(0, lost) / expected))

    def _count_loss(self, ssrc: int, cumulative: int, highest: int) -> None:
        """Add what one block says was expected and lost since that stream's last."""
        previous = self._extents.get(ssrc)
        self._extents[ssrc] = (cumulative, highest)
        if previous is None:
            return
        expected = (highest - previous[1]) & 0xFFFFFFFF
        if 0 < expected < 0x8000:  # otherwise a reset stream or a reordered report
            self._expected += expected
            self._lost += max(-expected, min(cumulative - previous[0], expected))

    def close(self) -> None:
        """Stop acting on feedback (idempotent)."""
        self._closed = True


def _ssrc_at(packet: bytes, pos: int) -> int | None:
    if pos + 4 > len(packet):
        return None
    return int.from_bytes(packet[pos : pos + 4], "big")
