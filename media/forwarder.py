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
from typing import TYPE_CHECKING, Any, Protocol

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
from .udpout import ACCELERATED, _udpsend

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

#: An audio level (dBov, RFC 6464) at or under this counts as speech.
SPEECH_LEVEL = 50


class PacketStore(Protocol):
    """A track's packet cache: :class:`media.nack.PacketCache` or the C ``Sink``."""

    hits: int
    misses: int

    @property
    def newest_seq(self) -> int | None: ...
    @property
    def keyframe_seq(self) -> int | None: ...
    def put(self, seq: int, item: Forwardable, keyframe: bool = False) -> None: ...
    def get(self, seq: int) -> Forwardable | None: ...
    def clear(self) -> None: ...


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
    ) -> None:
        self.id = str(uuid.uuid4())
        self.participant_id = participant_id
        self.kind: str = transceiver.kind
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
        self._packets_in = 0
        mime = self.mime_type
        self._vp8 = mime == "video/vp8"
        self._h264 = mime == "video/h264"
        self._video = self.kind == "video"
        # The C receive path's half of this track (media/_receive.c): it reads,
        # caches and forwards VP8 and audio packets itself while every
        # subscriber is on the C fan-out; H264 comes through on_packet.
        self._sink: Any = None
        self.cache: PacketStore | None = None
        if ACCELERATED and _udpsend is not None:
            mode = 1 if self._vp8 else 2 if not self._video else 0
            size = CACHE_PACKETS if self._video else 0
            self._sink = _udpsend.Sink(mode, size, SPEECH_LEVEL, self._arm)
            self._sink.fast = 1  # no subscriber yet: nothing on the Python fan-out
            if self._video:
                self.cache = self._sink
        elif self._video:
            self.cache = PacketCache(CACHE_PACKETS)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._arm_timer: asyncio.TimerHandle | None = None
        self._keyframes = KeyframeRequester(
            self._send_pli,
            pli_min_interval,
            on_sent=metrics.pli_sent,
            name=f"{participant_id}/{self.kind}",
        )
        inbound.bind(self.mid, self)
        on_receiver_end(transceiver.receiver, self._end)

    def __repr__(self) -> str:
        return f"UpTrack({self.participant_id}/{self.kind} {self.id[:8]})"

    @property
    def mime_type(self) -> str:
        return str(self.codec.mimeType).lower()

    @property
    def audio_level_id(self) -> int | None:
        """The audio-level extension id on the publisher's connection, if negotiated."""
        return self._inbound.ids.audio_level if self.kind == "audio" else None

    @property
    def fast_sink(self) -> Any:
        """The C half the receive path hands VP8 and audio packets to (None: on_packet)."""
        sink = self._sink
        return sink if sink is not None and sink.mode != 0 else None

    @property
    def packets_in(self) -> int:
        """Packets received from the publisher (both paths)."""
        sink = self._sink
        return self._packets_in + (sink.packets_in if sink is not None else 0)

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
        self._packets_in += 1
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
            cache.put(packet.sequence_number, entry, entry[6])
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

    def _arm(self, arm_id: int) -> None:
        # The C half forwarded the first packets of a frame: flush them in
        # FLUSH_AFTER unless the frame completes first.
        if self._arm_timer is not None:
            self._arm_timer.cancel()
        self._arm_timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._expire, arm_id)

    def _expire(self, arm_id: int) -> None:
        self._arm_timer = None
        if self._sink is not None:
            self._sink.expire(arm_id)
        self.sync()

    def sync(self) -> None:
        """Count what the C half forwarded since the last call (receiver report ticks)."""
        sink = self._sink
        if sink is None:
            return
        frames, packets, nbytes = sink.take_counts()
        if packets:
            self._metrics.packets_forwarded(self.kind, frames, packets, nbytes)

    def replay(self, down: DownTrack) -> None:
        """Send ``down`` the cached latest keyframe and what followed, if recent enough.

        A subscriber whose connection comes up (or whose slot switches to this
        track) need not wait for the keyframe its PLI asks for: the one the
        publisher sent last is usually still in the cache (Galène does the same).
        """
        cache = self.cache
        if cache is None:
            return
        start, newest = cache.keyframe_seq, cache.newest_seq
        if start is None or newest is None:
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
        sink = self._sink
        if sink is not None:
            c_streams = [s for impl, ss in groups.items() if impl.accelerated for s in ss]
            sink.downs = c_streams
            # The C half forwards only while every subscriber is on the C fan-out.
            sink.fast = int(len(c_streams) == len(self._senders) and not self.ended)

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
        if self._arm_timer is not None:
            self._arm_timer.cancel()
            self._arm_timer = None
        if self._sink is not None:
            self._sink.fast = 0
            self._sink.downs = []
            self.sync()
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
