"""Sockets coming and going on this node: upgrade slots, registration, a socket's end.

:class:`SocketLifecycle` reserves a slot for each upgrade in progress (none
while the node is full or shutting down), registers a socket once it is up
(replacing an older one of the same participant, calling off its pending
leave, announcing presence, sending the roster and mode) and, when its reader
ends, unregisters it in a task it owns: unless the participant left, was
replaced or the node is stopping, it leaves after the disconnect grace period.
"""

from __future__ import annotations

import asyncio
import contextlib

from server.config import SignalingSettings
from signaling.bus import BusUnavailable
from signaling.connection import Connection
from signaling.errors import CloseCode
from signaling.grace import DisconnectGrace
from signaling.metrics import SignalingMetrics
from signaling.presence import Presence
from signaling.registry import SocketRegistry
from signaling.seats import SeatRegistry

#: Closes that do not start the grace period: left, node going away or draining, replaced.
_NO_GRACE = (CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART, CloseCode.REPLACED)


class SocketLifecycle:
    def __init__(
        self,
        registry: SocketRegistry,
        presence: Presence,
        grace: DisconnectGrace,
        settings: SignalingSettings,
        metrics: SignalingMetrics,
        seats: SeatRegistry | None,
        *,
        shutdown_wait_s: float,
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._grace = grace
        self._settings = settings
        self._metrics = metrics
        self._seats = seats
        self._shutdown_wait_s = shutdown_wait_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False

    @property
    def connection_count(self) -> int:
        return sum(len(conns) for conns in self._registry.conns.values())

    def try_acquire(self) -> bool:
        """Reserve a connection slot for an upgrade in progress; False when full."""
        if self._shutting_down or self._active >= self._settings.max_connections:
            return False
        self._active += 1
        self._idle.clear()
        return True

    def release(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    def stop_accepting(self) -> None:
        """Refuse new sockets from now on (a node draining)."""
        self._shutting_down = True

    async def shutdown(self) -> None:
        """Stop accepting and close every socket with 1001 (going away), then wait
        briefly for their handlers; clients reconnect to another node."""
        self._shutting_down = True
        for conn in self._registry.all_connections():
            conn.close(CloseCode.GOING_AWAY, "server shutting down", flush=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._shutdown_wait_s):
                await self._idle.wait()

    async def close(self) -> None:
        """Cancel the unregistrations still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def register(self, conn: Connection) -> None:
        """A socket is up: replace an older one, cancel a pending leave, subscribe,
        announce presence, and send the roster and mode."""
        registry = self._registry
        call_id, pid = conn.call_id, conn.participant_id
        was_online = registry.is_online(call_id, pid)
        conns = registry.conns.setdefault(call_id, {})
        old = conns.get(pid)
        conns[pid] = conn
        self._metrics.connections.inc()
        self._grace.cancel(call_id, pid)
        if old is not None:
            old.close(CloseCode.REPLACED, "replaced by a newer connection")
        await registry.ensure_subscribed(call_id)
        if self._seats is not None:
            await self._seats.attach(call_id, pid)
        if not was_online:
            self._presence.to_local(call_id, pid, online=True)
        try:
            await self._presence.announce(call_id, pid, online=True)
        except BusUnavailable as exc:
            self._presence.degraded(conn, exc)
        await self._presence.welcome(conn)

    def connection_ended(self, conn: Connection) -> asyncio.Task[None]:
        """The reader ended: stop the writer and unregister, in a task owned here."""

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
        registry = self._registry
        call_id, pid = conn.call_id, conn.participant_id
        conns = registry.local(call_id)
        if conns.get(pid) is not conn:
            return  # replaced: the newer socket holds the seat
        del conns[pid]
        if not conns:
            del registry.conns[call_id]
        self._metrics.connections.dec()
        code = conn.close_code
        if code in (CloseCode.TOO_SLOW, CloseCode.HEARTBEAT_TIMEOUT):
            self._metrics.close(code)  # decided by the connection's writer, counted here
        if code not in _NO_GRACE:
            self._grace.schedule_leave(call_id, pid, conn.name)
        if code != CloseCode.REPLACED and not registry.is_online(call_id, pid):
            self._presence.to_local(call_id, pid, online=False)
            with contextlib.suppress(BusUnavailable):
                await self._presence.announce(call_id, pid, online=False)
        if call_id not in registry.conns:
            self._presence.batcher.drop(call_id)
        await registry.maybe_unsubscribe(call_id)
