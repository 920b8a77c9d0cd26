"""The SFU's receive path: a publisher's SRTP in, parsed packets out to its tracks.

One :class:`PublisherInbound` per publish connection takes every SRTP/SRTCP
datagram straight from the ICE connection (:func:`media.aiortc_compat.intercept_srtp`),
so aiortc's receivers never see media:

    datagram -> unprotect -> parse_rtp -> stream by SSRC (then mid, then payload
    type for unsignalled SSRCs; RTX by its own SSRC) -> loss/jitter statistics
    and NACK tracking -> the track's sink (``UpTrack.on_packet``)

and sends the publisher the RTCP a receiver owes it: NACKs for missing video
packets (at once, then retried, see :class:`media.nack.NackTracker`), PLIs
asked for by the tracks, and every 0.5-1.5 s a receiver report per stream
plus a REMB announcing ``remb_bitrate`` for its video (a ceiling, like
Janus's per-room ``bitrate``; the publisher's own loss-based control still
works under it). Everything malformed is dropped and counted by reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pylibsrtp
from aiortc.sdp import SessionDescription

from . import rtcp
from .aiortc_compat import dtls_transport_of, intercept_srtp, send_srtcp
from .metrics import MediaMetrics
from .nack import NackTracker
from .rtpheader import ExtensionIds, RtpPacket, parse_or_reason, text_extension
from .simulcast import offered_layers
from .srtpin import SrtpReceiver
from .twcc import TwccRecorder
from .udpout import ACCELERATED, _udpsend

#: How often transport-wide feedback goes to a publisher that negotiated it.
TWCC_INTERVAL = 0.05

logger = logging.getLogger(__name__)


class PacketSink(Protocol):
    """Where a stream's packets go (an :class:`media.forwarder.UpTrack`)."""

    def on_packet(self, packet: RtpPacket) -> None: ...
    def repaired(self, nbytes: int) -> None:
        """The next packet (``nbytes`` of payload) came as a retransmission (RTX)."""

    def request_keyframe(self) -> None: ...
    def layer(self, rid: str) -> PacketSink:
        """The sink of simulcast layer ``rid`` of this track."""

    def sync(self) -> None:
        """Periodic (each receiver report): bring counters kept in C up to date."""


@dataclass
class MLine:
    """What the publisher's offer and our answer say about one m-line."""

    mid: str
    kind: str
    clock_rate: int
    media_pts: frozenset[int]
    rtx_apt: dict[int, int]  # RTX payload type -> the payload type it repairs
    ssrcs: list[int] = field(default_factory=list)  # signalled media SSRCs
    rtx_ssrcs: dict[int, int] = field(default_factory=dict)  # RTX SSRC -> media SSRC (FID)
    nack: bool = False
    rids: tuple[str, ...] = ()  # simulcast layers offered (lowest first), media.simulcast


class ReceptionStats:
    """One SSRC's RFC 3550 reception statistics and NACK tracking.

    The reference of the C receive path's ``media._udpsend.InStream`` (same
    attributes, same :meth:`received`), which the fast path updates in place.
    """

    def __init__(
        self,
        ssrc: int,
        clock_rate: int,
        media_pts: frozenset[int],
        rtx_apt: dict[int, int],
        nack: NackTracker | None,
    ) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.nack = nack
        self.packets = 0
        self.bytes = 0
        self.base_seq = -1
        self.max_seq = -1
        self.cycles = 0
        self.jitter = 0.0
        self._transit: float | None = None

    def set_types(self, media_pts: frozenset[int], rtx_apt: dict[int, int]) -> None:
        """The payload types the C fast path accepts (nothing to do here)."""

    def received(self, seq: int, timestamp: int, now: float) -> bool:
        """Count one packet; True when it opened a gap worth a NACK."""
        self.packets += 1
        if self.base_seq < 0:
            self.base_seq = self.max_seq = seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < self.max_seq:
                    self.cycles += 1 << 16
                self.max_seq = seq
        # Interarrival jitter (RFC 3550 A.8), in timestamp units.
        transit = now * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < self.clock_rate * 10:  # ignore timestamp jumps (source switch)
                self.jitter += (d - self.jitter) / 16
        self._transit = transit
        nack = self.nack
        return nack is not None and nack.received(seq, now)


class InboundStream:
    """One incoming media SSRC: its m-line, reception statistics, sink, reports."""

    def __init__(
        self,
        ssrc: int,
        mline: MLine,
        nack: NackTracker | None,
        *,
        rid: str | None = None,
        accelerated: bool = False,
    ) -> None:
        self.ssrc = ssrc
        self.mline = mline
        self.rid = rid  # the simulcast layer it carries, None if not simulcast
        self.kind = mline.kind
        self.clock_rate = mline.clock_rate
        self.nack = nack
        self.sink: PacketSink | None = None
        stats_type: Any = ReceptionStats
        if accelerated:
            assert _udpsend is not None
            stats_type = _udpsend.InStream
        self.stats: ReceptionStats = stats_type(
            ssrc, mline.clock_rate, mline.media_pts, mline.rtx_apt, nack
        )
        self._expected_prior = 0
        self._received_prior = 0
        self.sr_ntp_middle = 0
        self.sr_at = 0.0

    @property
    def packets(self) -> int:
        return self.stats.packets

    @property
    def jitter(self) -> float:
        return self.stats.jitter

    def set_mline(self, mline: MLine) -> None:
        self.mline = mline
        self.stats.set_types(mline.media_pts, mline.rtx_apt)

    def set_sink(self, sink: PacketSink | None) -> None:
        """Hand this stream's packets to ``sink`` (the C fast path to its C half, if any)."""
        self.sink = sink
        stats: Any = self.stats
        if isinstance(stats, ReceptionStats):
            return
        fast = getattr(sink, "fast_sink", None) if sink is not None else None
        stats.sink = fast
        stats.slow = int(sink is not None and fast is None)

    def received(self, seq: int, timestamp: int, now: float) -> bool:
        """Count one packet; True when it opened a gap worth a NACK."""
        return self.stats.received(seq, timestamp, now)

    def report(self, now: float) -> rtcp.ReportBlock:
        stats = self.stats
        extended = stats.cycles + stats.max_seq
        expected = extended - stats.base_seq + 1
        lost = expected - stats.packets
        expected_interval = expected - self._expected_prior
        received_interval = stats.packets - self._received_prior
        self._expected_prior, self._received_prior = expected, stats.packets
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = int((now - self.sr_at) * 65536) if self.sr_at else 0
        return rtcp.ReportBlock(
            self.ssrc, fraction, lost, extended, int(stats.jitter), self.sr_ntp_middle, dlsr
        )


def parse_mlines(
    remote_sdp: str, local_sdp: str, layers: dict[str, tuple[str, ...]] | None = None
) -> tuple[dict[str, MLine], ExtensionIds]:
    """The m-lines a publisher sends on, and the extension ids our answer accepted.

    ``layers``: the simulcast layers of the offer as sent (aiortc's
    ``remoteDescription`` re-serialises the offer without its ``a=rid`` and
    ``a=simulcast`` lines), :func:`media.simulcast.offered_layers`.
    """
    remote = SessionDescription.parse(remote_sdp)
    local = SessionDescription.parse(local_sdp)
    extmap: list[tuple[int, str]] = []
    nack_mids = set()
    for media in local.media:
        extmap.extend((int(ext.id), str(ext.uri)) for ext in media.rtp.headerExtensions)
        for codec in media.rtp.codecs:
            if any(fb.type == "nack" and not fb.parameter for fb in codec.rtcpFeedback):
                nack_mids.add(media.rtp.muxId)
    accepted = {(m.rtp.muxId, c.payloadType) for m in local.media for c in m.rtp.codecs}
    if layers is None:
        layers = offered_layers(remote_sdp)
    mlines: dict[str, MLine] = {}
    for media in remote.media:
        mid = media.rtp.muxId
        if not mid or media.kind not in ("audio", "video"):
            continue
        codecs = [c for c in media.rtp.codecs if (mid, c.payloadType) in accepted]
        plain = [c for c in codecs if c.name.lower() != "rtx"]
        if not plain:
            continue
        rtx_apt: dict[int, int] = {}
        for codec in codecs:
            apt = codec.parameters.get("apt")
            if codec.name.lower() == "rtx" and codec.payloadType is not None and apt is not None:
                rtx_apt[codec.payloadType] = int(apt)
        mline = MLine(
            mid=mid,
            kind=media.kind,
            clock_rate=int(plain[0].clockRate or 90000),
            media_pts=frozenset(c.payloadType for c in plain if c.payloadType is not None),
            rtx_apt=rtx_apt,
            nack=media.kind == "video" and mid in nack_mids,
            rids=layers.get(mid, ()),
        )
        fid: dict[int, int] = {}
        for group in media.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                fid[int(group.items[1])] = int(group.items[0])
        rtx = set(fid)
        mline.ssrcs = [int(s.ssrc) for s in media.ssrc if int(s.ssrc) not in rtx]
        mline.rtx_ssrcs = fid
        mlines[mid] = mline
    return mlines, ExtensionIds.from_extmap(extmap)


class PublisherInbound:
    """The receive path and upstream RTCP of one publish connection."""

    def __init__(
        self,
        name: str,
        *,
        metrics: MediaMetrics,
        remb_bitrate: int,
        clock: Callable[[], float] = time.monotonic,
        accelerated: bool | None = None,
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._remb_bitrate = remb_bitrate
        self._clock = clock
        self.ssrc = random.getrandbits(32) or 1  # ours, as an RTCP sender
        self._dtls: Any = None
        self._srtp: SrtpReceiver | None = None
        self._mlines: dict[str, MLine] = {}
        self.ids = ExtensionIds()
        self._streams: dict[int, InboundStream] = {}  # media SSRC -> stream
        self._rtx: dict[int, InboundStream] = {}  # RTX SSRC -> the stream it repairs
        self._unknown: set[int] = set()  # SSRCs we could not place (counted once)
        self._sinks: dict[str, PacketSink] = {}  # mid -> sink
        self._nack_handle: asyncio.TimerHandle | None = None
        self._nack_soon = False
        self._pending_sends: set[asyncio.Future[Any]] = set()
        self._rtcp_task: asyncio.Task[None] | None = None
        self._closed = False
        self._dropped: dict[str, int] = {}
        self._twcc: TwccRecorder | None = None
        self._twcc_id: int | None = None
        self._twcc_task: asyncio.Task[None] | None = None
        self.twcc_feedbacks = 0
        # The C receive path (media/_receive.c) takes the common case; it reads
        # time.monotonic itself, so an injected clock means the Python path.
        use_c = ACCELERATED if accelerated is None else accelerated
        self._c: Any = None
        if use_c and clock is time.monotonic:
            if _udpsend is None:
                raise RuntimeError("media._udpsend is not built")
            self._c = _udpsend.Receiver(self._on_srtcp, self._on_rtp_guarded, self._schedule_nacks)
        self._rtx_packets = 0

    @property
    def accelerated(self) -> bool:
        return self._c is not None

    @property
    def fast_packets(self) -> int:
        """RTP packets the C receive path handled end to end (0 on the Python path)."""
        return self._c.fast_packets if self._c is not None else 0

    @property
    def rtx_packets(self) -> int:
        """RTX packets unwrapped (both paths)."""
        return self._rtx_packets + (self._c.rtx_packets if self._c is not None else 0)

    def __repr__(self) -> str:
        return f"PublisherInbound({self.name})"

    # --- configuration -------------------------------------------------------

    def configure(self, pc: Any, layers: dict[str, tuple[str, ...]] | None = None) -> None:
        """Read the negotiated m-lines and take over the connection's media (idempotent).

        Called after every publish negotiation; streams already seen stay.
        ``layers``: the simulcast layers of the publisher's offer as it sent it
        (:func:`media.simulcast.offered_layers`): aiortc's ``remoteDescription``
        is re-serialised from its own parse and has lost the ``a=rid`` and
        ``a=simulcast`` lines, so without it no m-line is taken as simulcast.
        """
        if self._closed:
            return
        local, remote = pc.localDescription, pc.remoteDescription
        if local is None or remote is None:
            return
        self._mlines, self.ids = parse_mlines(remote.sdp, local.sdp, layers)
        self._twcc_id = self.ids.transport_cc
        if self._c is not None:
            level = self.ids.audio_level
            self._c.twcc_id = -1 if self._twcc_id is None else self._twcc_id
            self._c.level_id = -1 if level is None else level
        if self._twcc_id is not None and self._twcc is None:
            self._twcc = TwccRecorder()
            self._twcc_task = asyncio.get_running_loop().create_task(
                self._twcc_loop(), name=f"twcc {self.name}"
            )
        for mline in self._mlines.values():
            for ssrc in mline.ssrcs:
                if ssrc not in self._streams:
                    self._add_stream(ssrc, mline)
            for rtx_ssrc, media_ssrc in mline.rtx_ssrcs.items():
                stream = self._streams.get(media_ssrc)
                if stream is not None:
                    self._rtx[rtx_ssrc] = stream
        for ssrc, stream in list(self._streams.items()):
            if stream.mline.mid not in self._mlines:
                del self._streams[ssrc]
            else:
                stream.set_mline(self._mlines[stream.mline.mid])
        self._sync()
        dtls = dtls_transport_of(pc)
        if dtls is not None and dtls is not self._dtls:
            self._dtls = dtls
            intercept_srtp(dtls, self._on_srtp, fast=self._c)
        if self._rtcp_task is None:
            self._rtcp_task = asyncio.get_running_loop().create_task(
                self._rtcp_loop(), name=f"rtcp {self.name}"
            )

    def bind(self, mid: str, sink: PacketSink) -> None:
        """Send the packets of m-line ``mid`` to ``sink`` from now on."""
        self._sinks[mid] = sink
        for stream in self._streams.values():
            if stream.mline.mid == mid:
                stream.set_sink(self._sink_of(stream))

    def unbind(self, mid: str, sink: PacketSink) -> None:
        if self._sinks.get(mid) is sink:
            del self._sinks[mid]
            for stream in self._streams.values():
                if stream.sink is sink:
                    stream.set_sink(None)

    def media_ssrc(self, mid: str, rid: str | None = None) -> int | None:
        """The SSRC m-line ``mid`` (its layer ``rid``) is received on (the first, if several)."""
        for stream in self._streams.values():
            if stream.mline.mid == mid and stream.packets and (rid is None or stream.rid == rid):
                return stream.ssrc
        return None

    def rids_of(self, mid: str) -> tuple[str, ...]:
        """The simulcast layers m-line ``mid`` offered, lowest first (empty: not simulcast)."""
        mline = self._mlines.get(mid)
        return mline.rids if mline is not None else ()

    def _sink_of(self, stream: InboundStream) -> PacketSink | None:
        sink = self._sinks.get(stream.mline.mid)
        if sink is None or stream.rid is None:
            return sink
        return sink.layer(stream.rid)

    def _add_stream(self, ssrc: int, mline: MLine, rid: str | None = None) -> InboundStream:
        nack = NackTracker() if mline.nack else None
        stream = InboundStream(ssrc, mline, nack, rid=rid, accelerated=self._c is not None)
        self._streams[ssrc] = stream
        stream.set_sink(self._sink_of(stream))
        self._unknown.discard(ssrc)
        self._sync()
        return stream

    def _sync(self) -> None:
        """Give the C receive path the current streams (after every change)."""
        if self._c is not None:
            self._c.set_streams(
                [(ssrc, s.stats) for ssrc, s in self._streams.items()],
                [(ssrc, s.stats) for ssrc, s in self._rtx.items()],
            )

    # --- receive -------------------------------------------------------------

    def _drop(self, reason: str, count: int = 1) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + count
        self._metrics.rtp_dropped(reason, count)

    @property
    def dropped(self) -> dict[str, int]:
        """Datagrams dropped, by reason (both paths)."""
        self._take_c_counts()
        return dict(self._dropped)

    def _take_c_counts(self) -> None:
        if self._c is None:
            return
        srtp, padding = self._c.take_dropped()
        if srtp:
            self._drop("srtp", srtp)
        if padding:
            self._drop("padding", padding)

    def _on_srtp(self, session: Any, data: bytes) -> None:
        if self._closed:
            return
        receiver = self._srtp
        if receiver is None or receiver.session is not session:
            receiver = self._srtp = SrtpReceiver(session, accelerated=self._c is not None or None)
            if self._c is not None:
                self._c.srtp = receiver.c_session
        if self._c is not None:
            try:
                self._c.receive(data)
            except Exception:
                logger.exception("%r: failed on an incoming packet", self)
            return
        try:
            if rtcp.is_rtcp(data):
                plain = receiver.rtcp(data)
                if plain is None:
                    self._drop("srtp")
                else:
                    self._on_rtcp(plain)
            else:
                plain = receiver.rtp(data)
                if plain is None:
                    self._drop("srtp")
                else:
                    self._on_rtp(plain)
        except Exception:
            # A bug must not take the socket's protocol down with it.
            logger.exception("%r: failed on an incoming packet", self)

    def _take_twcc(self) -> None:
        """Move the C path's transport-wide arrivals into the recorder."""
        recorder = self._twcc
        if recorder is not None and self._c is not None:
            for sequence_number, arrival_us in self._c.take_twcc():
                recorder.record(sequence_number, arrival_us)

    def _on_srtcp(self, data: bytes) -> None:
        """An SRTCP datagram from the C receive path."""
        receiver = self._srtp
        if receiver is None or self._closed:
            return
        try:
            plain = receiver.rtcp(data)
            if plain is None:
                self._drop("srtp")
            else:
                self._on_rtcp(plain)
        except Exception:
            logger.exception("%r: failed on an incoming RTCP packet", self)

    def _on_rtp_guarded(self, data: bytes) -> None:
        """A packet the C receive path handed back (not the common case)."""
        if self._closed:
            return
        try:
            self._on_rtp(data)
        except Exception:
            logger.exception("%r: failed on an incoming packet", self)

    def _on_rtp(self, data: bytes) -> None:
        packet = parse_or_reason(data)
        if isinstance(packet, str):
            self._drop("malformed")
            return
        twcc_id = self._twcc_id
        if twcc_id is not None and packet.extensions is not None:
            value = packet.extensions.get(twcc_id)
            if value is not None and len(value) == 2 and self._twcc is not None:
                # Every packet counts for the sender's estimate, padding and RTX too.
                self._take_twcc()  # in arrival order: what the C path recorded first
                self._twcc.record((value[0] << 8) | value[1], time.monotonic_ns() // 1000)
        ssrc = packet.ssrc
        stream = self._streams.get(ssrc)
        if stream is None:
            repaired = self._rtx.get(ssrc)
            if repaired is None:
                stream = self._learn(packet)
                if stream is None:
                    self._drop("unknown_ssrc")
                    return
            else:
                stream = repaired
        if stream.ssrc != ssrc:  # RTX (RFC 4588): the original sequence number first
            if packet.payload_size < 2:
                self._drop("padding")  # RTX padding: bandwidth probing, nothing to forward
                return
            start = packet.payload_start
            apt = stream.mline.rtx_apt.get(packet.payload_type)
            if apt is None:
                self._drop("malformed")
                return
            self._rtx_packets += 1
            packet = RtpPacket(
                data,
                packet.marker,
                apt,
                (data[start] << 8) | data[start + 1],
                packet.timestamp,
                stream.ssrc,
                start + 2,
                packet.payload_end,
                packet.extensions,
            )
        elif packet.payload_type not in stream.mline.media_pts:
            self._drop("malformed")
            return
        stream.stats.bytes += len(data)
        if stream.received(packet.sequence_number, packet.timestamp, self._clock()):
            self._schedule_nacks()
        if packet.payload_end == packet.payload_start:
            self._drop("padding")
            return
        sink = stream.sink
        if sink is not None:
            if stream.ssrc != ssrc:
                sink.repaired(packet.payload_size)
            sink.on_packet(packet)

    def _learn(self, packet: RtpPacket) -> InboundStream | None:
        """Place an unsignalled SSRC by its mid extension, else by a unique payload type."""
        mid = text_extension(packet.extension(self.ids.mid))
        candidates = [self._mlines[mid]] if mid in self._mlines else []
        if not candidates and mid is None:
            # No mid: only an m-line that has no stream yet, and only if the type is unique.
            pt = packet.payload_type
            candidates = [m for m in self._mlines.values() if pt in m.media_pts or pt in m.rtx_apt]
            if (
                len(candidates) == 1
                and pt in candidates[0].media_pts
                and any(s.mline is candidates[0] for s in self._streams.values())
            ):
                candidates = []
        if len(candidates) != 1:
            if packet.ssrc not in self._unknown:
                if len(self._unknown) >= 256:
                    self._unknown.clear()  # bounded: a peer can send any SSRC
                self._unknown.add(packet.ssrc)
                logger.debug("%r: cannot place SSRC %#x", self, packet.ssrc)
            return None
        mline = candidates[0]
        if mline.rids:
            return self._learn_layer(packet, mline)
        if packet.payload_type in mline.rtx_apt:
            media = [s for s in self._streams.values() if s.mline is mline]
            if len(media) != 1:
                return None
            self._rtx[packet.ssrc] = media[0]
            self._sync()
            return media[0]
        if packet.payload_type not in mline.media_pts:
            return None
        # A new media SSRC for this m-line replaces the old one (no simulcast yet).
        for ssrc, stream in list(self._streams.items()):
            if stream.mline is mline:
                del self._streams[ssrc]
        logger.info("%r: mid %s arrives on SSRC %#x", self, mline.mid, packet.ssrc)
        return self._add_stream(packet.ssrc, mline)

    def _learn_layer(self, packet: RtpPacket, mline: MLine) -> InboundStream | None:
        """Place an SSRC of a simulcast m-line by its rid (RTX: repaired rid) extension."""
        if packet.payload_type in mline.rtx_apt:
            rid = text_extension(packet.extension(self.ids.repaired_rid))
            if rid is None:
                rid = text_extension(packet.extension(self.ids.rid))
            media = next(
                (s for s in self._streams.values() if s.mline is mline and s.rid == rid), None
            )
            if media is None:
                return None
            self._rtx[packet.ssrc] = media
            self._sync()
            return media
        rid = text_extension(packet.extension(self.ids.rid))
        if rid not in mline.rids or packet.payload_type not in mline.media_pts:
            return None
        # A new SSRC for a layer replaces the layer's old one.
        for ssrc, stream in list(self._streams.items()):
            if stream.mline is mline and stream.rid == rid:
                del self._streams[ssrc]
        logger.info("%r: mid %s layer %s arrives on SSRC %#x", self, mline.mid, rid, packet.ssrc)
        return self._add_stream(packet.ssrc, mline, rid)

    def _on_rtcp(self, data: bytes) -> None:
        for packet_type, _, packet in rtcp.iter_rtcp(data):
            if packet_type == rtcp.RTCP_SR:
                report = rtcp.parse_sender_report(packet)
                if report is None:
                    continue
                stream = self._streams.get(report.ssrc)
                if stream is not None:
                    stream.sr_ntp_middle = (report.ntp >> 16) & 0xFFFFFFFF
                    stream.sr_at = self._clock()

    # --- upstream RTCP ---------------------------------------------------------

    def _send(self, packet: bytes) -> bool:
        dtls = self._dtls
        if dtls is None or self._closed:
            return False
        try:
            pending = send_srtcp(dtls, packet)
        except (ConnectionError, OSError, pylibsrtp.Error):
            return False
        if pending is not None:
            future = asyncio.ensure_future(pending)
            self._pending_sends.add(future)
            future.add_done_callback(self._sent)
        return True

    def _sent(self, future: asyncio.Future[Any]) -> None:
        self._pending_sends.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.debug("%r: RTCP send failed: %s", self, future.exception())

    def send_pli(self, mid: str, rid: str | None = None) -> bool:
        """Ask the publisher for a keyframe on m-line ``mid`` (layer ``rid``); False if
        nothing arrived on it yet."""
        ssrc = self.media_ssrc(mid, rid)
        if ssrc is None:
            return False
        return self._send(rtcp.pli(self.ssrc, ssrc))

    def _schedule_nacks(self) -> None:
        # Once per burst of datagrams: the gaps they opened go out as one NACK each stream.
        if not self._nack_soon:
            self._nack_soon = True
            asyncio.get_running_loop().call_soon(self._send_nacks)

    def _send_nacks(self) -> None:
        self._nack_soon = False
        if self._nack_handle is not None:
            self._nack_handle.cancel()
            self._nack_handle = None
        if self._closed:
            return
        now = self._clock()
        next_due: float | None = None
        for stream in list(self._streams.values()):
            tracker = stream.nack
            if tracker is None:
                continue
            gave_up = tracker.gave_up
            due = tracker.due(now)
            if due and self._send(rtcp.generic_nack(self.ssrc, stream.ssrc, due)):
                self._metrics.nacks_sent(len(due))
            if tracker.gave_up != gave_up and stream.sink is not None:
                stream.sink.request_keyframe()  # lost for good: only a keyframe repairs it
            when = tracker.next_due()
            if when is not None and (next_due is None or when < next_due):
                next_due = when
        if next_due is not None:
            delay = max(0.005, next_due - now)
            self._nack_handle = asyncio.get_running_loop().call_later(delay, self._send_nacks)

    def _reports(self) -> bytes:
        now = self._clock()
        streams = [s for s in self._streams.values() if s.packets]
        packet = rtcp.receiver_report(self.ssrc, [s.report(now) for s in streams])
        video = [s.ssrc for s in streams if s.kind == "video"]
        if video and self._remb_bitrate > 0:
            packet += rtcp.remb(self.ssrc, self._remb_bitrate, video)
        return packet

    async def _twcc_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(TWCC_INTERVAL)
                self._take_twcc()
                recorder = self._twcc
                if recorder is None or not recorder.pending:
                    continue
                media = next(iter(self._streams), 0)
                try:
                    while (packet := recorder.feedback(self.ssrc, media)) is not None:
                        if self._send(packet):
                            self.twcc_feedbacks += 1
                            self._metrics.twcc_feedback_sent()
                except Exception:  # a bug must not end feedback for good
                    logger.exception("%r: transport-cc feedback failed", self)
                    self._twcc = TwccRecorder()  # start over from the next packets
        except asyncio.CancelledError:
            pass

    async def _rtcp_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.5 + random.random())
                self._take_c_counts()
                for sink in list(self._sinks.values()):
                    sink.sync()
                if self._streams:
                    try:
                        self._send(self._reports())
                    except Exception:  # a bug must not end the reports for good
                        logger.exception("%r: receiver report failed", self)
        except asyncio.CancelledError:
            pass

    # --- lifecycle -------------------------------------------------------------

    async def close(self) -> None:
        """Stop sending RTCP and forget every stream (idempotent)."""
        self._closed = True
        if self._nack_handle is not None:
            self._nack_handle.cancel()
            self._nack_handle = None
        tasks = [t for t in (self._rtcp_task, self._twcc_task) if t is not None]
        self._rtcp_task = self._twcc_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending = list(self._pending_sends)
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._pending_sends.clear()
        self._streams.clear()
        self._rtx.clear()
        self._sinks.clear()
        if self._c is not None:
            self._take_c_counts()
            self._c.close()
