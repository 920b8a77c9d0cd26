"""The SFU of one node: rooms by call id; signaling's :class:`~media.seam.SfuEndpoint`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .aiortc_compat import check_aiortc, install_decoder_bypass, restrict_host_addresses
from .config import MediaConfig
from .errors import MediaError, SessionLost
from .iceports import restrict_ice_ports
from .metrics import MediaMetrics, NoopMediaMetrics
from .participant import Participant
from .relay import Relay, RelayConfig
from .room import Room
from .seam import Message, ParticipantLeft, RoomEnded, RoomEvent, SignalingPort, SpanPort
from .span import RoomSpan

logger = logging.getLogger(__name__)


class _BoundSignaling:
    """A room's view of the node-wide signaling port: fixes the call id."""

    def __init__(self, signaling: SignalingPort, call_id: str) -> None:
        self._signaling = signaling
        self._call_id = call_id

    async def send(self, participant_id: str, message: Message) -> None:
        await self._signaling.send_to(self._call_id, participant_id, message)

    async def send_error(self, participant_id: str, error: MediaError) -> None:
        await self._signaling.send_error(self._call_id, participant_id, error)


class Sfu:
    """Owns the rooms of this node: created on first media join, closed when empty.

    Checks the aiortc private API at construction (``RuntimeError`` if
    missing) and, when ``config.ice_hosts`` is set, restricts ICE host
    candidates process-wide.
    """

    def __init__(
        self,
        config: MediaConfig,
        signaling: SignalingPort,
        metrics: MediaMetrics | None = None,
        *,
        relay: RelayConfig | None = None,
        span: SpanPort | None = None,
        node_id: str = "",
    ) -> None:
        check_aiortc()
        install_decoder_bypass()
        if config.ice_hosts:
            restrict_host_addresses(config.ice_hosts)
        if config.ice_ports is not None:
            restrict_ice_ports(config.ice_ports)
        self._config = config
        self._signaling = signaling
        self._metrics: MediaMetrics = metrics or NoopMediaMetrics()
        self._rooms: dict[str, Room] = {}
        self._closed = False
        #: Rooms across nodes (media/span.py): the relay socket, once started, and
        #: how the rooms tell the call's other nodes what they have.
        self._relay: Relay | None = None
        if relay is not None and span is not None:
            self._relay = Relay(relay, self._metrics)
        self._span_port = span
        self._node_id = node_id

    async def start(self) -> None:
        """Open the relay socket, if this node relays (rooms across nodes)."""
        if self._relay is not None:
            await self._relay.start()

    @property
    def relay(self) -> Relay | None:
        return self._relay

    @property
    def rooms(self) -> dict[str, Room]:
        """A copy of the open rooms, by call id."""
        return dict(self._rooms)

    def room(self, call_id: str) -> Room | None:
        return self._rooms.get(call_id)

    def has_room(self, call_id: str) -> bool:
        room = self._rooms.get(call_id)
        return room is not None and not room.closed

    def members(self) -> dict[str, frozenset[str]]:
        """The participants of each open room, by call id."""
        return {
            call_id: frozenset(room.participants)
            for call_id, room in self._rooms.items()
            if not room.closed
        }

    def _get_or_create(self, call_id: str) -> Room:
        if self._closed:
            raise RuntimeError("the SFU is closed")
        room = self._rooms.get(call_id)
        if room is None or room.closed:
            room = Room(
                call_id,
                self._config,
                _BoundSignaling(self._signaling, call_id),
                self._metrics,
                on_closed=self._forget,
                span=self._span_of(call_id),
            )
            self._rooms[call_id] = room
        return room

    def _span_of(self, call_id: str) -> Callable[[Room], RoomSpan] | None:
        relay, port = self._relay, self._span_port
        if relay is None or port is None or not relay.address:
            return None

        def make(room: Room) -> RoomSpan:
            return RoomSpan(
                call_id,
                self._node_id,
                relay,
                port,
                self._metrics,
                local_tracks=room.local_tracks,
                local_count=room.local_count,
                on_remote_changed=room.refresh,
                pli_min_interval=self._config.pli_min_interval,
            )

        return make

    async def on_span(self, call_id: str, state: Message) -> None:
        """Another node's span state for a room of this node (ignored without one)."""
        room = self._rooms.get(call_id)
        if room is not None and not room.closed and room.span is not None:
            room.span.on_state(state)

    def _forget(self, room: Room) -> None:
        if self._rooms.get(room.id) is room:
            del self._rooms[room.id]

    async def join(self, call_id: str, participant_id: str) -> Participant:
        """Admit a participant to the call's room, creating the room if needed."""
        return await self._get_or_create(call_id).add_participant(participant_id)

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        """Route a client → server SFU message (``target_id == "sfu"``).

        A publish offer from someone not yet in the room admits them.
        Raises :class:`media.errors.MediaError` subclasses for bad input.
        """
        room = self._rooms.get(call_id)
        if message.get("type") == "resume" and (room is None or room.closed):
            raise SessionLost(f"no room for call {call_id} here: start over")
        if room is None or room.closed:
            room = self._get_or_create(call_id)
        await room.handle_signal(participant_id, message)

    async def on_event(self, event: RoomEvent) -> None:
        """A lifecycle event from signaling (:class:`~media.seam.SfuEndpoint`)."""
        if isinstance(event, ParticipantLeft):
            await self.remove_participant(event.call_id, event.participant_id)
        elif isinstance(event, RoomEnded):
            await self.close_room(event.call_id)

    async def remove_participant(self, call_id: str, participant_id: str) -> None:
        room = self._rooms.get(call_id)
        if room is not None:
            await room.remove_participant(participant_id)

    async def close_room(self, call_id: str) -> None:
        room = self._rooms.pop(call_id, None)
        if room is not None:
            await room.close()

    async def close(self) -> None:
        """Close every room (node shutdown); idempotent."""
        self._closed = True
        rooms = list(self._rooms.values())
        self._rooms.clear()
        await asyncio.gather(*(room.close() for room in rooms))
        if self._relay is not None:
            await self._relay.close()
