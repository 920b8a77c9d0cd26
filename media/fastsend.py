"""The send side of a forwarding subscriber: header rewrite, protect, send.

:func:`install_fast_rtp` replaces a subscriber sender's ``_run_rtp``,
``_run_rtcp`` and ``_retransmit`` (instance attributes, so only the SFU's
senders are affected) with :class:`FastRtp`, which forwards packets, not
frames:

- :meth:`FastRtp.forward` takes one incoming packet (a
  :class:`~media.forwarder.Forwardable`) and writes this subscriber's header
  in front of the shared payload: its SSRC and payload type, sequence numbers
  and timestamps offset so the stream stays continuous when its source
  changes, the VP8 picture id and TL0PICIDX likewise, and its own header
  extensions (mid, abs-send-time, the publisher's audio level) laid out once
  per sender with aiortc's ``HeaderExtensionsMap``. Video starts at a
  keyframe after every source change (the keyframe gate).
- :meth:`FastRtp.flush` protects the queued packets with the DTLS transport's
  SRTP session, in place, and sends them to the selected pair's socket in as
  few UDP GSO ``sendmsg`` calls as their sizes allow (:mod:`media.udpout`);
  TURN pairs (and transports whose send someone wrapped, as the loss tests
  do) go through aiortc one packet at a time, from the send loop.
- NACKs are answered from the publisher's packet cache (shared by all its
  subscribers) by undoing this subscriber's sequence offset, sent as RTX
  when negotiated.
- Sender reports (SR + SDES, BYE at the end) come from plain counters,
  copied into aiortc's sender and DTLS transport at each report (getStats).

RTCP reception, PLI relay and ``stop()`` stay aiortc's. The private names used
here are guarded in :mod:`media.aiortc_compat`.
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

import aioice.ice
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
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

from .udpout import DatagramOut

if TYPE_CHECKING:
    from .feedback import StreamReport
    from .forwarder import DownTrack, Forwardable

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHLL")
_pack = _HEADER.pack
_OSN = struct.Struct("!H")
_NTP_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_TWO32 = float(1 << 32)
_CONNECTED = DtlsState.CONNECTED
#: Nominal frame durations that keep timestamps increasing across a source switch.
_STEP = {"audio": 960, "video": 3000}
#: Bursts queued for the send loop (TURN pairs) before video skips to a keyframe.
MAX_QUEUED_BURSTS = 64
#: NACK answers per subscriber stream: a packet resent at most once per this many
#: seconds, and a token bucket of this many packets refilled at this rate.
RESEND_HOLDOFF = 0.1
RESEND_BURST = 128
RESEND_RATE = 500.0


def ntp_now() -> int:
    """The current NTP time (64-bit fixed point), like ``aiortc.clock.current_ntp_time``."""
    return int((time.time() + _NTP_OFFSET) * _TWO32)


class _Layout:
    """The header-extension block of one sender, with where abs-send-time and audio level go."""

    __slots__ = ("abs_at", "first_byte", "level_at", "template")

    def __init__(self, sender: RTCRtpSender) -> None:
        ext_map = getattr(sender, "_RTCRtpSender__rtp_header_extensions_map")  # noqa: B009
        mid = getattr(sender, "_RTCRtpSender__mid")  # noqa: B009

        def block(abs_send_time: int, level: tuple[bool, int]) -> bytes:
            profile, value = ext_map.set(
                HeaderExtensions(mid=mid, abs_send_time=abs_send_time, audio_level=level)
            )
            return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""

        base = block(0, (False, 0))
        abs_diff = _diff(base, block(0xFFFFFF, (False, 0)))
        level_diff = _diff(base, block(0, (True, 127)))
        if (abs_diff and len(abs_diff) != 3) or len(level_diff) > 1:
            raise RuntimeError("media: unexpected header extension layout")
        if abs_diff and abs_diff != list(range(abs_diff[0], abs_diff[0] + 3)):
            raise RuntimeError("media: unexpected abs-send-time extension layout")
        self.template = base
        self.abs_at = abs_diff[0] if abs_diff else -1
        self.level_at = level_diff[0] if level_diff else -1
        # V=2, no padding, X when there are extensions, no CSRC.
        self.first_byte = 0x90 if base else 0x80

    def render(self, abs_send_time: int, level: int) -> bytes:
        """The block with this abs-send-time (24 bits) and audio level byte."""
        if self.abs_at < 0 and self.level_at < 0:
            return self.template
        out = bytearray(self.template)
        if self.abs_at >= 0:
            out[self.abs_at : self.abs_at + 3] = (abs_send_time & 0xFFFFFF).to_bytes(3, "big")
        if self.level_at >= 0:
            out[self.level_at] = level
        return bytes(out)


def _diff(a: bytes, b: bytes) -> list[int]:
    if len(a) != len(b):
        raise RuntimeError("media: header extension size depends on its value")
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


class FastRtp:
    """Header rewrite, send loop, retransmission and sender reports of one forwarding sender."""

    def __init__(self, sender: RTCRtpSender, kind: str, *, gso: bool = True) -> None:
        self.sender = sender
        self.kind = kind
        self.gso = gso
        self.down: DownTrack | None = None
        self.out: DatagramOut | None = None
        # (dtls transport, its ICE connection's nominated pairs, pair, SRTP session, output)
        self._route: tuple[Any, dict[int, Any], Any, Any, DatagramOut] | None = None
        self.rtx_sequence_number = random_sequence_number()
        self.layout: _Layout | None = None
        self.running = False
        self.payload_type = 0
        self.sequence_number = 0  # the next one to send
        self.timestamp_origin = 0
        # Rewrite state of the current source ("epoch"): offsets from its numbering.
        self._gated = kind == "video"
        self._epoch_seq: int | None = None  # first forwarded source sequence number
        self._seq_offset = 0
        self._ts_offset = 0
        self._pid_offset = 0
        self._tl0_offset = 0
        self._rewrite_vp8 = False  # picture id / TL0PICIDX offsets are not zero
        self._last_entry: Forwardable | None = None  # newest packet sent (by sequence)
        self._first_byte = 0x80
        self._pending: list[bytes] = []
        self._burst_ext: bytes | None = None
        self._queue: deque[list[bytes]] = deque()
        self._wake: asyncio.Event | None = None
        # What the next sender report says (synced into aiortc's sender then).
        self.packets_sent = 0
        self.octets_sent = 0
        self.ntp_timestamp = 0
        self.retransmitted = 0
        self.resends_refused = 0  # NACKed packets not resent (hold-off, rate limit)
        self._resent: dict[int, float] = {}  # sequence number -> when it was last resent
        #: The clock of the resend bounds (tests set their own).
        self.clock: Callable[[], float] = time.monotonic
        self._tokens = float(RESEND_BURST)
        self._tokens_at = self.clock()
        self.send_errors = 0
        self.tx_bytes = 0  # protected bytes not yet added to the DTLS transport's stats
        self.tx_packets = 0
        self.header_len = 12
        #: Told how many packets a retransmission sent (the fan-out counts the rest).
        self.on_retransmit: Callable[[int], None] | None = None
        #: The subscriber's latest receiver report about this stream (media.feedback).
        self.last_report: StreamReport | None = None
        #: The audio-level extension id on the publisher's connection (set by the slot).
        self.level_id_in: int | None = None
        self._ssrc = 0

    def prepare(self, payload_type: int, sequence_number: int, timestamp_origin: int) -> None:
        """Fix what every packet of this sender shares (once its codec is negotiated)."""
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp_origin = timestamp_origin
        self.layout = _Layout(self.sender)
        self._first_byte = self.layout.first_byte
        self._ssrc = self.sender._ssrc
        self.header_len = 12 + len(self.layout.template)

    @property
    def rtp_timestamp(self) -> int:
        """The RTP timestamp of the newest packet sent (for sender reports)."""
        ts = self._last()[0]
        return self.timestamp_origin if ts is None else ts

    @property
    def ready(self) -> bool:
        """Whether forwarded packets would be sent now (the loop runs, the sender is enabled)."""
        return self.running and bool(self.sender._enabled)

    # --- rewriting -----------------------------------------------------------

    def switch(self) -> None:
        """The source changes (or goes): start over at its next keyframe, numbering continuing."""
        self._gated = self.kind == "video"
        self._epoch_seq = None
        self._pending.clear()

    def _last(self) -> tuple[int | None, int | None, int | None]:
        """Timestamp, picture id and TL0PICIDX of the newest packet sent (None: none yet)."""
        entry = self._last_entry
        if entry is None:
            return None, None, None
        ts = (entry.packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        vp8 = entry.vp8
        pid = tl0 = None
        if vp8 is not None:
            if vp8.picture_id is not None:
                pid = (vp8.picture_id + self._pid_offset) & 0x7FFF
            if vp8.tl0 is not None:
                tl0 = (vp8.tl0 + self._tl0_offset) & 0xFF
        return ts, pid, tl0

    def _start_epoch(self, entry: Forwardable) -> None:
        packet = entry.packet
        last_ts, last_pid, last_tl0 = self._last()
        self._epoch_seq = packet.sequence_number
        self._seq_offset = (self.sequence_number - packet.sequence_number) & 0xFFFF
        step = _STEP.get(self.kind, 3000)
        start = self.timestamp_origin if last_ts is None else last_ts + step
        self._ts_offset = (start - packet.timestamp) & 0xFFFFFFFF
        self._pid_offset = self._tl0_offset = 0
        vp8 = entry.vp8
        if vp8 is not None:
            if vp8.picture_id is not None and last_pid is not None:
                self._pid_offset = (last_pid + 1 - vp8.picture_id) & 0x7FFF
            if vp8.tl0 is not None and last_tl0 is not None:
                self._tl0_offset = (last_tl0 + 1 - vp8.tl0) & 0xFF
        self._rewrite_vp8 = bool(self._pid_offset or self._tl0_offset)
        self._last_entry = None

    def forward(self, entry: Forwardable) -> bool:
        """Rewrite ``entry`` for this subscriber and queue it; False if not taken.

        The hot path of the SFU (once per packet per subscriber): no calls
        beyond one ``struct.pack`` and one concatenation in the common case.
        """
        if not self.running or not self.sender._enabled:
            if self.kind == "video":
                self._gated = True
                self._epoch_seq = None
            return False
        packet = entry.packet
        seq = packet.sequence_number
        epoch = self._epoch_seq
        if self._gated:
            if not entry.keyframe:
                return False
            self._gated = False
            self._start_epoch(entry)
        elif epoch is None:
            self._start_epoch(entry)
        elif seq != epoch and ((seq - epoch) & 0xFFFF) >= 0x8000:
            return False  # from before this source's first forwarded packet
        out_seq = (seq + self._seq_offset) & 0xFFFF
        ext = self._burst_ext
        if ext is None:
            ext = self._extension(packet)
        header = _pack(
            self._first_byte,
            (0x80 | self.payload_type) if packet.marker else self.payload_type,
            out_seq,
            (packet.timestamp + self._ts_offset) & 0xFFFFFFFF,
            self._ssrc,
        )
        if self._rewrite_vp8 and entry.vp8 is not None:
            data = self._with_vp8_rewritten(entry, header + ext)
        else:
            data = header + ext + entry.body
        self._pending.append(data)
        if ((out_seq - self.sequence_number) & 0xFFFF) < 0x8000:
            self.sequence_number = (out_seq + 1) & 0xFFFF
            self._last_entry = entry
        self.packets_sent += 1
        self.octets_sent += entry.size
        return True

    def _extension(self, packet: Any) -> bytes:
        """This sender's header extensions for ``packet`` (video: cached for the burst)."""
        layout = self.layout
        assert layout is not None
        self.ntp_timestamp = ntp_now()
        if layout.level_at >= 0:
            # Audio: the publisher's level (RFC 6464) per packet, when it sent one.
            level = 0x7F
            ext = packet.extensions
            if ext is not None and self.level_id_in is not None:
                value = ext.get(self.level_id_in)
                if value:
                    level = value[0]
            return layout.render(self.ntp_timestamp >> 14, level)
        # All packets of a burst leave together: one abs-send-time for them.
        block = self._burst_ext = layout.render(self.ntp_timestamp >> 14, 0)
        return block

    def _with_vp8_rewritten(self, entry: Forwardable, head: bytes) -> bytes:
        """``head`` + the payload with this stream's picture id and TL0PICIDX."""
        vp8 = entry.vp8
        assert vp8 is not None
        body = entry.body
        desc = bytearray(body[: vp8.length])
        if vp8.picture_id is not None:
            pid = (vp8.picture_id + self._pid_offset) & 0x7FFF
            at = vp8.picture_id_at
            desc[at] = 0x80 | (pid >> 8)
            desc[at + 1] = pid & 0xFF
        if vp8.tl0 is not None:
            desc[vp8.tl0_at] = (vp8.tl0 + self._tl0_offset) & 0xFF
        return b"".join((head, desc, body[vp8.length :]))

    def _build(self, entry: Forwardable, out_seq: int) -> bytes:
        """``entry`` as this subscriber's packet ``out_seq`` (for retransmissions)."""
        packet = entry.packet
        header = _pack(
            self._first_byte,
            (0x80 if packet.marker else 0) | self.payload_type,
            out_seq,
            (packet.timestamp + self._ts_offset) & 0xFFFFFFFF,
            self._ssrc,
        )
        ext = self._extension(packet)
        self._burst_ext = None
        if self._rewrite_vp8 and entry.vp8 is not None:
            return self._with_vp8_rewritten(entry, header + ext)
        return header + ext + entry.body

    def flush(self) -> int:
        """Send the queued packets (one burst); returns how many left at once."""
        pending = self._pending
        if not pending:
            return 0
        self._pending = []
        self._burst_ext = None
        try:
            out = self._udp_out()
            if out is not None:
                self.tx_bytes += out.send(pending)
                self.tx_packets += len(pending)
                return len(pending)
        except Exception:
            # Never let one subscriber break the publisher's fan-out; log the
            # first failure of this sender with its traceback, count the rest.
            self.send_errors += 1
            if self.send_errors == 1:
                logger.exception("forwarding sender: send failed")
            return 0
        # TURN pair (or a wrapped send): the loop sends one packet at a time.
        if len(self._queue) >= MAX_QUEUED_BURSTS:
            self._queue.clear()
            if self.kind == "video":
                self.switch()  # restart at a keyframe rather than corrupt the picture
                self._epoch_seq = None
                if self.down is not None:
                    self.down.request_keyframe()
        self._queue.append(pending)
        if self._wake is not None:
            self._wake.set()
        return 0

    def sync_stats(self) -> None:
        """Copy the counters into aiortc's sender (reports, getStats) and DTLS transport."""
        sender = self.sender
        setattr(sender, "_RTCRtpSender__ntp_timestamp", self.ntp_timestamp)  # noqa: B010
        setattr(sender, "_RTCRtpSender__rtp_timestamp", self.rtp_timestamp)  # noqa: B010
        setattr(sender, "_RTCRtpSender__packet_count", self.packets_sent)  # noqa: B010
        setattr(sender, "_RTCRtpSender__octet_count", self.octets_sent)  # noqa: B010
        if self.tx_packets:
            dtls = sender.transport
            name = "_RTCDtlsTransport__tx_bytes"
            setattr(dtls, name, getattr(dtls, name) + self.tx_bytes)
            name = "_RTCDtlsTransport__tx_packets"
            setattr(dtls, name, getattr(dtls, name) + self.tx_packets)
            self.tx_bytes = self.tx_packets = 0

    # --- transport ---------------------------------------------------------

    def _send(self, data: bytes) -> Any:
        """SRTP-protect and send ``data``; returns an awaitable for TURN pairs only."""
        dtls = self.sender.transport
        if "_send_rtp" in dtls.__dict__:
            # Someone wrapped this transport's send (loss simulation in tests,
            # instrumentation): honour it, it protects and sends by itself.
            return dtls._send_rtp(data)
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        protected = dtls._tx_srtp.protect(data)
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        self.tx_bytes += len(protected)
        self.tx_packets += 1
        protocol = pair.protocol
        if type(protocol) is aioice.ice.StunProtocol:
            protocol.transport.sendto(protected, pair.remote_addr)
            return None
        return protocol.send_data(protected, pair.remote_addr)

    def _udp_out(self) -> DatagramOut | None:
        """The in-place SRTP + GSO output for the selected pair, if it is plain UDP.

        None while DTLS is not connected, when the pair relays through TURN,
        or when someone wrapped the transport's send (loss simulation in
        tests): those go through :meth:`_send`, one packet at a time. The
        route is checked by identity on every frame, so a new pair, a new
        SRTP session or a closed transport takes effect at once.
        """
        route = self._route
        if route is not None:
            dtls, nominated, pair, session, out = route
            if (
                dtls._state is _CONNECTED
                and nominated.get(1) is pair
                and dtls._tx_srtp is session
                and "_send_rtp" not in dtls.__dict__
            ):
                return out
        return self._resolve()

    def _resolve(self) -> DatagramOut | None:
        self._route = None
        dtls = self.sender.transport
        if dtls._state is not _CONNECTED or "_send_rtp" in dtls.__dict__:
            return None
        nominated = dtls.transport._connection._nominated
        pair = nominated.get(1)
        if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
            return None
        session = dtls._tx_srtp
        transport = pair.protocol.transport
        addr = pair.remote_addr
        out = self.out
        if out is None or not out.matches(session, transport, addr):
            if out is not None:
                out.close()
            self.out = out = DatagramOut(session, transport, addr, gso=self.gso)
        self._route = (dtls, nominated, pair, session, out)
        return out

    # --- frames ------------------------------------------------------------

    # --- loops -------------------------------------------------------------

    async def run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        sender = self.sender
        getattr(sender, "_RTCRtpSender__rtp_started").set()  # noqa: B009
        try:
            await self._loop(codec)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # __rtp_exited must be set or RTCRtpSender.stop() hangs.
            logger.exception("forwarding sender failed")
        finally:
            self.running = False
            self.close()
        track = getattr(sender, "_RTCRtpSender__track")  # noqa: B009
        if track is not None:
            track.stop()
            setattr(sender, "_RTCRtpSender__track", None)  # noqa: B010
        getattr(sender, "_RTCRtpSender__rtp_exited").set()  # noqa: B009

    async def _loop(self, codec: RTCRtpCodecParameters) -> None:
        payload_type = codec.payloadType
        assert payload_type is not None
        self.prepare(payload_type, random_sequence_number(), random32())
        self._wake = wake = asyncio.Event()
        self.running = True
        if self.down is not None and self.kind == "video":
            self.down.replay()  # the latest keyframe, from the publisher's cache
            if self._gated:
                self.down.request_keyframe()  # none cached recently enough: ask for one
        queue = self._queue
        while True:
            while not queue:
                wake.clear()
                await wake.wait()
            for data in queue.popleft():
                pending = self._send(data)
                if pending is not None:
                    await pending

    async def run_rtcp(self) -> None:
        """aiortc's ``_run_rtcp`` (SR + SDES every 0.5-1.5 s, BYE at the end), from our counters."""
        sender = self.sender
        getattr(sender, "_RTCRtpSender__rtcp_started").set()  # noqa: B009
        try:
            while True:
                await asyncio.sleep(0.5 + random.random())
                self.sync_stats()
                packets: list[Any] = [
                    RtcpSrPacket(
                        ssrc=self._ssrc or sender._ssrc,
                        sender_info=RtcpSenderInfo(
                            ntp_timestamp=self.ntp_timestamp,
                            rtp_timestamp=self.rtp_timestamp,
                            packet_count=self.packets_sent & 0xFFFFFFFF,
                            octet_count=self.octets_sent & 0xFFFFFFFF,
                        ),
                    )
                ]
                # For the round-trip time aiortc computes from receiver reports.
                setattr(sender, "_RTCRtpSender__lsr", (self.ntp_timestamp >> 16) & 0xFFFFFFFF)  # noqa: B010
                setattr(sender, "_RTCRtpSender__lsr_time", time.time())  # noqa: B010
                cname = getattr(sender, "_RTCRtpSender__cname")  # noqa: B009
                if cname is not None:
                    packets.append(
                        RtcpSdesPacket(
                            chunks=[RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode())])]
                        )
                    )
                await sender._send_rtcp(packets)
        except asyncio.CancelledError:
            pass
        self.sync_stats()
        await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
        getattr(sender, "_RTCRtpSender__rtcp_exited").set()  # noqa: B009

    def close(self) -> None:
        """Release the UDP output's socket duplicate (idempotent)."""
        self._route = None
        out, self.out = self.out, None
        if out is not None:
            out.close()

    # --- feedback (media.feedback) ----------------------------------------------

    @property
    def ssrc(self) -> int:
        """The SSRC this sender sends on (0 until its codec is negotiated)."""
        return self._ssrc

    def keyframe_wanted(self) -> None:
        """The subscriber sent PLI or FIR: relay it to the publisher."""
        if self.down is not None:
            self.down.request_keyframe()

    def reported(self, report: StreamReport) -> None:
        """The subscriber's latest receiver report about this stream."""
        self.last_report = report

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
        epoch = self._epoch_seq
        if source is None or epoch is None or self.layout is None:
            return 0
        now = self.clock()
        self._tokens = min(RESEND_BURST, self._tokens + (now - self._tokens_at) * RESEND_RATE)
        self._tokens_at = now
        resent = self._resent
        if len(resent) > 4 * RESEND_BURST:
            for old in [q for q, at in resent.items() if now - at > RESEND_HOLDOFF]:
                del resent[old]
        rtx_payload_type = getattr(self.sender, "_RTCRtpSender__rtx_payload_type")  # noqa: B009
        header_len = self.header_len
        out = []
        for sequence_number in sequence_numbers:
            if self._tokens < 1:
                self.resends_refused += 1
                break
            last = resent.get(sequence_number)
            if last is not None and now - last < RESEND_HOLDOFF:
                self.resends_refused += 1
                continue
            original = (sequence_number - self._seq_offset) & 0xFFFF
            if original != epoch and ((original - epoch) & 0xFFFF) >= 0x8000:
                continue  # from before this source
            entry = source.cached(original)
            if entry is None:
                continue
            resent[sequence_number] = now
            self._tokens -= 1
            data = self._build(entry, sequence_number)
            if rtx_payload_type is not None:
                data = (
                    _HEADER.pack(
                        data[0],
                        (data[1] & 0x80) | rtx_payload_type,
                        self.rtx_sequence_number,
                        int.from_bytes(data[4:8], "big"),
                        self.sender._rtx_ssrc,
                    )
                    + data[12:header_len]
                    + _OSN.pack(sequence_number)
                    + data[header_len:]
                )
                self.rtx_sequence_number = (self.rtx_sequence_number + 1) & 0xFFFF
            out.append(data)
        if not out:
            return 0
        self.retransmitted += len(out)
        if self.on_retransmit is not None:
            self.on_retransmit(len(out))
        try:
            udp = self._udp_out()
        except (ConnectionError, OSError):
            return 0
        if udp is not None:
            self.tx_bytes += udp.send(out)
            self.tx_packets += len(out)
        else:
            self._queue.append(out)  # TURN pair: the send loop sends them
            if self._wake is not None:
                self._wake.set()
        return len(out)


def install_fast_rtp(sender: RTCRtpSender, kind: str, *, gso: bool = True) -> FastRtp:
    """Make ``sender`` (not yet started) send through :class:`FastRtp`."""
    fast = FastRtp(sender, kind, gso=gso)
    sender._run_rtp = fast.run_rtp  # type: ignore[method-assign]
    sender._run_rtcp = fast.run_rtcp  # type: ignore[method-assign]
    sender._retransmit = fast.retransmit  # type: ignore[method-assign]
    return fast
