"""The send side of a forwarding subscriber: the control plane around its down.

:func:`install_fast_rtp` replaces a subscriber sender's RTP loop, RTCP loop
and NACK answer (on that instance only, through
:class:`media.aiortc_compat.SenderInternals`) with :class:`FastRtp`, which
forwards packets, not frames. The per-packet work is its *down*
(:mod:`media.downstream`, in C): the keyframe gate, the header rewrite, SRTP
and the UDP GSO batch. FastRtp sets the down up and keeps it true:

- its layout (SSRC, payload type, the header-extension block laid out once
  with aiortc's ``HeaderExtensionsMap``, where abs-send-time and the audio
  level go) once the codec is negotiated;
- whether it may send (the loop runs and negotiation left the sender
  enabled: told by aiortc at each change) and where (the DTLS transport's
  SRTP session and selected pair: checked when DTLS changes state and at
  every sender report). Plain UDP pairs are sent to
  by the down itself; what it protects for a TURN pair is sent by this
  sender's loop, one datagram at a time, through aioice;
- NACKs are answered from the publisher's packet cache (shared by all its
  subscribers) by undoing this subscriber's sequence offset, sent as RTX
  when negotiated, with a hold-off and a token bucket;
- sender reports (SR + SDES, BYE at the end) come from the down's counters,
  copied into aiortc's sender and DTLS transport at each report (getStats).

RTCP reception and ``stop()`` stay aiortc's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import (
    HeaderExtensions,
    RtcpByePacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)
from aiortc.utils import random32

from . import downstream
from .aiortc_compat import SenderInternals, SendRoute, add_transport_tx, send_route
from .udpout import DatagramOut

if TYPE_CHECKING:
    from .feedback import StreamReport
    from .forwarder import DownTrack, Forwardable

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHLL")
_OSN = struct.Struct("!H")
#: Nominal frame durations that keep timestamps increasing across a source switch.
_STEP = {"audio": 960, "video": 3000}
#: Bursts queued for the send loop (TURN pairs) before video skips to a keyframe.
MAX_QUEUED_BURSTS = 64
#: NACK answers per subscriber stream: a packet resent at most once per this many
#: seconds, and a token bucket of this many packets refilled at this rate.
RESEND_HOLDOFF = 0.1
RESEND_BURST = 128
RESEND_RATE = 500.0
#: Probe padding: RTX copies of at most this many of the newest packets at a time.
PAD_PACKETS = 64
#: Bytes of the newest packets kept when the source changes or goes (a pause), so
#: that probes can still copy something while nothing is forwarded.
PAD_SPARE_BYTES = 16_000

ntp_now = downstream.ntp_now


class ResendBudget:
    """What one subscriber's retransmissions may send, all its streams together.

    After a loss, a subscriber NACKs every packet it missed; answered at once (up
    to the per-stream bucket, ``RESEND_BURST`` packets) that burst overflows the
    very queue that lost them, on a link the estimate says is the bottleneck, and
    the keyframe behind it is lost too. Repairs on top of media the allocation
    already sized to the estimate keep the link overloaded: every loss asks for
    more repairs than the link has room for, and the loss goes on (measured on
    a 400 kbit/s downlink: media sized to 220 kbit/s plus repairs at the
    estimate again, 500-1200 kbit/s sent, 30-60 % lost for seconds). So repairs
    get what the estimate leaves over once media is sent (``media()``, the
    allocation's rate), at least :data:`MIN_SHARE` of it, in a bucket of
    :data:`WINDOW` s of that rate (at least :data:`MIN_BURST`); what does not fit
    is refused, and asked for again by the subscriber's next NACK if still worth
    it. Unbounded without an estimate.
    """

    #: Share of the estimate repairs may always take, however much media is sent
    #: (the allocation gives out HEADROOM of the estimate: the rest is theirs).
    MIN_SHARE = 0.1
    #: The bucket: this many seconds of the repair rate.
    WINDOW = 0.1
    #: The bucket holds at least this many bytes (two full packets).
    MIN_BURST = 2400

    def __init__(
        self,
        estimate: Callable[[], float | None],
        media: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._estimate = estimate
        self._media = media
        self._clock = clock
        self._tokens = float(self.MIN_BURST)
        self._at = clock()
        self.refused = 0

    def allow(self, nbytes: int) -> bool:
        """Take ``nbytes`` of repair from the budget, if it has them."""
        estimate = self._estimate()
        if estimate is None or estimate <= 0:
            return True
        now = self._clock()
        rate = max(estimate - self._media(), estimate * self.MIN_SHARE) / 8  # bytes/s
        burst = max(rate * self.WINDOW, float(self.MIN_BURST))
        self._tokens = min(burst, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens < nbytes:
            self.refused += 1
            return False
        self._tokens -= nbytes
        return True


class _Layout:
    """The header-extension block of one sender, with where abs-send-time, audio level
    and the transport-wide sequence number go."""

    __slots__ = ("abs_at", "first_byte", "level_at", "template", "twcc_at")

    def __init__(self, internals: SenderInternals) -> None:
        ext_map = internals.header_extensions_map
        mid = internals.mid

        def block(abs_send_time: int, level: tuple[bool, int], twcc: int = 0) -> bytes:
            profile, value = ext_map.set(
                HeaderExtensions(
                    mid=mid,
                    abs_send_time=abs_send_time,
                    audio_level=level,
                    transport_sequence_number=twcc,
                )
            )
            return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""

        base = block(0, (False, 0))
        abs_diff = _diff(base, block(0xFFFFFF, (False, 0)))
        level_diff = _diff(base, block(0, (True, 127)))
        twcc_diff = _diff(base, block(0, (False, 0), 0xFFFF))
        if (abs_diff and len(abs_diff) != 3) or len(level_diff) > 1:
            raise RuntimeError("media: unexpected header extension layout")
        if abs_diff and abs_diff != list(range(abs_diff[0], abs_diff[0] + 3)):
            raise RuntimeError("media: unexpected abs-send-time extension layout")
        if twcc_diff and twcc_diff != [twcc_diff[0], twcc_diff[0] + 1]:
            raise RuntimeError("media: unexpected transport-wide sequence number layout")
        self.template = base
        # Offsets within the block (the down writes them after the fixed header).
        self.abs_at = abs_diff[0] if abs_diff else -1
        self.level_at = level_diff[0] if level_diff else -1
        self.twcc_at = twcc_diff[0] if twcc_diff else -1
        # V=2, no padding, X when there are extensions, no CSRC.
        self.first_byte = 0x90 if base else 0x80


def _diff(a: bytes, b: bytes) -> list[int]:
    if len(a) != len(b):
        raise RuntimeError("media: header extension size depends on its value")
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


class FastRtp:
    """Set-up, routing, retransmission and sender reports of one forwarding sender."""

    def __init__(
        self,
        sender: RTCRtpSender,
        kind: str,
        *,
        gso: bool = True,
        implementation: downstream.Implementation | None = None,
    ) -> None:
        self.sender = sender
        self.internals = SenderInternals(sender)
        self.kind = kind
        self.gso = gso
        self.impl = implementation or downstream.DEFAULT
        #: The per-packet half (media.downstream): what forward() fans out to.
        self.stream: Any = self.impl.new_down(kind == "video", _STEP.get(kind, 3000))
        self.stream.spill = self._spill
        self.down: DownTrack | None = None
        self.out: DatagramOut | None = None
        self._route: SendRoute | None = None
        self.rtx_sequence_number = random_sequence_number()
        #: The newest packets sent before the last switch, as (packet, sequence number):
        #: what probe padding copies while the stream forwards nothing (paused).
        self._spare: list[tuple[bytes, int]] = []
        self.layout: _Layout | None = None
        self.running = False
        self._enabled = True
        self._queue: deque[list[bytes]] = deque()  # protected, for a TURN pair
        self._wake: asyncio.Event | None = None
        self.retransmitted = 0
        self.resends_refused = 0  # NACKed packets not resent (hold-off, rate limit)
        self._resent: dict[int, float] = {}  # sequence number -> when it was last resent
        #: The clock of the resend bounds (tests set their own).
        self.clock: Callable[[], float] = time.monotonic
        self._tokens = float(RESEND_BURST)
        self._tokens_at = self.clock()
        #: The subscriber's repair budget over all its streams (set by its participant).
        self.resend_budget: ResendBudget | None = None
        self.header_len = 12
        self._payload_type = 0
        self._timestamp_origin = 0
        #: Told how many packets a retransmission sent (the fan-out counts the rest).
        self.on_retransmit: Callable[[int], None] | None = None
        #: The subscriber's latest receiver report about this stream (media.feedback).
        self.last_report: StreamReport | None = None
        self.last_report_at: float | None = None
        self._dtls_watched: Any = None

    def __repr__(self) -> str:
        return f"FastRtp({self.kind}, mid {self.internals.mid})"

    def prepare(self, payload_type: int, sequence_number: int, timestamp_origin: int) -> None:
        """Fix what every packet of this sender shares (once its codec is negotiated)."""
        self._payload_type = payload_type
        self._timestamp_origin = timestamp_origin
        self._configure(_Layout(self.internals), sequence_number)

    def _configure(self, layout: _Layout, sequence_number: int) -> None:
        self.layout = layout
        self.stream.configure(
            self.internals.ssrc,
            self._payload_type,
            layout.first_byte,
            layout.template,
            layout.abs_at,
            layout.level_at,
            sequence_number,
            self._timestamp_origin,
            layout.twcc_at,
        )
        self.header_len = 12 + len(layout.template)

    def relayout(self) -> bool:
        """Lay the header extensions out again if the sender's map changed since
        :meth:`prepare` (an extension added after the sender started, see
        :func:`media.aiortc_compat.add_header_extension`); the stream goes on with
        its sequence numbers and timestamps. True if the layout changed."""
        old = self.layout
        if old is None:
            return False  # not started: prepare() lays it out
        layout = _Layout(self.internals)
        if layout.template == old.template:
            return False  # the same extensions at the same places
        self.stream.flush()  # what is batched keeps the layout it was written with
        self._spare = []  # built with the old layout: not copied as padding under the new
        self._configure(layout, self.stream.sequence_number)
        logger.info(
            "%r: header extensions laid out again (transport-wide number %s)",
            self,
            f"at {layout.twcc_at}" if layout.twcc_at >= 0 else "none",
        )
        return True

    # --- what the down exposes ---------------------------------------------------

    @property
    def sequence_number(self) -> int:
        """The next sequence number this stream sends."""
        return int(self.stream.sequence_number)

    @property
    def packets_sent(self) -> int:
        return int(self.stream.packets_sent)

    @property
    def octets_sent(self) -> int:
        return int(self.stream.octets_sent)

    @property
    def ntp_timestamp(self) -> int:
        return int(self.stream.ntp)

    @property
    def rtp_timestamp(self) -> int:
        """The RTP timestamp of the newest packet sent (for sender reports)."""
        return int(self.stream.rtp_timestamp)

    @property
    def send_errors(self) -> int:
        return int(self.stream.send_errors)

    @property
    def ready(self) -> bool:
        """Whether forwarded packets would be sent now (runs, enabled, routed)."""
        return bool(self.stream.ready) and self.out is not None

    # --- state -----------------------------------------------------------------

    def _enabled_changed(self, enabled: bool) -> None:
        self._enabled = enabled
        self._update_ready()

    def _update_ready(self) -> None:
        was = self.ready
        self.stream.ready = self.running and self._enabled
        if self.ready and not was and self.down is not None and self.kind == "video":
            self.down.replay()  # the latest keyframe, from the publisher's cache

    def switch(self) -> None:
        """The source changes (or goes): start over at its next keyframe, numbering continuing.
        The newest packets sent so far are kept for probe padding (:meth:`pad`)."""
        spare = self._recent(PAD_SPARE_BYTES)
        if spare:
            self._spare = spare
        self.stream.switch()

    def forward(self, entry: Forwardable) -> bool:
        """Rewrite and queue one packet for this subscriber alone (replays, tests)."""
        return bool(self.impl.forward([self.stream], entry, False))

    def flush(self) -> None:
        """Send what is queued."""
        self.stream.flush()

    def sync_stats(self) -> None:
        """Copy the counters into aiortc's sender (reports, getStats) and DTLS transport."""
        self.internals.report(
            self.ntp_timestamp, self.rtp_timestamp, self.packets_sent, self.octets_sent
        )
        octets, packets = self.stream.take_tx()
        if packets:
            add_transport_tx(self.sender.transport, octets, packets)

    # --- routing -----------------------------------------------------------------

    def check_route(self) -> None:
        """Point the down at the DTLS transport's current SRTP session and pair."""
        dtls = self.sender.transport
        if dtls is not self._dtls_watched and dtls is not None:
            self._dtls_watched = dtls
            dtls.on("statechange", self.check_route)
        route = send_route(dtls) if dtls is not None and self.running else None
        current = self._route
        if route is not None and current is not None and route.key == current.key:
            return
        self._route = route
        if route is None:
            self.use_output(None)
        elif self.out is None or not self.out.matches(route.session, route.udp, route.addr):
            self.use_output(DatagramOut(route.session, route.udp, route.addr, gso=self.gso))

    def use_output(self, out: DatagramOut | None) -> None:
        """Send through ``out`` from now on (None: nowhere); the old output is closed."""
        old, self.out = self.out, out
        self.impl.attach(self.stream, out)
        if old is not None and old is not out:
            old.close()
        self._update_ready()

    def _spill(self, datagrams: list[bytes]) -> None:
        """Protected datagrams the down could not send itself."""
        route, out = self._route, self.out
        if route is not None and route.udp is not None and out is not None and out.has_socket:
            out.send_protected(datagrams)  # a UDP address the C side does not parse
            return
        # A TURN pair: the loop sends them one at a time.
        if len(self._queue) >= MAX_QUEUED_BURSTS:
            self._queue.clear()
            if self.kind == "video":
                self.switch()  # restart at a keyframe rather than corrupt the picture
                if self.down is not None:
                    self.down.request_keyframe()
        self._queue.append(datagrams)
        if self._wake is not None:
            self._wake.set()

    # --- loops -------------------------------------------------------------

    async def run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        internals = self.internals
        internals.loop_started("rtp")
        try:
            await self._loop(codec)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # The exit event must be set or RTCRtpSender.stop() hangs.
            logger.exception("forwarding sender failed")
        finally:
            self.running = False
            self.stream.ready = False
            self.close()
        internals.stop_track()
        internals.loop_exited("rtp")

    async def _loop(self, codec: RTCRtpCodecParameters) -> None:
        payload_type = codec.payloadType
        assert payload_type is not None
        self.prepare(payload_type, random_sequence_number(), random32())
        self._wake = wake = asyncio.Event()
        self.internals.watch_enabled(self._enabled_changed)
        self._enabled = self.internals.enabled
        self.running = True
        self.check_route()
        self._update_ready()
        if self.down is not None and self.kind == "video" and self.stream.gated:
            self.down.request_keyframe()  # none cached recently enough: ask for one
        queue = self._queue
        while True:
            while not queue:
                wake.clear()
                await wake.wait()
            for data in queue.popleft():
                route = self._route
                if route is None:
                    continue  # not connected: lost, as on the network
                if route.udp is not None:
                    route.udp.sendto(data, route.addr)
                else:
                    await route.send_relayed(data)

    async def run_rtcp(self) -> None:
        """aiortc's RTCP loop (SR + SDES every 0.5-1.5 s, BYE at the end), from our counters."""
        internals = self.internals
        internals.loop_started("rtcp")
        try:
            while True:
                await asyncio.sleep(0.5 + random.random())
                self.check_route()
                self.sync_stats()
                ssrc = internals.ssrc
                packets: list[Any] = [
                    RtcpSrPacket(
                        ssrc=ssrc,
                        sender_info=RtcpSenderInfo(
                            ntp_timestamp=self.ntp_timestamp,
                            rtp_timestamp=self.rtp_timestamp,
                            packet_count=self.packets_sent & 0xFFFFFFFF,
                            octet_count=self.octets_sent & 0xFFFFFFFF,
                        ),
                    )
                ]
                internals.sender_report_sent((self.ntp_timestamp >> 16) & 0xFFFFFFFF, time.time())
                cname = internals.cname
                if cname is not None:
                    packets.append(
                        RtcpSdesPacket(
                            chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, cname.encode())])]
                        )
                    )
                await internals.send_rtcp(packets)
        except asyncio.CancelledError:
            pass
        self.sync_stats()
        await internals.send_rtcp([RtcpByePacket(sources=[internals.ssrc])])
        internals.loop_exited("rtcp")

    def close(self) -> None:
        """Release the UDP output's socket duplicate (idempotent)."""
        self._route = None
        self.use_output(None)

    # --- feedback (media.feedback) ----------------------------------------------

    @property
    def ssrc(self) -> int:
        """The SSRC this sender sends on (0 until its codec is negotiated)."""
        return int(self.stream.ssrc)

    def keyframe_wanted(self) -> None:
        """The subscriber sent PLI or FIR: relay it to the publisher."""
        if self.down is not None:
            self.down.request_keyframe()

    def reported(self, report: StreamReport) -> None:
        """The subscriber's latest receiver report about this stream."""
        self.last_report = report
        self.last_report_at = self.clock()

    async def retransmit(self, sequence_number: int) -> None:
        """aiortc's NACK hook (unused while media.feedback reads the RTCP)."""
        self.resend([sequence_number])

    def resend(self, sequence_numbers: list[int]) -> int:
        """Answer a subscriber's NACK from the publisher's packet cache; returns packets sent.

        RTX when negotiated (RFC 4588: this stream's header on the RTX SSRC and
        sequence, the original sequence number first in the payload), the
        original packet otherwise. Packets no longer cached are skipped: the
        subscriber's PLI recovers those.

        NACKs cost the subscriber 4 bytes per lost packet and us a whole
        packet, so repairs are bounded: one resend of a packet per
        ``RESEND_HOLDOFF`` and at most ``RESEND_BURST`` packets, refilled at
        ``RESEND_RATE`` per second (a token bucket), per subscriber stream.
        """
        down = self.down
        source = down.source if down is not None else None
        stream = self.stream
        epoch = stream.epoch
        if source is None or epoch is None or self.layout is None:
            return 0
        now = self.clock()
        self._tokens = min(RESEND_BURST, self._tokens + (now - self._tokens_at) * RESEND_RATE)
        self._tokens_at = now
        resent = self._resent
        if len(resent) > 4 * RESEND_BURST:
            for old in [q for q, at in resent.items() if now - at > RESEND_HOLDOFF]:
                del resent[old]
        rtx_payload_type = self.internals.rtx_payload_type
        seq_offset = stream.seq_offset
        out = []
        for sequence_number in sequence_numbers:
            if self._tokens < 1:
                self.resends_refused += 1
                break
            last = resent.get(sequence_number)
            if last is not None and now - last < RESEND_HOLDOFF:
                self.resends_refused += 1
                continue
            original = (sequence_number - seq_offset) & 0xFFFF
            if original != epoch and ((original - epoch) & 0xFFFF) >= 0x8000:
                continue  # from before this source
            entry = source.cached(original, down)
            if entry is None:
                continue
            data = stream.build(entry, sequence_number)
            if data is None:
                continue
            budget = self.resend_budget
            if budget is not None and not budget.allow(len(data)):
                self.resends_refused += 1
                break
            resent[sequence_number] = now
            self._tokens -= 1
            if rtx_payload_type is not None:
                data = self._as_rtx(data, rtx_payload_type, sequence_number)
            out.append(data)
        if not out:
            return 0
        sent = int(stream.send(out))
        self.retransmitted += sent
        if sent and self.on_retransmit is not None:
            self.on_retransmit(sent)
        return sent

    def _as_rtx(self, data: bytes, rtx_payload_type: int, sequence_number: int) -> bytes:
        """``data`` (this stream's packet ``sequence_number``) as RFC 4588 RTX."""
        header_len = self.header_len
        rtx = (
            _HEADER.pack(
                data[0],
                (data[1] & 0x80) | rtx_payload_type,
                self.rtx_sequence_number,
                int.from_bytes(data[4:8], "big"),
                self.internals.rtx_ssrc,
            )
            + data[12:header_len]
            + _OSN.pack(sequence_number)
            + data[header_len:]
        )
        self.rtx_sequence_number = (self.rtx_sequence_number + 1) & 0xFFFF
        return rtx

    def pad(self, nbytes: int) -> int:
        """Send about ``nbytes`` of probe padding now; returns the bytes sent.

        RTX copies of the newest packets this stream sent (the subscriber has
        them: it drops them once its transport-wide feedback counted them), as
        libwebrtc probes; while it forwards nothing (paused), of the newest it
        sent before, over and over. Not padding-only packets: Chrome's
        transport-wide feedback leaves many of those out, which makes a probe
        look dropped. Nothing without RTX or before the stream sent anything.
        """
        stream = self.stream
        rtx_payload_type = self.internals.rtx_payload_type
        if nbytes <= 0 or self.layout is None or rtx_payload_type is None or not self.ready:
            return 0
        out = self._recent_as_rtx(nbytes, rtx_payload_type)
        return sum(map(len, out)) if out and stream.send(out) else 0

    def _recent_as_rtx(self, nbytes: int, rtx_payload_type: int) -> list[bytes]:
        """RTX copies of the newest packets sent, about ``nbytes`` of them."""
        recent = self._recent(nbytes)
        if not recent and self._spare:
            spare, total = self._spare, 0
            while total < nbytes:  # the spare is small: copies of it, round and round
                for data, sequence_number in spare:
                    recent.append((data, sequence_number))
                    total += len(data)
                    if total >= nbytes:
                        break
        return [self._as_rtx(data, rtx_payload_type, seq) for data, seq in recent]

    def _recent(self, nbytes: int) -> list[tuple[bytes, int]]:
        """The newest packets sent from the current source, about ``nbytes`` of them."""
        down = self.down
        source = down.source if down is not None else None
        stream = self.stream
        epoch = stream.epoch
        out: list[tuple[bytes, int]] = []
        if source is None or epoch is None:
            return out
        seq_offset = stream.seq_offset
        newest = (stream.sequence_number - 1) & 0xFFFF
        total = 0
        for back in range(PAD_PACKETS):
            if total >= nbytes:
                break
            sequence_number = (newest - back) & 0xFFFF
            original = (sequence_number - seq_offset) & 0xFFFF
            if original != epoch and ((original - epoch) & 0xFFFF) >= 0x8000:
                break  # from before this source
            entry = source.cached(original, down)
            data = stream.build(entry, sequence_number) if entry is not None else None
            if data is None:
                continue
            out.append((data, sequence_number))
            total += len(data)
        return out


def install_fast_rtp(
    sender: RTCRtpSender,
    kind: str,
    *,
    gso: bool = True,
    implementation: downstream.Implementation | None = None,
) -> FastRtp:
    """Make ``sender`` (not yet started) send through :class:`FastRtp`."""
    fast = FastRtp(sender, kind, gso=gso, implementation=implementation)
    fast.internals.install(fast.run_rtp, fast.run_rtcp, fast.retransmit)
    return fast
