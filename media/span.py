"""A room's part in a room that spans nodes: what it tells the others, what it takes.

When a call's participants have their media on more than one node
(signaling/span.py decides where), each of those nodes holds a
:class:`~media.room.Room` for the call with its own participants, and the
room's :class:`RoomSpan` keeps it in step with the others through *states*
sent over signaling (:class:`~media.seam.SpanPort`, Redis)::

    {"v": 1, "node": "node-a", "relay": "10.0.0.5:7882", "subscribers": 2,
     "tracks": [{"stream": 17, "participant_id": "...", "kind": "video",
                 "source": "camera", "codec": {"mimeType": "video/VP8",
                 "clockRate": 90000, "channels": null, "payloadType": 96,
                 "parameters": {}}}]}

- ``subscribers``: its local participants (each receives every other's
  tracks); ``tracks``: the tracks published on it, with the relay's stream
  numbers (:meth:`media.relay.Relay.stream_of`).
- For each of its local tracks and each other node with subscribers it keeps
  one :class:`~media.relay.RelayDown`: the track crosses to that node once.
- For each track of another node it keeps a remote up track (an
  :class:`~media.forwarder.UpTrack` fed by :class:`~media.relay.RemoteSource`)
  that its participants receive like a local publisher's, through the normal
  forwarding path (keyframe gate, header rewrite, NACK cache, adaptation);
  their keyframe requests go back across as PLI frames.

A state is sent when the room opens, whenever what it publishes or its
participant count changes, at once to a node heard from for the first time,
and every :data:`STATE_EVERY_S` while another node is known; a node not heard
from for :data:`STALE_AFTER_S` is dropped with its tracks (it died). When the
room closes it sends a last state with no subscribers and no tracks, so the
others stop relaying to it and drop its tracks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpCodecParameters

from .forwarder import UpTrack
from .metrics import MediaMetrics
from .relay import Addr, Relay, RelayDown, RemoteSource, parse_addr
from .seam import TRACK_SOURCES, Message, SpanPort

logger = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_EVERY_S = 1.0
STALE_AFTER_S = 5.0
#: Codecs a remote track may carry (what the SFU forwards).
RELAYABLE = frozenset({"audio/opus", "video/vp8", "video/h264"})
_MAX_TRACKS = 64


@dataclass(frozen=True)
class TrackSpec:
    """One track of another node, as its state described it."""

    stream: int
    participant_id: str
    kind: str
    source: str
    codec: tuple[str, int, int | None, int | None, tuple[tuple[str, str], ...]]


@dataclass
class NodeState:
    """What another node of the room said last."""

    node: str
    addr: Addr
    subscribers: int
    tracks: dict[int, TrackSpec]
    seen: float = field(default_factory=time.monotonic)


def parse_state(state: object) -> NodeState | None:
    """Another node's state, or None if it is not a valid one (it comes off the bus)."""
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        return None
    node, subscribers, tracks = state.get("node"), state.get("subscribers"), state.get("tracks")
    addr = parse_addr(state.get("relay"))
    if not isinstance(node, str) or not node or addr is None:
        return None
    if not isinstance(subscribers, int) or subscribers < 0 or not isinstance(tracks, list):
        return None
    specs: dict[int, TrackSpec] = {}
    for entry in tracks[:_MAX_TRACKS]:
        spec = _track_spec(entry)
        if spec is not None:
            specs[spec.stream] = spec
    return NodeState(node, addr, subscribers, specs)


def _track_spec(entry: object) -> TrackSpec | None:
    if not isinstance(entry, dict):
        return None
    stream, pid, kind = entry.get("stream"), entry.get("participant_id"), entry.get("kind")
    source, codec = entry.get("source"), entry.get("codec")
    if not isinstance(stream, int) or not 0 < stream <= 0xFFFFFFFF:
        return None
    if not isinstance(pid, str) or not pid or kind not in ("audio", "video"):
        return None
    if source not in TRACK_SOURCES or not isinstance(codec, dict):
        return None
    mime, rate = codec.get("mimeType"), codec.get("clockRate")
    channels, pt, params = codec.get("channels"), codec.get("payloadType"), codec.get("parameters")
    if (
        not isinstance(mime, str)
        or mime.lower() not in RELAYABLE
        or not mime.lower().startswith(str(kind))
    ):
        return None
    if not isinstance(rate, int) or rate <= 0:
        return None
    if channels is not None and not isinstance(channels, int):
        return None
    if pt is not None and (not isinstance(pt, int) or not 0 <= pt < 128):
        return None
    items = params.items() if isinstance(params, dict) else ()
    pairs = tuple(sorted((str(k), str(v)) for k, v in items))
    return TrackSpec(stream, pid, str(kind), str(source), (mime, rate, channels, pt, pairs))


def _codec_json(codec: Any) -> Message:
    return {
        "mimeType": codec.mimeType,
        "clockRate": codec.clockRate,
        "channels": codec.channels,
        "payloadType": codec.payloadType,
        "parameters": {str(k): str(v) for k, v in (codec.parameters or {}).items()},
    }


class RoomSpan:
    """The span of one room on this node (see the module docstring)."""

    def __init__(
        self,
        call_id: str,
        node_id: str,
        relay: Relay,
        port: SpanPort,
        metrics: MediaMetrics,
        *,
        local_tracks: Callable[[], list[UpTrack]],
        local_count: Callable[[], int],
        on_remote_changed: Callable[[], None],
        pli_min_interval: float,
    ) -> None:
        self._call_id = call_id
        self._node_id = node_id
        self._relay = relay
        self._port = port
        self._metrics = metrics
        self._local_tracks = local_tracks
        self._local_count = local_count
        self._on_remote_changed = on_remote_changed
        self._pli_min_interval = pli_min_interval
        self._nodes: dict[str, NodeState] = {}
        self._taps: dict[tuple[UpTrack, Addr], RelayDown] = {}
        self._remote: dict[tuple[str, int], UpTrack] = {}
        self._sources: dict[UpTrack, RemoteSource] = {}
        self._retired: list[UpTrack] = []
        self._exported: set[UpTrack] = set()
        self._dirty = asyncio.Event()
        self._dirty.set()  # the first state: this node has the room now
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RoomSpan({self._call_id})"

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"span {self._call_id}"
            )

    @property
    def nodes(self) -> list[str]:
        """The other nodes of the room heard from."""
        return sorted(self._nodes)

    def remote_tracks(self) -> list[UpTrack]:
        """The live tracks published on other nodes (received here like local ones)."""
        return [up for up in self._remote.values() if not up.ended]

    @property
    def taps(self) -> int:
        """(Local track, other node) pairs relayed now."""
        return len(self._taps)

    # --- changes --------------------------------------------------------------------

    def changed(self) -> None:
        """Local participants or their tracks changed: relay accordingly, tell the others."""
        if self._closed:
            return
        self._reconcile_taps()
        self._dirty.set()

    def on_state(self, state: object) -> None:
        """Another node's state for this room."""
        if self._closed:
            return
        parsed = parse_state(state)
        if parsed is None:
            logger.warning("%r: ignored an invalid span state", self)
            return
        if parsed.node == self._node_id:
            return
        known = self._nodes.get(parsed.node)
        if known is None:
            logger.info("%r: node %s joins the span (relay %s)", self, parsed.node, parsed.addr)
            self._dirty.set()  # tell it about us at once
        if parsed.subscribers == 0 and not parsed.tracks:
            self._nodes.pop(parsed.node, None)  # it left the room
        else:
            self._nodes[parsed.node] = parsed
        self._reconcile()

    def _reconcile(self) -> None:
        self._reconcile_taps()
        self._reconcile_remote()
        self._metrics.relay_links(self._relay.links)

    def _reconcile_taps(self) -> None:
        local = [up for up in self._local_tracks() if not up.ended and not up.remote]
        peers = {n.addr for n in self._nodes.values() if n.subscribers > 0}
        wanted = {(up, addr) for up in local for addr in peers}
        for key in [k for k in self._taps if k not in wanted]:
            self._taps.pop(key).close()
        for up, addr in wanted:
            if (up, addr) not in self._taps:
                self._taps[(up, addr)] = RelayDown(self._relay, up, addr, self._metrics)
        live = set(local)
        for up in self._exported - live:
            self._relay.release_stream(up)
        self._exported = live

    def _reconcile_remote(self) -> None:
        wanted = {
            (node.node, stream): (node, spec)
            for node in self._nodes.values()
            for stream, spec in node.tracks.items()
        }
        changed = False
        for key in [k for k in self._remote if k not in wanted]:
            self._remote[key].end()  # _remote_ended forgets it
            changed = True
        for key, (node, spec) in wanted.items():
            if key in self._remote:
                continue
            self._remote[key] = self._remote_track(node, spec)
            changed = True
        if changed:
            self._on_remote_changed()

    def _remote_track(self, node: NodeState, spec: TrackSpec) -> UpTrack:
        source = RemoteSource(self._relay, node.addr, spec.stream, spec.kind)
        mime, rate, channels, pt, params = spec.codec
        codec = RTCRtpCodecParameters(
            mimeType=mime,
            clockRate=rate,
            channels=channels,
            payloadType=pt,
            parameters=dict(params),
        )
        up = UpTrack(
            spec.participant_id,
            None,
            source,
            pli_min_interval=self._pli_min_interval,
            metrics=self._metrics,
            on_ended=self._remote_ended,
            source=spec.source,
            remote=(spec.kind, f"relay-{node.node}-{spec.stream}", codec),
        )
        self._sources[up] = source
        logger.info(
            "%r: %s %s of %s arrives from node %s",
            self,
            spec.source,
            spec.kind,
            spec.participant_id,
            node.node,
        )
        return up

    def _remote_ended(self, up: UpTrack) -> None:
        for key, other in list(self._remote.items()):
            if other is up:
                del self._remote[key]
        source = self._sources.pop(up, None)
        if source is not None:
            source.close()
        for down in up.downs():
            down.detach(up)
        self._retired.append(up)
        if not self._closed:
            self._on_remote_changed()

    # --- the loop ---------------------------------------------------------------------

    def state(self, closing: bool = False) -> Message:
        """What this node has of the room (the state the others get)."""
        tracks = (
            []
            if closing
            else [
                {
                    "stream": self._relay.stream_of(up),
                    "participant_id": up.participant_id,
                    "kind": up.kind,
                    "source": up.source,
                    "codec": _codec_json(up.codec),
                }
                for up in self._local_tracks()
                if not up.ended and not up.remote
            ]
        )
        return {
            "v": STATE_VERSION,
            "node": self._node_id,
            "relay": self._relay.address,
            "subscribers": 0 if closing else self._local_count(),
            "tracks": tracks,
        }

    async def _run(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), STATE_EVERY_S)
                announce = self._dirty.is_set() or bool(self._nodes)
                self._dirty.clear()
                self._expire()
                for up in self.remote_tracks():
                    up.sync()
                self._metrics.relay_links(self._relay.links)
                if announce:
                    await self._announce(self.state())
                await self._close_retired()
        except asyncio.CancelledError:
            pass

    def _expire(self) -> None:
        now = time.monotonic()
        gone = [n for n, s in self._nodes.items() if now - s.seen > STALE_AFTER_S]
        for node in gone:
            logger.warning("%r: node %s went silent: its tracks are dropped", self, node)
            del self._nodes[node]
        if gone:
            self._reconcile()

    async def _announce(self, state: Message) -> None:
        try:
            await self._port.announce(self._call_id, state)
        except Exception:
            logger.exception("%r: could not send its span state", self)

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for up in retired:
            await up.close()

    async def close(self) -> None:
        """Stop relaying both ways and tell the others (idempotent)."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for tap in self._taps.values():
            tap.close()
        self._taps.clear()
        for up in list(self._remote.values()):
            up.end()
        self._remote.clear()
        for up in self._exported:
            self._relay.release_stream(up)
        self._exported.clear()
        self._nodes.clear()
        self._metrics.relay_links(self._relay.links)
        await self._close_retired()
        await self._announce(self.state(closing=True))
