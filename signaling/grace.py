"""Disconnect grace: a participant whose socket went away leaves after a while.

A socket that drops (anything but a leave, a replacement or a shutdown),
a seat of a dead node adopted by this one, and a participant who never
connected all end here: :meth:`DisconnectGrace.schedule_leave` starts a task
that leaves the call once the grace period is over, retrying while the
database or Redis is away, unless the participant is back first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from server.auth import Identity
from server.calls import CallService
from server.config import SignalingSettings
from server.errors import HuddleError
from signaling.metrics import SignalingMetrics
from signaling.registry import SocketRegistry
from signaling.seats import SeatRegistry

logger = logging.getLogger(__name__)


class DisconnectGrace:
    """The pending leaves of this node (in :attr:`SocketRegistry.pending`), and their tasks."""

    def __init__(
        self,
        registry: SocketRegistry,
        calls: CallService,
        settings: SignalingSettings,
        metrics: SignalingMetrics,
        *,
        grace_s: float,
        seats: SeatRegistry | None,
    ) -> None:
        self._registry = registry
        self.calls = calls
        self.settings = settings
        self.metrics = metrics
        self.grace_s = grace_s
        self.seats = seats
        self.node_id = registry.node_id
        self._tasks: set[asyncio.Task[None]] = set()
        #: How a grace period and a retry wait (tests put a clock of their own here).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def pending_leaves(self, call_id: str) -> int:
        """Disconnect leaves waiting out their grace period for this call."""
        return len(self._registry.pending.get(call_id, {}))

    def cancel_all(self, call_id: str) -> None:
        for pid in list(self._registry.pending.get(call_id, {})):
            self.cancel(call_id, pid)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._registry.pending.clear()

    def expect_reconnect(self, call_id: str, pid: str, name: str | None) -> bool:
        """Treat ``pid`` as just disconnected unless it has a socket here.

        For participants whose sockets died with a previous process: they
        leave after the grace period unless they reconnect first. Returns
        whether a leave was scheduled.
        """
        if self._registry.held_here(call_id, pid):
            return False
        self.schedule_leave(call_id, pid, name)
        return True

    def schedule_leave(
        self,
        call_id: str,
        pid: str,
        name: str | None,
        lost_node: str | None = None,
        *,
        never_connected: bool = False,
    ) -> None:
        """Leave after the grace period (at once when ``never_connected``);
        ``lost_node``: the seat holder whose socket went away."""
        self.cancel(call_id, pid)
        if lost_node is None:
            lost_node = self.seats.holder if self.seats is not None else self.node_id
        task = asyncio.create_task(
            self._leave_after_grace(call_id, pid, name, lost_node, never_connected),
            name=f"signaling:leave:{pid}",
        )
        self._registry.pending.setdefault(call_id, {})[pid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self, call_id: str, pid: str) -> None:
        pending = self._registry.pending.get(call_id)
        if pending is None:
            return
        task = pending.pop(pid, None)
        if not pending:
            del self._registry.pending[call_id]
        if task is not None:
            task.cancel()

    async def _leave_after_grace(
        self, call_id: str, pid: str, name: str | None, lost_node: str, never_connected: bool
    ) -> None:
        """Leave once the grace period is over, retrying (backing off up to
        ``settings.leave_retry_s``) while the database or Redis is away, until
        the leave lands, is moot (already left, call ended), or the participant
        is back (a socket here, or a seat on another live node)."""
        if not never_connected:
            await self.sleep(self.grace_s)
        delay = min(0.25, self.settings.leave_retry_s)
        attempts = 0
        try:
            while True:
                # Out of the pending map first: the leave's own event must not cancel us.
                self._unpend(call_id, pid)
                attempts += 1
                if await self._try_leave(call_id, pid, name, lost_node, attempts, never_connected):
                    return
                if self._registry.held_here(call_id, pid):
                    return  # reconnected here during the attempt: its socket holds the seat
                # Pending again while we wait, so a reconnect (here or elsewhere) cancels us.
                task = asyncio.current_task()
                assert task is not None
                self._registry.pending.setdefault(call_id, {})[pid] = task
                await self.sleep(delay)
                delay = min(delay * 2, self.settings.leave_retry_s)
        finally:
            await self._registry.maybe_unsubscribe(call_id)

    def _unpend(self, call_id: str, pid: str) -> None:
        pending = self._registry.pending.get(call_id, {})
        if pending.get(pid) is asyncio.current_task():
            del pending[pid]
            if not pending:
                self._registry.pending.pop(call_id, None)

    async def _try_leave(
        self,
        call_id: str,
        pid: str,
        name: str | None,
        lost_node: str,
        attempt: int,
        never_connected: bool = False,
    ) -> bool:
        """One attempt at a server-started leave; False: try again later."""
        if self.seats is not None:
            try:
                if await self.seats.held_elsewhere(call_id, pid, lost_node):
                    logger.info("Call(%s) Participant(%s) reconnected elsewhere", call_id, pid)
                    return True
            except RedisError as exc:
                if lost_node != self.seats.holder:
                    # An adopted seat, unknown state: never kick someone who
                    # may have reconnected; ask Redis again shortly.
                    if attempt == 1:
                        logger.warning(
                            "Call(%s) leave of %s waits for Redis: %s", call_id, pid, exc
                        )
                    return False
                # Our own socket dropped: leave as without a seat map.
                logger.warning("Call(%s) seat of %s not checked, Redis: %s", call_id, pid, exc)
        try:
            await self.calls.leave(Identity(pid, name), call_id)
        except HuddleError as exc:
            if exc.status < 500:
                return True  # already left, or the call ended meanwhile: nothing to clean
            self._leave_failed(call_id, pid, attempt, exc.message)
            return False
        except Exception as exc:
            if attempt == 1:
                logger.exception("Call(%s) disconnect leave of %s failed", call_id, pid)
            self._leave_failed(call_id, pid, attempt, repr(exc))
            return False
        (
            self.metrics.connect_timeouts if never_connected else self.metrics.cleanup_on_disconnect
        ).inc()
        logger.info(
            "Call(%s) Participant(%s) left %s%s",
            call_id,
            pid,
            "without ever connecting" if never_connected else "after disconnect grace",
            f" (attempt {attempt})" if attempt > 1 else "",
        )
        return True

    def _leave_failed(self, call_id: str, pid: str, attempt: int, why: str) -> None:
        self.metrics.cleanup_failed.inc()
        log = logger.warning if attempt == 1 else logger.debug
        log(
            "Call(%s) disconnect leave of %s failed (attempt %d), retrying within %.1f s: %s",
            call_id,
            pid,
            attempt,
            self.settings.leave_retry_s,
            why,
        )
