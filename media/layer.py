"""One encoding of a published track: its packets, packet cache and fan-out.

A track that is not simulcast has one :class:`Layer`; a simulcast video
track has one per rid (media/simulcast.py). The receive path hands each
layer its packets (``on_packet`` from Python, or the layer's C ``Sink``
straight from ``media/_receive.c``); the layer reads once what every
subscriber needs of a packet (does it start a keyframe, where is its VP8
picture id), keeps it in its cache (NACKs from any subscriber are answered
from there) and hands it to every subscriber stream currently on this layer.
Audio is sent at once; video when its frame is complete (the marker bit) or
after ``FLUSH_AFTER`` at the latest, so each subscriber gets a frame in as
few ``sendmsg`` calls as the packet sizes allow (UDP GSO) while a packet is
never held back waiting for a lost one.

Switching a subscriber to this layer happens at one of this layer's
keyframes (:meth:`Layer.switch_here`): until then the subscriber stays on
its old layer, so an up-switch never freezes the picture; while a switch is
pending the layer's packets come through Python, which sees the keyframe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import downstream
from .downstream import PacketTuple, describe, vp8_packet
from .keyframes import KeyframeRequester
from .metrics import MediaMetrics
from .nack import PacketCache
from .payload import h264_keyframe_start, vp8_keyframe_size
from .rtpheader import RtpPacket
from .sendlog import TRANSPORT_OVERHEAD
from .speakers import SPEECH_LEVEL
from .udpout import ACCELERATED, _udpsend

if TYPE_CHECKING:
    from .fastsend import FastRtp
    from .forwarder import DownTrack, UpTrack

logger = logging.getLogger(__name__)

#: Packets of a publisher's video stream kept for subscribers' NACKs (~4 s at 2.5 Mbit/s).
CACHE_PACKETS = 1024
#: Longest a video packet waits for the rest of its frame before it is sent anyway.
FLUSH_AFTER = 0.005
#: A new subscriber is sent the cached latest keyframe and what followed it, if
#: that is at most this many packets; otherwise it waits for a fresh keyframe.
MAX_REPLAY_PACKETS = 128
#: Ticks (receiver-report periods, 0.5-1.5 s) a layer's allocation cost is the median of.
COST_TICKS = 3
#: Bytes a forwarded packet costs on a subscriber's link beyond its payload, as the
#: send-side estimate counts them: the RTP header, the header extensions the SFU
#: writes and the SRTP tag (about 40), and the IP and UDP headers
#: (media.sendlog.TRANSPORT_OVERHEAD). Audio at 50 packets/s of 60-byte payloads
#: costs twice its payload rate.
PACKET_OVERHEAD = 40 + TRANSPORT_OVERHEAD


class PacketStore(Protocol):
    """A layer's packet cache: :class:`media.nack.PacketCache` or the C ``Sink``."""

    hits: int
    misses: int

    @property
    def newest_seq(self) -> int | None: ...
    @property
    def keyframe_seq(self) -> int | None: ...
    def put(self, seq: int, item: PacketTuple, keyframe: bool = False) -> None: ...
    def get(self, seq: int) -> PacketTuple | None: ...
    def holds(self, seq: int) -> bool: ...
    def clear(self) -> None: ...


class Layer:
    """One encoding (rid) of an :class:`media.forwarder.UpTrack`."""

    def __init__(
        self,
        track: UpTrack,
        rid: str | None,
        *,
        pli_min_interval: float,
        metrics: MediaMetrics,
    ) -> None:
        self.track = track
        self.rid = rid
        self.kind = track.kind
        self._metrics = metrics
        mime = track.mime_type
        self._vp8 = mime == "video/vp8"
        self._h264 = mime == "video/h264"
        self._video = self.kind == "video"
        self.ended = False
        self._senders: list[FastRtp] = []
        # The senders' streams by implementation (C or Python), for the hot path.
        self._fanout: list[tuple[Callable[[list[Any], Any, bool], int], list[Any]]] = []
        self._flushes: list[tuple[Callable[[list[Any]], None], list[Any]]] = []
        self._python_only = False
        #: Subscribers to move here at this layer's next keyframe.
        self.pending: list[DownTrack] = []
        self._packets_in = 0
        self._bytes_in = 0
        self._rtx_bytes_in = 0
        self._keyframes_in = 0
        self._duplicates = 0
        self._synced = (0, 0)  # duplicates and keyframes counted in the metrics
        self._repair = 0  # payload bytes of the next packet, if it came as RTX
        self._sampled = 0
        self._size = (0, 0)  # of the latest VP8 keyframe (Python path without the C sink)
        #: Incoming payload bit rate (bit/s), smoothed, updated at each tick.
        self.bitrate = 0.0
        self._rate_bytes = 0
        self._rate_at: float | None = None
        # The last few ticks' rates, unsmoothed: the allocator's cost (see cost).
        self._rates: collections.deque[float] = collections.deque(maxlen=COST_TICKS)
        # Audio levels since the last take_audio_levels (RFC 6464; the active speaker).
        self._levels = [0, 0, 0]
        # The C receive path's half of this layer (media/_receive.c): it reads,
        # caches and forwards VP8 and audio packets itself while every
        # subscriber is on the C fan-out and no switch is pending; H264 comes
        # through on_packet.
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
        name = f"{track.participant_id}/{self.kind}" + (f"/{rid}" if rid else "")
        self._keyframes = KeyframeRequester(
            self._send_pli, pli_min_interval, on_sent=metrics.pli_sent, name=name
        )

    def __repr__(self) -> str:
        return f"Layer({self.track.participant_id}/{self.kind} {self.rid or '-'})"

    # --- what the receive path sees (media.inbound.PacketSink) ----------------

    @property
    def fast_sink(self) -> Any:
        """The C half the receive path hands VP8 and audio packets to (None: on_packet)."""
        sink = self._sink
        return sink if sink is not None and sink.mode != 0 else None

    def layer(self, rid: str) -> Layer:
        return self.track.layer(rid)

    @property
    def packets_in(self) -> int:
        """Packets received from the publisher on this layer (both paths)."""
        sink = self._sink
        return self._packets_in + (sink.packets_in if sink is not None else 0)

    @property
    def bytes_in(self) -> int:
        """Payload bytes received on this layer (both paths)."""
        sink = self._sink
        return self._bytes_in + (sink.bytes_in if sink is not None else 0)

    @property
    def rtx_bytes_in(self) -> int:
        """Of :attr:`bytes_in`, what came as retransmissions (RTX: answers to NACKs, and
        the publisher's bandwidth probes, which Chrome sends as RTX of recent packets)."""
        sink = self._sink
        return self._rtx_bytes_in + (sink.rtx_bytes_in if sink is not None else 0)

    @property
    def keyframes_in(self) -> int:
        """Keyframes received on this layer (both paths; what every subscriber's
        and every switch's requests cost the publisher, Chromium's VP8 simulcast
        encoding one on every layer for any layer asked)."""
        sink = self._sink
        return self._keyframes_in + (sink.keyframes_in if sink is not None else 0)

    @property
    def duplicates(self) -> int:
        """Packets received again while still cached (both paths): dropped, not
        forwarded. Chrome probes its uplink with RTX copies of its latest packets
        (up to ~1 Mbit/s of them on the lowest layer, measured): the subscribers
        had those packets, and forwarded again they only filled a weak downlink."""
        sink = self._sink
        return self._duplicates + (sink.duplicates if sink is not None else 0)

    def repaired(self, nbytes: int) -> None:
        """The next packet (Python path) came as a retransmission."""
        self._repair = nbytes

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of its latest VP8 keyframe; (0, 0) before one (or not VP8)."""
        sink = self._sink
        return (sink.width, sink.height) if sink is not None else self._size

    def tick(self, now: float) -> None:
        """Update :attr:`bitrate` from the bytes received since the last tick, but for
        retransmissions: a layer's rate is its encoder's, not what the publisher's
        probes added (Chrome probes with RTX on the lowest layer: ~250 kbit/s
        measured on a layer capped at 100); each packet counted with the
        :data:`PACKET_OVERHEAD` it costs forwarded."""
        count = self.bytes_in - self.rtx_bytes_in + PACKET_OVERHEAD * self.packets_in
        if self._rate_at is not None and now > self._rate_at:
            rate = (count - self._rate_bytes) * 8 / (now - self._rate_at)
            self.bitrate = rate if not self.bitrate else 0.5 * self.bitrate + 0.5 * rate
            self._rates.append(rate)
        self._rate_bytes, self._rate_at = count, now

    @property
    def cost(self) -> float:
        """What sending this layer to a subscriber costs (bit/s), for the allocator: the
        median of the last :data:`COST_TICKS` ticks' rates. A tick that carried the
        keyframes subscribers' switches asked for (a 320x180 layer's rate doubles)
        does not count, so a switch down does not make the layer it lands on look
        too dear to fit and pause a track; a lasting change shows after two ticks."""
        rates = sorted(self._rates)
        return rates[len(rates) // 2] if rates else self.bitrate

    def take_activity(self) -> bool:
        """Whether packets arrived since the last call."""
        count = self.packets_in
        active, self._sampled = count != self._sampled, count
        return active

    def on_packet(self, packet: RtpPacket) -> None:
        """One packet from the receive path (original sequence number, RTX unwrapped)."""
        if self.ended:
            return
        repair, self._repair = self._repair, 0
        cache = self.cache
        if cache is not None and cache.holds(packet.sequence_number):
            self._duplicates += 1  # counted in the metrics at the next sync
            return
        self._packets_in += 1
        self._bytes_in += packet.payload_size
        self._rtx_bytes_in += repair
        if self._vp8:
            entry = vp8_packet(packet, -1)
            if entry is None:  # a truncated descriptor: forwarded, never a keyframe
                entry = describe(packet, False)
            elif entry[6]:
                self._keyframes_in += 1
                size = vp8_keyframe_size(packet.data, packet.payload_start, packet.payload_end)
                if size is not None:
                    self._set_size(size)
        elif self._video:
            keyframe = self._h264 and h264_keyframe_start(
                packet.data, packet.payload_start, packet.payload_end
            )
            entry = describe(packet, keyframe)
            self._keyframes_in += keyframe
        else:
            # Audio: every packet stands alone; its level (RFC 6464) forwarded as sent.
            level = -1
            extensions = packet.extensions
            if extensions is not None:
                level_id = self.track.audio_level_id
                value = extensions.get(level_id) if level_id is not None else None
                if value:
                    level = value[0]
                    # The active speaker (media.speakers): three counters, read and
                    # zeroed every interval by take_audio_levels.
                    levels = self._levels
                    levels[0] += 1
                    magnitude = level & 0x7F  # -dBov without the voice activity bit
                    if magnitude <= SPEECH_LEVEL:
                        levels[1] += 1
                        levels[2] += 127 - magnitude
            entry = describe(packet, True, level=level)
        if cache is not None:
            cache.put(packet.sequence_number, entry, entry[6])
        if entry[6] and self.pending:
            self._switch_pending()
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

    def _set_size(self, size: tuple[int, int]) -> None:
        sink = self._sink
        if sink is not None:
            sink.width, sink.height = size
        else:
            self._size = size

    def request_keyframe(self) -> None:
        """This layer needs a keyframe (lost for good, a subscriber asked, a switch)."""
        if self._video and not self.ended:
            self._keyframes.request()

    async def _send_pli(self) -> bool:
        return self.track.send_pli(self.rid)

    def sync(self) -> None:
        """Count in the metrics what came and what the C half forwarded since the last
        call (receiver report ticks)."""
        duplicates, keyframes = self.duplicates, self.keyframes_in
        synced_duplicates, synced_keyframes = self._synced
        if duplicates != synced_duplicates:
            self._metrics.rtp_dropped("duplicate", duplicates - synced_duplicates)
        if keyframes != synced_keyframes:
            index = self.track.rids.index(self.rid) if self.rid in self.track.rids else 0
            self._metrics.keyframes_received(index, keyframes - synced_keyframes)
        self._synced = (duplicates, keyframes)
        sink = self._sink
        if sink is None:
            return
        frames, packets, nbytes = sink.take_counts()
        if packets:
            self._metrics.packets_forwarded(self.kind, frames, packets, nbytes)

    def take_audio_levels(self) -> tuple[int, int, int]:
        """(packets carrying a level, speech packets, their summed ``127 - level``)
        since the last call, for :class:`media.speakers.SpeakerMonitor`; zeroes them."""
        levels = self._levels
        taken = (levels[0], levels[1], levels[2])
        levels[0] = levels[1] = levels[2] = 0
        sink = self._sink
        if sink is not None:
            packets, active, loudness = sink.take_levels()
            taken = (taken[0] + packets, taken[1] + active, taken[2] + loudness)
        return taken

    # --- flushing -------------------------------------------------------------

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

    # --- subscribers ------------------------------------------------------------

    def refresh(self, downs: list[DownTrack]) -> None:
        """Forward to ``downs`` from now on (the subscribers on this layer)."""
        self._senders = [d.sender for d in downs if d.sender is not None]
        groups: dict[downstream.Implementation, list[Any]] = {}
        for sender in self._senders:
            groups.setdefault(sender.impl, []).append(sender.stream)
        self._fanout = [(impl.forward, streams) for impl, streams in groups.items()]
        self._flushes = [(impl.flush, streams) for impl, streams in groups.items()]
        self._update_sink(groups)

    def _update_sink(
        self, groups: dict[downstream.Implementation, list[Any]] | None = None
    ) -> None:
        sink = self._sink
        if sink is None:
            return
        if groups is not None:
            c_streams = [s for impl, ss in groups.items() if impl.accelerated for s in ss]
            sink.downs = c_streams
            self._python_only = len(c_streams) != len(self._senders)
        # The C half forwards only while every subscriber is on the C fan-out
        # and no switch waits for a keyframe (Python must see it).
        sink.fast = int(not self._python_only and not self.pending and not self.ended)

    def switch_here(self, down: DownTrack) -> None:
        """Move ``down`` to this layer at its next keyframe (asked for now)."""
        if down not in self.pending:
            self.pending.append(down)
            self._update_sink()
        self.request_keyframe()

    def cancel_switch(self, down: DownTrack) -> None:
        if down in self.pending:
            self.pending.remove(down)
            self._update_sink()

    def _switch_pending(self) -> None:
        pending, self.pending = self.pending, []
        for down in pending:
            self.track.move(down, self)
        self._update_sink()

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

    def cached(self, sequence_number: int) -> PacketTuple | None:
        """A recent packet by its original sequence number (for retransmissions)."""
        return self.cache.get(sequence_number) if self.cache is not None else None

    # --- lifecycle ----------------------------------------------------------------

    async def close(self) -> None:
        """Stop forwarding and forget the cache (idempotent)."""
        self.ended = True
        self.pending = []
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
        self._senders = []
        self._fanout = []
        self._flushes = []
        if self.cache is not None:
            self.cache.clear()
        await self._keyframes.close()
