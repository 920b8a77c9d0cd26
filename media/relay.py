"""The node's relay socket: published tracks out to other nodes, theirs in.

One UDP socket per node (per SFU process) carries every relayed track of
every spanning room, to and from every other node, in the frames of
:mod:`media.relaywire`. Out: a :class:`RelayTap` is the sender of a
:class:`RelayDown`, one per (local published track, other node with
subscribers), attached to the track like a subscriber's down track, so the
track's layer hands it each packet once and it sends it once to that node,
however many subscribers the node has. In: a datagram's (sender address,
stream) finds its :class:`RemoteSource`, which turns the body into an RTP
packet for the remote track's up track (:mod:`media.span`); a keyframe
request (PLI) from the other node finds the tap and asks the publisher.

Every datagram in or out is counted (``video_call_sfu_relay_*``,
:mod:`media.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from . import relaywire
from .downstream import PacketTuple
from .forwarder import DownTrack
from .metrics import MediaMetrics
from .rtpheader import MalformedPacket, parse_rtp

if TYPE_CHECKING:
    from .fastsend import FastRtp
    from .forwarder import UpTrack

logger = logging.getLogger(__name__)

Addr = tuple[str, int]

#: The one-byte header extension id of the audio level in relayed RTP packets.
LEVEL_ID = 1
_RTP = struct.Struct("!BBHII")
_LEVEL_EXT = struct.Struct("!HHBBBB")
#: A jump of sequence numbers up to this is asked for again (NACK); a longer one
#: (a pause, a restart) waits for the next keyframe.
MAX_GAP = 32


@dataclass(frozen=True)
class RelayConfig:
    """Where the relay socket binds, and the cluster secret that authenticates it."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (tests); production: a fixed one to open
    secret: str = ""

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the relay needs a cluster secret")
        if not 0 <= self.port <= 65535:
            raise ValueError("relay port out of range")


def parse_addr(text: object) -> Addr | None:
    """``host:port`` as the span state carries it; None if it is not one."""
    if not isinstance(text, str) or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def rtp_body(entry: PacketTuple, payload_type: int, ssrc: int) -> bytes:
    """The RTP packet a relayed packet crosses as: the original sequence number,
    timestamp and marker, the audio level (if any) as extension :data:`LEVEL_ID`."""
    data, start, end, seq, ts, marker, _key, _pid, _pid_at, _tl0, _tl0_at, level = entry
    payload = bytes(data[start:end])
    first = 0x80
    ext = b""
    if level >= 0:
        first |= 0x10
        ext = _LEVEL_EXT.pack(0xBEDE, 1, (LEVEL_ID << 4) | 0, level & 0xFF, 0, 0)
    head = _RTP.pack(first, (0x80 if marker else 0) | (payload_type & 0x7F), seq, ts, ssrc)
    return head + ext + payload


class _TapFanout:
    """The fan-out a layer runs for its relay taps (Python: one send per packet)."""

    accelerated = False

    @staticmethod
    def forward(streams: list[Any], entry: PacketTuple, complete: bool) -> int:
        return sum(1 for tap in streams if tap.forward(entry))

    @staticmethod
    def flush(streams: list[Any]) -> None:
        pass


TAP_FANOUT = _TapFanout()


class RelayTap:
    """Sends one local track's packets to one other node (a relay down's sender)."""

    impl = TAP_FANOUT
    ready = True

    def __init__(self, relay: Relay, peer: Addr, stream: int, payload_type: int, kind: str) -> None:
        self._relay = relay
        self.peer = peer
        self.stream_id = stream
        self._pt = payload_type
        self._kind = kind
        self.packets_sent = 0
        self.resent = 0  # packets the other node lost, sent again
        self._switched = True

    @property
    def stream(self) -> RelayTap:
        return self

    def forward(self, entry: PacketTuple) -> bool:
        body = rtp_body(entry, self._pt, self.stream_id)
        kind = relaywire.RTP_SWITCH if self._switched else relaywire.RTP
        if self._relay.send(self.peer, kind, self.stream_id, body, self._kind):
            self._switched = False
            self.packets_sent += 1
            return True
        return False

    def resend(self, entry: PacketTuple) -> bool:
        """A packet the other node lost, again (not the start of a new source)."""
        body = rtp_body(entry, self._pt, self.stream_id)
        if self._relay.send(self.peer, relaywire.RTP, self.stream_id, body, self._kind):
            self.resent += 1
            return True
        return False

    def flush(self) -> None:
        pass

    def switch(self) -> None:
        """The track moves this tap to another layer (its own numbers): the next packet
        tells the other node, whose subscribers start over from it."""
        self._switched = True


class RelayDown(DownTrack):
    """A track's relay to one node, attached to it like a subscriber's down track."""

    def __init__(self, relay: Relay, up: UpTrack, peer: Addr, metrics: MediaMetrics) -> None:
        super().__init__(up.kind, metrics)
        stream = relay.stream_of(up)
        pt = int(up.codec.payloadType or 96)
        self.tap = RelayTap(relay, peer, stream, pt, up.kind)
        # Duck-typed: a layer and an up track use only what RelayTap has.
        self.sender = cast("FastRtp", self.tap)
        relay.taps[(peer, stream)] = self
        self._relay = relay
        self.attach(up)

    def resend(self, seqs: list[int]) -> int:
        """Send the other node the packets it lost, those still in the cache."""
        source = self.source
        sent = 0
        for seq in seqs if source is not None else ():
            entry = source.cached(seq, self) if source is not None else None
            if entry is not None and self.tap.resend(entry):
                sent += 1
        return sent

    def close(self) -> None:
        self._relay.taps.pop((self.tap.peer, self.tap.stream_id), None)
        self.stop()


class RemoteSource:
    """What a remote track's up track reads from: bind/PLI, as a publisher's inbound."""

    def __init__(self, relay: Relay, peer: Addr, stream: int, kind: str) -> None:
        from .rtpheader import ExtensionIds

        self._relay = relay
        self.peer = peer
        self.stream = stream
        self.kind = kind
        self.ids = ExtensionIds(audio_level=LEVEL_ID)
        self._sink: Any = None
        self._top: int | None = None  # the newest sequence number (video)
        relay.sources[(peer, stream)] = self

    # --- what UpTrack reads of a PublisherInbound ---------------------------------

    def bind(self, mid: str, sink: Any) -> None:
        self._sink = sink

    def unbind(self, mid: str, sink: Any) -> None:
        if self._sink is sink:
            self._sink = None

    def rids_of(self, mid: str) -> tuple[str, ...]:
        return ()

    def send_pli(self, mid: str, rid: str | None = None) -> bool:
        return self._relay.send(self.peer, relaywire.PLI, self.stream, b"", "video")

    # --- from the relay socket ----------------------------------------------------

    def on_body(self, body: bytes, switched: bool = False) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            packet = parse_rtp(body)
        except MalformedPacket:
            self._relay.dropped("malformed")
            return
        if switched:
            sink.restart()
            self._top = None
        if self.kind == "video":
            self._check_gap(packet.sequence_number)
        sink.on_packet(packet)

    def _check_gap(self, seq: int) -> None:
        """Ask the publisher's node again for what a jump in sequence numbers skipped
        (once: a packet lost twice is left to the subscribers' keyframe requests)."""
        top = self._top
        if top is None:
            self._top = seq
            return
        delta = (seq - top) & 0xFFFF
        if delta >= 0x8000 or delta == 0:
            return  # older (a resend, reordered) or a repeat
        self._top = seq
        if 1 < delta <= MAX_GAP:
            missing = [(top + i) & 0xFFFF for i in range(1, delta)]
            if self._relay.send(
                self.peer, relaywire.NACK, self.stream, relaywire.nack_body(missing), "video"
            ):
                self._relay.nacked(len(missing))

    def close(self) -> None:
        self._sink = None
        if self._relay.sources.get((self.peer, self.stream)) is self:
            del self._relay.sources[(self.peer, self.stream)]


class Relay(asyncio.DatagramProtocol):
    """The node's relay socket and its tables (streams out, sources in)."""

    def __init__(self, config: RelayConfig, metrics: MediaMetrics) -> None:
        self._config = config
        self._key = relaywire.relay_key(config.secret)
        self._metrics = metrics
        self._counter = relaywire.Counter()
        self._transport: asyncio.DatagramTransport | None = None
        self._next_stream = 1
        self._streams: dict[UpTrack, int] = {}
        self.taps: dict[tuple[Addr, int], RelayDown] = {}
        self.sources: dict[tuple[Addr, int], RemoteSource] = {}
        # One per peer node ever relayed with (kept: a window dropped and made anew
        # would take a replay of what that peer sent before).
        self._windows: dict[Addr, relaywire.ReplayWindow] = {}
        self.address = ""
        self._lost: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self._config.host, self._config.port)
        )
        self._transport = transport
        host, port = self._transport.get_extra_info("sockname")[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        logger.info("relay listening on %s", self.address)

    # --- out -------------------------------------------------------------------

    def stream_of(self, up: UpTrack) -> int:
        """The relay's number for a local track (the same towards every node)."""
        stream = self._streams.get(up)
        if stream is None:
            stream = self._streams[up] = self._next_stream
            self._next_stream = (self._next_stream % 0xFFFFFFFF) + 1
        return stream

    def release_stream(self, up: UpTrack) -> None:
        self._streams.pop(up, None)

    def send(self, peer: Addr, kind: int, stream: int, body: bytes, media: str) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        datagram = relaywire.encode(self._key, kind, stream, self._counter.take(), body)
        transport.sendto(datagram, peer)
        if kind in (relaywire.RTP, relaywire.RTP_SWITCH):
            self._metrics.relayed("out", media, len(datagram))
        elif kind == relaywire.PLI:
            self._metrics.relay_pli("out")
        return True

    def nacked(self, packets: int) -> None:
        self._metrics.relay_nack("out", packets)

    # --- in --------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        peer: Addr = (str(addr[0]), int(addr[1]))
        try:
            frame = relaywire.parse(self._key, data)
        except relaywire.BadFrame as exc:
            self.dropped(exc.reason)
            return
        window = self._windows.get(peer)
        if window is None:
            if not self._known(peer):
                self.dropped("unknown_peer")
                return
            window = self._windows[peer] = relaywire.ReplayWindow()
        if not window.accept(frame.counter):
            self.dropped("replay")
            return
        if frame.type in (relaywire.RTP, relaywire.RTP_SWITCH):
            source = self.sources.get((peer, frame.stream))
            if source is None:
                self.dropped("unknown_stream")
                return
            self._metrics.relayed("in", source.kind, len(data))
            source.on_body(frame.body, frame.type == relaywire.RTP_SWITCH)
        else:
            tap = self.taps.get((peer, frame.stream))
            if tap is None:
                self.dropped("unknown_stream")
                return
            if frame.type == relaywire.NACK:
                seqs = relaywire.nack_seqs(frame.body)
                self._metrics.relay_nack("in", len(seqs))
                tap.resend(seqs)
            else:
                self._metrics.relay_pli("in")
                tap.request_keyframe()

    def _known(self, peer: Addr) -> bool:
        return any(p == peer for p, _ in self.sources) or any(p == peer for p, _ in self.taps)

    def dropped(self, reason: str) -> None:
        self._metrics.relay_dropped(reason)

    def error_received(self, exc: Exception) -> None:
        logger.debug("relay socket: %s", exc)

    @property
    def links(self) -> int:
        """Other nodes this node relays with now (either way)."""
        return len({p for p, _ in self.sources} | {p for p, _ in self.taps})

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def close(self) -> None:
        """Close the socket, and wait until it is (idempotent); the rooms closed their
        taps and sources first."""
        transport, self._transport = self._transport, None
        if transport is not None:
            self._lost = asyncio.get_running_loop().create_future()
            transport.close()
            await self._lost
        self.taps.clear()
        self.sources.clear()
        self._streams.clear()
        self._windows.clear()
