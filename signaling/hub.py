"""The signaling hub: client messages and the bus listener.

The hub puts the parts together; each lives in its own module:

- :mod:`signaling.sockets`: upgrade slots, registration and the end of a socket;
- :mod:`signaling.registry`: this node's sockets, who is online where,
  routing over the bus and the call channels subscribed;
- :mod:`signaling.presence`: presence, the roster and its coalescing;
- :mod:`signaling.grace` and :mod:`signaling.adoption`: the disconnect grace
  period, the seats of dead nodes and of participants who never connected;
- :mod:`signaling.sfu_relay`: messages to and from the SFU (``media.seam``);
- :mod:`signaling.lifecycle_relay`: lifecycle events → messages and effects;
- :mod:`signaling.drain`: no new rooms, then ``reconnect`` (SIGTERM, admin API).

Envelopes on ``call:{call_id}`` (``kind``): ``deliver`` ``{message, to}`` (a
stamped message for one participant's socket), ``lifecycle`` (see
:mod:`signaling.lifecycle_relay`), ``presence`` and ``sync`` (see
:mod:`signaling.presence`), ``sfu`` (see :mod:`signaling.sfu_relay`); on a node's
own channel also ``span`` ``{state}`` (rooms across nodes, :mod:`signaling.span`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from media.seam import MediaError, SfuEndpoint, SpanEndpoint
from server.auth import Identity
from server.calls import CallService
from server.config import SignalingSettings
from server.events import CallEvent
from server.models import Call
from signaling.adoption import SeatScan
from signaling.bus import Envelope, MessageBus
from signaling.connection import Connection
from signaling.drain import NodeDrain
from signaling.errors import CloseCode, ErrorCode, SignalError
from signaling.grace import DisconnectGrace
from signaling.lifecycle_relay import LifecycleRelay
from signaling.metrics import SignalingMetrics
from signaling.owner_watch import OwnerProbe, OwnerWatch
from signaling.placement import RoomPlacement
from signaling.presence import ROSTER_WINDOW_S, Presence
from signaling.protocol import SFU_ID, Message, encode, stamp
from signaling.registry import SocketRegistry
from signaling.seats import SeatRegistry
from signaling.sfu_relay import SfuRelay
from signaling.sockets import SocketLifecycle

logger = logging.getLogger(__name__)


#: Closes that do not start the grace period: left, node going away or draining, replaced.
_NO_GRACE = (CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART, CloseCode.REPLACED)


@dataclass(frozen=True)
class HubOptions:
    """Knobs beyond :class:`SignalingSettings` (tests shorten them)."""

    disconnect_grace_s: float = 10.0
    write_timeout_s: float = 10.0
    error_burst: int = 20
    errors_per_second: float = 1.0
    shutdown_wait_s: float = 5.0
    roster_window_s: float = ROSTER_WINDOW_S


class SignalingHub:
    def __init__(
        self,
        calls: CallService,
        bus: MessageBus,
        placement: RoomPlacement,
        settings: SignalingSettings,
        metrics: SignalingMetrics,
        *,
        node_id: str,
        options: HubOptions | None = None,
        seats: SeatRegistry | None = None,
        owner_probe: OwnerProbe | None = None,
    ) -> None:
        self.calls = calls
        self.seats = seats
        self.settings = settings
        self.metrics = metrics
        self.node_id = node_id
        self.options = options or HubOptions()
        self._bus = bus
        self._placement = placement
        self.registry = SocketRegistry(bus, placement, node_id)
        self.presence = Presence(
            self.registry,
            self._get_call,
            metrics,
            window_s=self.options.roster_window_s,
            on_moved=self._moved_away,
        )
        self.grace = DisconnectGrace(
            self.registry,
            calls,
            settings,
            metrics,
            grace_s=self.options.disconnect_grace_s,
            seats=seats,
        )
        self.scan = SeatScan(self.registry, self.grace, calls, settings, seats)
        self.sfu = SfuRelay(self.registry, metrics, self._get_call)
        self.lifecycle = LifecycleRelay(self.registry, self.presence, self.grace, self.sfu)
        self.sockets = SocketLifecycle(
            self.registry,
            self.presence,
            self.grace,
            settings,
            metrics,
            seats,
            shutdown_wait_s=self.options.shutdown_wait_s,
        )
        self.drain = NodeDrain(self.registry, self.sfu, metrics, self.sockets.stop_accepting)
        self.owner_watch = (
            OwnerWatch(self.registry, owner_probe, self.sfu.owner_lost)
            if owner_probe is not None
            else None
        )
        if seats is not None:
            seats.local_seats = self.registry.local_seats
            seats.on_rebuilt = self.metrics.seats_rebuilt.inc

    async def _get_call(self, call_id: str) -> Call | None:
        return await self.calls.store.get_call(call_id)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._bus.start(self)
        self.calls.events.add(self)
        if self.seats is not None:
            self.seats.start()
        self.scan.start()
        if self.owner_watch is not None:
            self.owner_watch.start()

    def attach_sfu(self, endpoint: SfuEndpoint | None, span: SpanEndpoint | None = None) -> None:
        """Plug in (or remove) the SFU; without one, SFU messages get ``sfu_unavailable``.
        ``span``: the SFU's side of rooms across nodes, when it relays."""
        self.sfu.attach(endpoint, span)

    async def shutdown(self) -> None:
        """Close every socket with 1001 and stop accepting (:class:`SocketLifecycle`)."""
        await self.sockets.shutdown()

    async def close(self) -> None:
        """Idempotent, in order: stop hearing events, cancel owned tasks, release
        rooms, then close seats, placement and bus."""
        self.calls.events.remove(self)
        await self.drain.close()
        if self.owner_watch is not None:
            await self.owner_watch.close()
        await self.sockets.close()
        await self.scan.close()
        await self.grace.close()
        await self.presence.batcher.close()
        for call_id in sorted(self._placement.owned):
            await self.sfu.close_room(call_id)
        if self.seats is not None:
            await self.seats.close()
        await self._placement.close()
        await self._bus.close()
        self.registry.forget()

    # -- state ------------------------------------------------------------------------------

    @property
    def bus_healthy(self) -> bool:
        return self._bus.healthy

    @property
    def connection_count(self) -> int:
        return self.sockets.connection_count

    def pending_leaves(self, call_id: str) -> int:
        return self.grace.pending_leaves(call_id)

    # -- client messages ------------------------------------------------------------------

    async def handle(self, conn: Connection, message: Message) -> None:
        """Route one validated client message. Raises what :func:`signaling.errors.edge_error`
        maps (:class:`SignalError`, :class:`HuddleError`, :class:`BusUnavailable`)."""
        kind = message["type"]
        call_id, pid = conn.call_id, conn.participant_id
        if kind == "ping":
            pong = self.registry.server_message(call_id, {"type": "pong"})
            conn.send_text(encode(pong))
        elif kind == "pong":
            pass
        elif kind == "join":
            await self.presence.welcome(conn)
        elif kind == "leave":
            await self.calls.leave(Identity(pid, conn.name), call_id)
            conn.close(CloseCode.NORMAL, "left the call")
        elif kind == "mute":
            await self.calls.set_media(
                pid, call_id, muted=message.get("muted"), video=message.get("video")
            )
        else:
            stamp(message, sender_id=pid, call_id=call_id)
            target = message["target_id"]
            if target == SFU_ID:
                await self.sfu.to_sfu(call_id, pid, message)
            elif target == pid:
                raise SignalError(ErrorCode.INVALID_TARGET, "a message cannot target its sender")
            else:
                await self.registry.deliver_to(call_id, target, message)

    # -- the SFU's side (media.seam.SignalingPort) ----------------------------------------

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        await self.sfu.send_to(call_id, participant_id, message)

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        await self.sfu.send_error(call_id, participant_id, error)

    async def announce(self, call_id: str, state: Message) -> None:
        """A room's span state to the call's other nodes (:class:`media.seam.SpanPort`)."""
        await self.sfu.announce(call_id, state)

    async def on_room_lost(self, call_id: str) -> None:
        """Placement lost this node's claim (e.g. the key expired during an outage)."""
        await self.sfu.on_room_lost(call_id)

    # -- lifecycle events (CallEventListener) ---------------------------------------------

    async def on_call_event(self, event: CallEvent) -> None:
        await self.lifecycle.on_call_event(event)

    # -- bus listener ---------------------------------------------------------------------

    async def on_bus_message(self, call_id: str, envelope: Envelope) -> None:
        kind = envelope.get("kind")
        if kind == "deliver":
            message, to = envelope.get("message"), envelope.get("to")
            if isinstance(message, dict) and isinstance(to, str):
                self.registry.send_local(call_id, message, to=to)
        elif kind == "lifecycle":
            await self.lifecycle.on_lifecycle(call_id, envelope)
        elif kind == "presence":
            await self.presence.on_presence(call_id, envelope)
        elif kind == "sync":
            await self.presence.on_sync(call_id, envelope)
        elif kind == "sfu" and envelope.get("owner") == self.node_id:
            await self.sfu.on_envelope(call_id, envelope)
        elif kind == "span":
            await self.sfu.on_span(call_id, envelope)

    async def on_bus_down(self, call_ids: list[str]) -> None:
        await self.presence.on_bus_down(call_ids)

    async def on_bus_restored(self, call_ids: list[str]) -> None:
        await self.presence.on_bus_restored(call_ids)

    def _moved_away(self, call_id: str, pid: str) -> None:
        """``pid`` came online on another node: its seat is kept there."""
        self.grace.cancel(call_id, pid)
        local = self.registry.local(call_id).get(pid)
        if local is not None:
            local.close(CloseCode.REPLACED, "reconnected on another node")
