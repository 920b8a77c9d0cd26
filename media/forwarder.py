"""Up tracks (one per published track) and down tracks (one per subscriber).

Packet-level forwarding: an :class:`UpTrack` gets each RTP packet of its
publisher's stream from the receive path (:mod:`media.inbound`), reads once
what every subscriber needs to know of it (does it start a keyframe, where
is its VP8 picture id), keeps it in a packet cache shared by all subscribers
(NACKs from any of them are answered from there), and hands it to every
:class:`DownTrack`. A down track's sender (:class:`media.fastsend.FastRtp`)
rewrites only the header (SSRC, sequence number, timestamp; the VP8 picture
id and TL0PICIDX) onto the shared payload and queues it. Audio is sent at
once; video when its frame is complete (the marker bit) or after
``FLUSH_AFTER`` at the latest, so each subscriber gets a frame in as few
``sendmsg`` calls as the packet sizes allow (UDP GSO) while a packet is never
held back waiting for a lost one.

A down track is the ``MediaStreamTrack`` behind a subscriber's
``RTCRtpSender`` (aiortc needs one per sender); it never yields frames and
never ends on its own, so its transceiver can carry another publisher later.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import downstream
from .aiortc_compat import negotiated_codecs, on_receiver_end
from .downstream import PacketTuple, describe, vp8_packet
from .keyframes import KeyframeRequester
from .metrics import MediaMetrics
from .nack import PacketCache
from .payload import h264_keyframe_start
from .rtpheader import RtpPacket
from .signals import default_source

if TYPE_CHECKING:
    from .fastsend import FastRtp
    from .inbound import PublisherInbound

logger = logging.getLogger(__name__)

#: Packets of a publisher's video stream kept for subscribers' NACKs (~4 s at 2.5 Mbit/s).
CACHE_PACKETS = 1024
#: Longest a video packet waits for the rest of its frame before it is sent anyway.
FLUSH_AFTER = 0.005
#: A new subscriber is sent the cached latest keyframe and what followed it, if
#: that is at most this many packets; otherwise it waits for a fresh keyframe.
MAX_REPLAY_PACKETS = 128


#: An incoming packet as forwarding reads it, computed once for every
#: subscriber (:func:`media.downstream.describe`); what the packet cache keeps.
Forwardable = PacketTuple


#: The packet tuple of a parsed packet (tests build theirs with it).
forwardable = describe


class UpTrack:
    """One published track: takes its packets, fans them out, asks for keyframes."""

    def __init__(
        self,
        participant_id: str,
        transceiver: RTCRtpTransceiver,
        inbound: PublisherInbound,
        *,
        pli_min_interval: float,
        metrics: MediaMetrics,
        on_ended: Callable[[UpTrack], None],
        source: str | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.participant_id = participant_id
        self.kind: str = transceiver.kind
        #: What it carries: ``camera``, ``screen`` or ``microphone`` (``media.seam.TRACK_SOURCES``),
        #: as the publisher's offer said; what an allocator ranks tracks by (screen before camera).
        self.source: str = source or default_source(self.kind)
        self.mid: str = str(transceiver.mid)
        codecs = [c for c in negotiated_codecs(transceiver) if c.name.lower() != "rtx"]
        if not codecs:
            raise ValueError("transceiver has no negotiated codec")
        self.codec: Any = codecs[0]
        self._metrics = metrics
        self._on_ended = on_ended
        self._inbound = inbound
        self._downs: list[DownTrack] = []
        self._senders: list[FastRtp] = []
        # The downs' streams by implementation (C or Python), for the hot path.
        self._fanout: list[tuple[Callable[[list[Any], Any, bool], int], list[Any]]] = []
        self._flushes: list[tuple[Callable[[list[Any]], None], list[Any]]] = []
        self.ended = False
        self.packets_in = 0
        mime = self.mime_type
        self._vp8 = mime == "video/vp8"
        self._h264 = mime == "video/h264"
        self._video = self.kind == "video"
        self.cache: PacketCache[Forwardable] | None = (
            PacketCache(CACHE_PACKETS) if self.kind == "video" else None
        )
        self._flush_timer: asyncio.TimerHandle | None = None
        self._keyframe_seq: int | None = None  # where the latest cached keyframe starts
        self._newest_seq: int | None = None
        self._keyframes = KeyframeRequester(
            self._send_pli,
            pli_min_interval,
            on_sent=metrics.pli_sent,
            name=f"{participant_id}/{self.kind}",
        )
        inbound.bind(self.mid, self)
        on_receiver_end(transceiver.receiver, self._end)

    def __repr__(self) -> str:
        return f"UpTrack({self.participant_id}/{self.source} {self.id[:8]})"

    @property
    def mime_type(self) -> str:
        return str(self.codec.mimeType).lower()

    @property
    def audio_level_id(self) -> int | None:
        """The audio-level extension id on the publisher's connection, if negotiated."""
        return self._inbound.ids.audio_level if self.kind == "audio" else None

    @property
    def subscriber_count(self) -> int:
        return len(self._downs)

    def downs(self) -> list[DownTrack]:
        """The down tracks fed by this track (a copy)."""
        return list(self._downs)

    # --- packets -------------------------------------------------------------

    def on_packet(self, packet: RtpPacket) -> None:
        """One packet from the receive path (original sequence number, RTX unwrapped)."""
        if self.ended:
            return
        self.packets_in += 1
        if self._vp8:
            entry = vp8_packet(packet, -1)
            if entry is None:  # a truncated descriptor: forwarded, never a keyframe
                entry = describe(packet, False)
        elif self._video:
            keyframe = self._h264 and h264_keyframe_start(
                packet.data, packet.payload_start, packet.payload_end
            )
            entry = describe(packet, keyframe)
        else:
            # Audio: every packet stands alone; its level (RFC 6464) forwarded as sent.
            level = -1
            extensions = packet.extensions
            if extensions is not None:
                level_id = self._inbound.ids.audio_level
                value = extensions.get(level_id) if level_id is not None else None
                if value:
                    level = value[0]
            entry = describe(packet, True, level=level)
        cache = self.cache
        if cache is not None:
            seq = packet.sequence_number
            cache.put(seq, entry)
            newest = self._newest_seq
            if newest is None or 0 < ((seq - newest) & 0xFFFF) < 0x8000:
                self._newest_seq = seq
            if entry[6]:  # a keyframe
                self._keyframe_seq = seq
        # A whole frame (audio: a packet) queued: each subscriber gets it in
        # as few GSO sends as the sizes allow.
        complete = packet.marker or not self._video
        taken = 0
        for forward, streams in self._fanout:
            taken += forward(streams, entry, complete)
        if complete and self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not taken:
            return
        self._metrics.packets_forwarded(
            self.kind, taken if packet.marker else 0, taken, taken * packet.payload_size
        )
        if not complete and self._flush_timer is None:
            # The frame's last packet may be lost or late: don't hold the rest.
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()
        for flush, streams in self._flushes:
            flush(streams)

    def replay(self, down: DownTrack) -> None:
        """Send ``down`` the cached latest keyframe and what followed, if recent enough.

        A subscriber whose connection comes up (or whose slot switches to this
        track) need not wait for the keyframe its PLI asks for: the one the
        publisher sent last is usually still in the cache (Galène does the same).
        """
        start, newest, cache = self._keyframe_seq, self._newest_seq, self.cache
        if cache is None or start is None or newest is None:
            return
        count = (newest - start) & 0xFFFF
        if count >= MAX_REPLAY_PACKETS:
            return
        sent = 0
        for i in range(count + 1):
            entry = cache.get((start + i) & 0xFFFF)
            if entry is not None and down.forward(entry):
                sent += 1
        if sent:
            down.replays += 1
            down.flush()

    def cached(self, sequence_number: int) -> Forwardable | None:
        """A recent packet by its original sequence number (for retransmissions)."""
        return self.cache.get(sequence_number) if self.cache is not None else None

    # --- keyframes -----------------------------------------------------------

    async def _send_pli(self) -> bool:
        return self._inbound.send_pli(self.mid)

    def request_keyframe(self) -> None:
        if self.kind == "video" and not self.ended:
            self._keyframes.request()

    # --- subscribers -----------------------------------------------------------

    def add_down(self, down: DownTrack) -> None:
        """Start feeding ``down``; asks the publisher for a keyframe for it."""
        if down not in self._downs:
            self._downs.append(down)
            self._refresh_senders()
        self.request_keyframe()

    def remove_down(self, down: DownTrack) -> None:
        if down in self._downs:
            self._downs.remove(down)
            self._refresh_senders()

    def _refresh_senders(self) -> None:
        self._senders = [d.sender for d in self._downs if d.sender is not None]
        groups: dict[downstream.Implementation, list[Any]] = {}
        for sender in self._senders:
            groups.setdefault(sender.impl, []).append(sender.stream)
        self._fanout = [(impl.forward, streams) for impl, streams in groups.items()]
        self._flushes = [(impl.flush, streams) for impl, streams in groups.items()]

    def end(self) -> None:
        """The published track is gone (m-line removed, connection closed)."""
        if not self.ended:
            self.ended = True
            self._inbound.unbind(self.mid, self)
            self._on_ended(self)

    _end = end  # aiortc's receiver-stop callback

    async def close(self) -> None:
        """Stop forwarding; detaches every down track (idempotent)."""
        self.ended = True
        self._inbound.unbind(self.mid, self)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for down in list(self._downs):
            down.detach(self)
        self._downs.clear()
        self._senders = []
        self._fanout = []
        self._flushes = []
        if self.cache is not None:
            self.cache.clear()
        await self._keyframes.close()


class DownTrack(MediaStreamTrack):
    """A subscriber's end of one forwarded track; its sender does the sending.

    ``sender`` (set by :class:`media.subscription.Slot`) rewrites and sends
    what :meth:`forward` hands it. ``recv`` only waits: aiortc's own send loop
    is replaced, but a sender still needs a track.
    """

    def __init__(self, kind: str, metrics: MediaMetrics) -> None:
        super().__init__()
        self.kind = kind
        self._metrics = metrics
        self.source: UpTrack | None = None
        self.sender: FastRtp | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.replays = 0  # times it started from the source's cached keyframe

    def attach(self, source: UpTrack) -> None:
        """Forward ``source`` from its next keyframe on, numbering continuing ours."""
        if self.source is source:
            return
        if self.source is not None:
            self.source.remove_down(self)
        self.source = source
        if self.sender is not None:
            self.sender.switch()
        source.add_down(self)
        self.replay()

    def detach(self, source: UpTrack | None = None) -> None:
        """Stop forwarding (only if ``source`` is still ours, when given)."""
        current = self.source
        if current is None or (source is not None and current is not source):
            return
        self.source = None
        current.remove_down(self)
        if self.sender is not None:
            self.sender.switch()

    @property
    def packets_out(self) -> int:
        """Packets its sender forwarded (from every source it carried)."""
        return self.sender.packets_sent if self.sender is not None else 0

    def forward(self, entry: Forwardable) -> bool:
        """Rewrite and queue one packet; False if the gate or the sender refused it."""
        sender = self.sender
        return sender is not None and sender.forward(entry)

    def flush(self) -> None:
        if self.sender is not None:
            self.sender.flush()

    def replay(self) -> None:
        """Start from the source's cached keyframe now, if the sender can send."""
        sender = self.sender
        if self.source is not None and sender is not None and sender.ready:
            self.source.replay(self)

    def request_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR), or needs one: relay it upstream."""
        self._metrics.pli_relayed()
        if self.source is not None:
            self.source.request_keyframe()

    async def recv(self) -> Any:
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        if self.readyState == "live":
            await self._stopped
        raise MediaStreamError

    def stop(self) -> None:
        """End the track for good (only when its sender goes too)."""
        self.detach()
        self.sender = None
        super().stop()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
