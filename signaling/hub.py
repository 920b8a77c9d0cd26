"""The signaling hub: admission of sockets, client messages, and the bus listener.

The hub puts the parts together; each lives in its own module:

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
:mod:`signaling.presence`), ``sfu`` (see :mod:`signaling.sfu_relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from media.seam import SfuEndpoint
from server.auth import Identity
from server.calls import CallService
from server.config import SignalingSettings
from server.events import CallEvent
from server.models import Call
from signaling.adoption import SeatScan
from signaling.bus import BusUnavailable, Envelope, MessageBus
from signaling.connection import Connection
from signaling.drain import NodeDrain
from signaling.errors import CloseCode, ErrorCode, SignalError
from signaling.grace import DisconnectGrace
from signaling.lifecycle_relay import LifecycleRelay
from signaling.metrics import SignalingMetrics
from signaling.placement import RoomPlacement
from signaling.presence import ROSTER_WINDOW_S, Presence
from signaling.protocol import SFU_ID, Message, encode, stamp
from signaling.registry import SocketRegistry
from signaling.seats import SeatRegistry
from signaling.sfu_relay import SfuRelay

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
        self.drain = NodeDrain(self.registry, self.sfu, metrics, self._stop_accepting)
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
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

    def attach_sfu(self, endpoint: SfuEndpoint | None) -> None:
        """Plug in (or remove) the SFU; without one, SFU messages get ``sfu_unavailable``."""
        self.sfu.attach(endpoint)

    def _stop_accepting(self) -> None:
        self._shutting_down = True

    async def shutdown(self) -> None:
        """Stop accepting and close every socket with 1001 (going away), then wait
        briefly for their handlers; clients reconnect to another node."""
        self._shutting_down = True
        for conn in self.registry.all_connections():
            conn.close(CloseCode.GOING_AWAY, "server shutting down", flush=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.shutdown_wait_s):
                await self._idle.wait()

    async def close(self) -> None:
        """Idempotent, in order: stop hearing events, cancel owned tasks, release
        rooms, then close seats, placement and bus."""
        self.calls.events.remove(self)
        await self.drain.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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

    # -- admission (the handler) -----------------------------------------------------------

    @property
    def bus_healthy(self) -> bool:
        return self._bus.healthy

    @property
    def connection_count(self) -> int:
        return sum(len(conns) for conns in self.registry.conns.values())

    def pending_leaves(self, call_id: str) -> int:
        return self.grace.pending_leaves(call_id)

    def try_acquire(self) -> bool:
        """Reserve a connection slot for an upgrade in progress; False when full."""
        if self._shutting_down or self._active >= self.settings.max_connections:
            return False
        self._active += 1
        self._idle.clear()
        return True

    def release(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def register(self, conn: Connection) -> None:
        """A socket is up: replace an older one, cancel a pending leave, subscribe,
        announce presence, and send the roster and mode."""
        registry = self.registry
        call_id, pid = conn.call_id, conn.participant_id
        was_online = registry.is_online(call_id, pid)
        conns = registry.conns.setdefault(call_id, {})
        old = conns.get(pid)
        conns[pid] = conn
        self.metrics.connections.inc()
        self.grace.cancel(call_id, pid)
        if old is not None:
            old.close(CloseCode.REPLACED, "replaced by a newer connection")
        await registry.ensure_subscribed(call_id)
        if self.seats is not None:
            await self.seats.attach(call_id, pid)
        if not was_online:
            self.presence.to_local(call_id, pid, online=True)
        try:
            await self.presence.announce(call_id, pid, online=True)
        except BusUnavailable as exc:
            self.presence.degraded(conn, exc)
        await self.presence.welcome(conn)

    def connection_ended(self, conn: Connection) -> asyncio.Task[None]:
        """The reader ended: stop the writer and unregister, in a task the hub owns."""

        async def finish() -> None:
            await conn.stop()
            await self.unregister(conn)

        task = asyncio.create_task(finish(), name=f"signaling:finish:{conn.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def unregister(self, conn: Connection) -> None:
        """A socket is gone; unless it left, was replaced or the server is stopping,
        the participant leaves the call after the grace period."""
        registry = self.registry
        call_id, pid = conn.call_id, conn.participant_id
        conns = registry.local(call_id)
        if conns.get(pid) is not conn:
            return  # replaced: the newer socket holds the seat
        del conns[pid]
        if not conns:
            del registry.conns[call_id]
        self.metrics.connections.dec()
        code = conn.close_code
        if code in (CloseCode.TOO_SLOW, CloseCode.HEARTBEAT_TIMEOUT):
            self.metrics.close(code)  # decided by the connection's writer, counted here
        if code not in _NO_GRACE:
            self.grace.schedule_leave(call_id, pid, conn.name)
        if code != CloseCode.REPLACED and not registry.is_online(call_id, pid):
            self.presence.to_local(call_id, pid, online=False)
            with contextlib.suppress(BusUnavailable):
                await self.presence.announce(call_id, pid, online=False)
        if call_id not in registry.conns:
            self.presence.batcher.drop(call_id)
        await registry.maybe_unsubscribe(call_id)

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
