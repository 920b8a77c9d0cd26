"""A lean RTP send loop for the SFU's forwarding senders.

aiortc's ``RTCRtpSender._run_rtp`` builds an ``RtpPacket`` per packet, computes
abs-send-time through ``datetime`` (twice per packet), serializes the header
extensions through a generic map, and awaits three layers of coroutines
(DTLS transport, ICE transport, aioice protocol) before ``sendto``. For a
forwarding sender all of that is per-subscriber, per-packet overhead.

:func:`install_fast_rtp` replaces a sender's ``_run_rtp`` and ``_retransmit``
(instance attributes, so only the SFU's senders are affected) with a loop that:

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
  with RTX (or a plain resend when RTX was not negotiated), and updates the
  counters aiortc's own ``_run_rtcp`` puts in sender reports.

Everything else (RTCP handling, PLI relay, sender reports, stop()) stays
aiortc's. The private names used here are guarded in :mod:`media.aiortc_compat`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any

import aioice.ice
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions
from aiortc.utils import random32

from .frames import EncodedFrame
from .packer import Packer, shared_vp8_chunks
from .udpout import DatagramOut

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHLL")
_OSN = struct.Struct("!H")
_NTP_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_TWO32 = float(1 << 32)


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
    """The replacement send loop and retransmission of one forwarding sender."""

    def __init__(self, sender: RTCRtpSender, packer: Packer, *, gso: bool = True) -> None:
        self.sender = sender
        self.packer = packer
        self.gso = gso
        self.out: DatagramOut | None = None
        self.history: list[tuple[int, bytes, int] | None] = [None] * RTP_HISTORY_SIZE
        self.rtx_sequence_number = random_sequence_number()
        self.layout: _Layout | None = None
        self.running = False
        self.payload_type = 0
        self.sequence_number = 0
        self.timestamp_origin = 0
        self.packets_sent = 0
        self.retransmitted = 0
        self.direct_frames = 0  # sent from the fan-out by send_now
        self.tx_bytes = 0  # protected bytes not yet added to the DTLS transport's stats

    def _flush_stats(self, packets: int) -> None:
        """Add what was sent to the DTLS transport's counters (its getStats())."""
        dtls = self.sender.transport
        name = "_RTCDtlsTransport__tx_bytes"
        setattr(dtls, name, getattr(dtls, name) + self.tx_bytes)
        name = "_RTCDtlsTransport__tx_packets"
        setattr(dtls, name, getattr(dtls, name) + packets)
        self.tx_bytes = 0

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
        protocol = pair.protocol
        if type(protocol) is aioice.ice.StunProtocol:
            protocol.transport.sendto(protected, pair.remote_addr)
            return None
        return protocol.send_data(protected, pair.remote_addr)

    # --- frames ------------------------------------------------------------

    def _packets(self, frame: EncodedFrame) -> list[bytes]:
        """The RTP packets (unprotected) of one frame; records them for NACK."""
        sender = self.sender
        packer = self.packer
        if packer.mime_type == "video/vp8":
            # Split once per frame for every subscriber (shared_vp8_chunks) and
            # prefix each chunk with this stream's own picture id.
            chunks = shared_vp8_chunks(frame.data)
            ts = packer.timestamp(frame)
            pid = (0x8000 | packer.picture_id).to_bytes(2, "big")
            packer.picture_id = (packer.picture_id + 1) % (1 << 15)
            first, rest = b"\x90\x80" + pid, b"\x80\x80" + pid
            descriptors = [first] + [rest] * (len(chunks) - 1)
        else:
            chunks, ts = packer.pack(frame)
            descriptors = [b""] * len(chunks)
        if not chunks:
            return []
        timestamp = (self.timestamp_origin + ts) & 0xFFFFFFFF
        ssrc = sender._ssrc
        payload_type = self.payload_type
        sequence_number = self.sequence_number
        history = self.history
        pack_header = _HEADER.pack
        ntp = ntp_now()
        layout = self.layout
        assert layout is not None
        if layout.has_abs:
            ext = layout.pre + ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big") + layout.post
        else:
            ext = layout.pre
        header_len = 12 + len(ext)
        first_byte = layout.first_byte
        last = len(chunks) - 1
        packets = []
        octets = 0
        for i, chunk in enumerate(chunks):
            header = pack_header(
                first_byte,
                0x80 | payload_type if i == last else payload_type,
                sequence_number,
                timestamp,
                ssrc,
            )
            descriptor = descriptors[i]
            data = b"".join((header, ext, descriptor, chunk))
            history[sequence_number % RTP_HISTORY_SIZE] = (sequence_number, data, header_len)
            packets.append(data)
            octets += len(descriptor) + len(chunk)
            sequence_number = (sequence_number + 1) & 0xFFFF
        self.sequence_number = sequence_number
        self.packets_sent += len(packets)
        setattr(sender, "_RTCRtpSender__ntp_timestamp", ntp)  # noqa: B010
        setattr(sender, "_RTCRtpSender__rtp_timestamp", timestamp)  # noqa: B010
        name = "_RTCRtpSender__octet_count"
        setattr(sender, name, getattr(sender, name) + octets)
        name = "_RTCRtpSender__packet_count"
        setattr(sender, name, getattr(sender, name) + len(packets))
        return packets

    def _udp_out(self) -> DatagramOut | None:
        """The in-place SRTP + GSO output for the selected pair, if it is plain UDP.

        None while DTLS is not connected, when the pair relays through TURN,
        or when someone wrapped the transport's send (loss simulation in
        tests): those go through :meth:`_send`, one packet at a time.
        """
        dtls = self.sender.transport
        if dtls._state != DtlsState.CONNECTED or "_send_rtp" in dtls.__dict__:
            return None
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
            return None
        session = dtls._tx_srtp
        transport = pair.protocol.transport
        addr = pair.remote_addr
        out = self.out
        if out is not None and out.matches(session, transport, addr):
            return out
        if out is not None:
            out.close()
        self.out = out = DatagramOut(session, transport, addr, gso=self.gso)
        return out

    def _emit(self, packets: list[bytes]) -> bool:
        """Send ``packets`` through the UDP output; False when there is none."""
        out = self._udp_out()
        if out is None:
            return False
        self.tx_bytes += out.send(packets)
        self._flush_stats(len(packets))
        return True

    def send_now(self, frame: EncodedFrame) -> bool:
        """Send ``frame`` synchronously, from the publisher's fan-out, if possible.

        Only while the send loop runs idle (the caller checks its track's
        queue is empty), the sender is enabled, and the selected pair is plain
        UDP; otherwise returns False and the frame goes through the queue.
        """
        if not self.running or not self.sender._enabled:
            return False
        try:
            out = self._udp_out()
            if out is None:
                return False
            self.direct_frames += 1
            packets = self._packets(frame)
            self.tx_bytes += out.send(packets)
            self._flush_stats(len(packets))
        except Exception:
            # Never let one subscriber break the publisher's fan-out.
            logger.exception("forwarding sender: direct send failed")
        return True

    # --- loop --------------------------------------------------------------

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
        self.payload_type = payload_type
        self.sequence_number = random_sequence_number()
        self.timestamp_origin = random32()
        self.layout = _Layout(sender)
        self.running = True
        while True:
            track = getattr(sender, "_RTCRtpSender__track")  # noqa: B009
            if track is None:
                await asyncio.sleep(0.02)
                continue
            frame = await track.recv()
            if not sender._enabled:
                continue
            packets = self._packets(frame)
            if self._emit(packets):
                continue
            for data in packets:
                pending = self._send(data)
                if pending is not None:
                    await pending
            self._flush_stats(len(packets))

    def close(self) -> None:
        """Release the UDP output's socket duplicate (idempotent)."""
        out, self.out = self.out, None
        if out is not None:
            out.close()

    async def retransmit(self, sequence_number: int) -> None:
        entry = self.history[sequence_number % RTP_HISTORY_SIZE]
        if entry is None or entry[0] != sequence_number:
            return
        _, data, header_len = entry
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
        self._flush_stats(1)


def install_fast_rtp(sender: RTCRtpSender, packer: Packer, *, gso: bool = True) -> FastRtp:
    """Make ``sender`` (not yet started) send through :class:`FastRtp`."""
    fast = FastRtp(sender, packer, gso=gso)
    sender._run_rtp = fast.run_rtp  # type: ignore[method-assign]
    sender._retransmit = fast.retransmit  # type: ignore[method-assign]
    return fast
