"""Drain: this node takes no new rooms, lets its rooms run until they empty or
a timeout passes, then moves what is left to other nodes without ending calls.

1. Placement stops choosing this node (:meth:`RoomPlacement.set_draining`,
   published in its load at once); ``/ready`` says ``draining`` (the app).
2. Rooms placed here run on; new participants may still join them. The drain
   waits until no room here has a participant, or ``timeout_s``.
3. Each room still here is closed (its media released) and its placement
   released, so the next SFU message places it again on another node; then
   every participant of it gets ``reconnect {republish: true}`` wherever its
   socket is.
4. Every socket of this node gets ``reconnect`` (``republish`` true if its
   room was one of those) and is closed with 1012, which does not start the
   grace period: the seat waits for the client to come back on another node
   (when this node is gone, the others adopt the seats not taken back, as for
   any node that stops). Nobody leaves the call; no call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from signaling.bus import BusUnavailable
from signaling.errors import CloseCode
from signaling.metrics import SignalingMetrics
from signaling.protocol import encode, reconnect_message
from signaling.registry import SocketRegistry
from signaling.sfu_relay import SfuRelay

logger = logging.getLogger(__name__)

#: How often the drain checks whether the rooms here have emptied.
POLL_S = 0.25


class NodeDrain:
    def __init__(
        self,
        registry: SocketRegistry,
        sfu: SfuRelay,
        metrics: SignalingMetrics,
        stop_accepting: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._sfu = sfu
        self._metrics = metrics
        self._stop_accepting = stop_accepting
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, timeout_s: float) -> asyncio.Task[None]:
        """Begin draining (idempotent: a second call returns the drain under way)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(timeout_s), name="signaling:drain")
        return self._task

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def live_rooms(self) -> list[str]:
        """Rooms placed here that still have participants."""
        members = self._sfu.members()
        return sorted(c for c in self._registry.placement.owned if members.get(c))

    async def _run(self, timeout_s: float) -> None:
        self._metrics.draining.set(1)
        try:
            await self._registry.placement.set_draining()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            rooms = self.live_rooms()
            logger.info(
                "drain: taking no new rooms; %d room(s) here run on for up to %g s",
                len(rooms),
                timeout_s,
            )
            while rooms and loop.time() < deadline:
                await asyncio.sleep(min(POLL_S, max(0.0, deadline - loop.time())))
                rooms = self.live_rooms()
            moved = await self._move_rooms()
            self._stop_accepting()
            sockets = self._move_sockets(moved)
            logger.info(
                "drain: done; %d room(s) released to other nodes, %d socket(s) told to reconnect",
                len(moved),
                sockets,
            )
        finally:
            self.done.set()

    async def _move_rooms(self) -> dict[str, frozenset[str]]:
        registry = self._registry
        members = self._sfu.members()
        moved: dict[str, frozenset[str]] = {}
        # The rooms it owns, and its parts of rooms across nodes owned elsewhere.
        for call_id in sorted(registry.placement.owned | set(members)):
            pids = members.get(call_id, frozenset())
            await self._sfu.close_room(call_id, ended=False)  # media released, placement too
            moved[call_id] = pids
            if pids:
                self._metrics.rooms_moved.inc()
            local = registry.local(call_id)
            for pid in sorted(pids):
                if pid in local:
                    continue  # told with its socket's close (below)
                message = reconnect_message(call_id, republish=True)
                with contextlib.suppress(BusUnavailable):
                    await registry.deliver_to(call_id, pid, message)
            await registry.maybe_unsubscribe(call_id)
        return moved

    def _move_sockets(self, moved: dict[str, frozenset[str]]) -> int:
        conns = self._registry.all_connections()
        for conn in conns:
            republish = conn.participant_id in moved.get(conn.call_id, frozenset())
            conn.send_text(encode(reconnect_message(conn.call_id, republish=republish)))
            conn.close(CloseCode.SERVICE_RESTART, "node draining: reconnect")
            self._metrics.close(CloseCode.SERVICE_RESTART)
        return len(conns)
