"""A lean RTP send loop for the SFU's forwarding senders.

aiortc's ``RTCRtpSender._run_rtp`` builds an ``RtpPacket`` per packet, computes
abs-send-time through ``datetime`` (twice per packet), serializes the header
extensions through a generic map, and awaits three layers of coroutines
(DTLS transport, ICE transport, aioice protocol) before ``sendto``. For a
forwarding sender all of that is per-subscriber, per-packet overhead.

:func:`install_fast_rtp` replaces a sender's ``_run_rtp``, ``_run_rtcp`` and
``_retransmit`` (instance attributes, so only the SFU's senders are affected)
with a loop that:

- reads frames from the sender's track and packs them with its
  :class:`~media.packer.Packer` exactly as aiortc would;
- builds each RTP header with one ``struct`` call plus a header-extension
  block (mid + abs-send-time) laid out once per sender with aiortc's own
  ``HeaderExtensionsMap``; abs-send-time is computed once per frame with
  ``time.time()`` arithmetic (all packets of a frame go out back to back);
- protects with the DTLS transport's SRTP session, in place, and sends a
  frame's packets to the selected candidate pair's socket in one UDP GSO
  ``sendmsg`` (:mod:`media.udpout`; TURN pairs still go through aioice's
  ``send_data``, one packet at a time);
- keeps a 128-packet history of the unprotected packets for NACK, answered
  with RTX (or a plain resend when RTX was not negotiated);
- keeps its packet/octet counters and last NTP/RTP timestamps in plain
  attributes, sends aiortc's sender reports (SR + SDES, BYE at the end) from
  them, and copies them into aiortc's sender and DTLS transport at each report
  (for ``getStats()``), instead of four name-mangled updates per frame.

The publisher's fan-out calls :meth:`FastRtp.send_now` directly while the
subscriber has no backlog, so a frame usually goes from the publisher's
receiver to every subscriber's socket without a task switch.

Everything else (RTCP reception, PLI relay, stop()) stays aiortc's. The
private names used here are guarded in :mod:`media.aiortc_compat`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import (
    RTP_HISTORY_SIZE,
    HeaderExtensions,
    RtcpByePacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)
from aiortc.utils import random32

from .frames import EncodedFrame, time_base_for
from .packer import Packer, shared_vp8_chunks
from .udpout import DatagramOut

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHLL")
_OSN = struct.Struct("!H")
_NTP_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_TWO32 = float(1 << 32)
_CONNECTED = DtlsState.CONNECTED


def ntp_now() -> int:
    """The current NTP time (64-bit fixed point), like ``aiortc.clock.current_ntp_time``."""
    return int((time.time() + _NTP_OFFSET) * _TWO32)


class _Layout:
    """The header-extension block of one sender: prefix, abs-send-time, suffix."""

    __slots__ = ("first_byte", "has_abs", "post", "pre")

    def __init__(self, sender: RTCRtpSender) -> None:
        ext_map = getattr(sender, "_RTCRtpSender__rtp_header_extensions_map")  # noqa: B009
        mid = getattr(sender, "_RTCRtpSender__mid")  # noqa: B009
        blocks = []
        for abs_send_time in (0, 0xFFFFFF):
            profile, value = ext_map.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
            blocks.append(struct.pack("!HH", profile, len(value) >> 2) + value if value else b"")
        zero, ones = blocks
        diff = [i for i, (a, b) in enumerate(zip(zero, ones, strict=True)) if a != b]
        self.has_abs = bool(diff)
        if diff:
            start = diff[0]
            if diff != [start, start + 1, start + 2]:
                raise RuntimeError("media: unexpected abs-send-time extension layout")
            self.pre, self.post = zero[:start], zero[start + 3 :]
        else:
            self.pre, self.post = zero, b""
        # V=2, no padding, X when there are extensions, no CSRC.
        self.first_byte = 0x90 if zero else 0x80


class FastRtp:
    """The replacement send loop, retransmission and sender reports of one forwarding sender."""

    def __init__(self, sender: RTCRtpSender, packer: Packer, *, gso: bool = True) -> None:
        self.sender = sender
        self.packer = packer
        self.gso = gso
        self.out: DatagramOut | None = None
        # (dtls transport, its ICE connection's nominated pairs, pair, SRTP session, output)
        self._route: tuple[Any, dict[int, Any], Any, Any, DatagramOut] | None = None
        # Unprotected packets by sequence number modulo the size, for NACKs.
        self.history: list[bytes | None] = [None] * RTP_HISTORY_SIZE
        self.rtx_sequence_number = random_sequence_number()
        self.layout: _Layout | None = None
        self.running = False
        self.payload_type = 0
        self.sequence_number = 0
        self.timestamp_origin = 0
        # What the next sender report says (synced into aiortc's sender then).
        self.packets_sent = 0
        self.octets_sent = 0
        self.ntp_timestamp = 0
        self.rtp_timestamp = 0
        self.retransmitted = 0
        self.direct_frames = 0  # sent from the fan-out by send_now
        self.send_errors = 0
        self.tx_bytes = 0  # protected bytes not yet added to the DTLS transport's stats
        self.tx_packets = 0
        #: Told how many packets the queued path sent (the fan-out counts its own).
        self.on_packets: Callable[[int], None] | None = None
        # Derived once by prepare().
        self._single = False  # one packet per frame (audio)
        self._vp8 = False
        self._time_base: Any = None
        self._ssrc = 0
        self._first_byte = 0x80
        self._ext_pre = b""
        self._ext_post = b""
        self._has_abs = False
        self.header_len = 12

    def prepare(self, payload_type: int, sequence_number: int, timestamp_origin: int) -> None:
        """Fix what every packet of this sender shares (once its codec is negotiated)."""
        sender = self.sender
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp_origin = timestamp_origin
        self.layout = layout = _Layout(sender)
        self._ssrc = sender._ssrc
        self._first_byte = layout.first_byte
        self._ext_pre, self._ext_post, self._has_abs = layout.pre, layout.post, layout.has_abs
        self.header_len = 12 + len(layout.pre) + len(layout.post) + (3 if layout.has_abs else 0)
        mime = self.packer.mime_type
        self._vp8 = mime == "video/vp8"
        self._single = mime == "audio/opus"
        self._time_base = time_base_for(self.packer.clock_rate)

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

    def _packets(self, frame: EncodedFrame, pts: int) -> list[bytes]:
        """The RTP packets (unprotected) of ``frame`` at ``pts``; recorded for NACKs."""
        data = frame.data
        if frame.time_base is self._time_base:
            ts = pts
        else:
            ts = self.packer.timestamp(EncodedFrame(data, pts, frame.time_base, frame.keyframe))
        timestamp = (self.timestamp_origin + ts) & 0xFFFFFFFF
        ntp = ntp_now()
        if self._has_abs:
            ext = self._ext_pre + ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big") + self._ext_post
        else:
            ext = self._ext_pre
        seq = self.sequence_number
        history = self.history
        pt = self.payload_type
        first_byte = self._first_byte
        ssrc = self._ssrc
        if self._single:
            packet = b"".join(
                (_HEADER.pack(first_byte, 0x80 | pt, seq, timestamp, ssrc), ext, data)
            )
            history[seq % RTP_HISTORY_SIZE] = packet
            packets = [packet]
            octets = len(data)
            seq = (seq + 1) & 0xFFFF
        else:
            if self._vp8:
                # Split once per frame for every subscriber (shared_vp8_chunks)
                # behind this stream's own descriptor and picture id.
                chunks = shared_vp8_chunks(data)
                packer = self.packer
                pid = (0x8000 | packer.picture_id).to_bytes(2, "big")
                packer.picture_id = (packer.picture_id + 1) % (1 << 15)
                first, rest = ext + b"\x90\x80" + pid, ext + b"\x80\x80" + pid
                octets = len(data) + 4 * len(chunks)
            else:
                chunks, _ = self.packer.pack(
                    EncodedFrame(data, pts, frame.time_base, frame.keyframe)
                )
                first = rest = ext
                octets = sum(len(c) for c in chunks)
            if not chunks:
                return []
            pack = _HEADER.pack
            last = len(chunks) - 1
            packets = []
            for i, chunk in enumerate(chunks):
                if i == 0:
                    header = pack(first_byte, 0x80 | pt if last == 0 else pt, seq, timestamp, ssrc)
                    packet = b"".join((header, first, chunk))
                else:
                    header = pack(first_byte, 0x80 | pt if i == last else pt, seq, timestamp, ssrc)
                    packet = b"".join((header, rest, chunk))
                history[seq % RTP_HISTORY_SIZE] = packet
                packets.append(packet)
                seq = (seq + 1) & 0xFFFF
        self.sequence_number = seq
        self.packets_sent += len(packets)
        self.octets_sent += octets
        self.ntp_timestamp = ntp
        self.rtp_timestamp = timestamp
        return packets

    def send_now(self, frame: EncodedFrame, pts: int) -> int:
        """Send ``frame`` at ``pts`` synchronously, from the publisher's fan-out, if possible.

        Only while the send loop runs idle (the caller checks its track's
        queue is empty), the sender is enabled, and the selected pair is plain
        UDP. Returns the number of packets sent, or -1 when the frame must go
        through the queue instead.
        """
        if not self.running or not self.sender._enabled:
            return -1
        try:
            out = self._udp_out()
            if out is None:
                return -1
            self.direct_frames += 1
            packets = self._packets(frame, pts)
            self.tx_bytes += out.send(packets)
            self.tx_packets += len(packets)
            return len(packets)
        except Exception:
            # Never let one subscriber break the publisher's fan-out; log the
            # first failure of this sender with its traceback, count the rest.
            self.send_errors += 1
            if self.send_errors == 1:
                logger.exception("forwarding sender: direct send failed")
            return 0

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
        sender = self.sender
        payload_type = codec.payloadType
        assert payload_type is not None
        self.prepare(payload_type, random_sequence_number(), random32())
        self.running = True
        while True:
            track = getattr(sender, "_RTCRtpSender__track")  # noqa: B009
            if track is None:
                await asyncio.sleep(0.02)
                continue
            frame = await track.recv()
            if not sender._enabled:
                continue
            packets = self._packets(frame, frame.pts)
            if self.on_packets is not None:
                self.on_packets(len(packets))
            out = self._udp_out()
            if out is not None:
                self.tx_bytes += out.send(packets)
                self.tx_packets += len(packets)
                continue
            for data in packets:
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

    async def retransmit(self, sequence_number: int) -> None:
        data = self.history[sequence_number % RTP_HISTORY_SIZE]
        if data is None or int.from_bytes(data[2:4], "big") != sequence_number:
            return
        header_len = self.header_len
        rtx_payload_type = getattr(self.sender, "_RTCRtpSender__rtx_payload_type")  # noqa: B009
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
        self.retransmitted += 1
        pending = self._send(data)
        if pending is not None:
            await pending


def install_fast_rtp(sender: RTCRtpSender, packer: Packer, *, gso: bool = True) -> FastRtp:
    """Make ``sender`` (not yet started) send through :class:`FastRtp`."""
    fast = FastRtp(sender, packer, gso=gso)
    sender._run_rtp = fast.run_rtp  # type: ignore[method-assign]
    sender._run_rtcp = fast.run_rtcp  # type: ignore[method-assign]
    sender._retransmit = fast.retransmit  # type: ignore[method-assign]
    return fast
