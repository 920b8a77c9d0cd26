"""Seats of dead nodes and of participants who never connected.

Every :attr:`SeatScan.interval_s` the participants joined to live calls are
checked: a seat whose node is dead (its heartbeat in Redis expired) is
adopted by this node and left after the grace period; a participant who
joined but never opened a socket anywhere leaves once ``connect_timeout_s``
has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from redis.exceptions import RedisError

from server.calls import CallService
from server.config import SignalingSettings
from server.errors import HuddleError
from server.models import utcnow
from signaling.grace import DisconnectGrace
from signaling.registry import SocketRegistry
from signaling.seats import SeatRegistry

logger = logging.getLogger(__name__)

#: At most this many joined participants are checked per orphaned-seat scan.
ORPHAN_SCAN_LIMIT = 10_000


class SeatScan:
    def __init__(
        self,
        registry: SocketRegistry,
        grace: DisconnectGrace,
        calls: CallService,
        settings: SignalingSettings,
        seats: SeatRegistry | None,
    ) -> None:
        self._registry = registry
        self._grace = grace
        self.calls = calls
        self.settings = settings
        self.seats = seats
        #: (call, participant) -> when a scan first saw it joined without any socket.
        self._unseated: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="signaling:seat-scan")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def interval_s(self) -> float:
        """How often joined participants are checked (dead nodes, never connected)."""
        if self.seats is not None:
            return min(self.seats.scan_interval_s, self.settings.connect_timeout_s / 4)
        return max(0.05, min(5.0, self.settings.connect_timeout_s / 4))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.scan_seats()
            except (RedisError, HuddleError) as exc:
                logger.warning("signaling: seat scan skipped: %s", exc)
            except Exception:
                logger.exception("signaling: seat scan failed")

    async def adopt_orphans(self) -> int:
        """Schedule the leave of participants whose socket's node is dead; returns how many."""
        adopted, _ = await self.scan_seats()
        return adopted

    async def scan_seats(self) -> tuple[int, int]:
        """One scan of the participants joined to live calls: adopt the seats of
        dead nodes, release those who never connected; returns (adopted, released)."""
        joined = await self.calls.store.joined_in_live_calls(limit=ORPHAN_SCAN_LIMIT)
        by_call: dict[str, list[tuple[str, str | None]]] = {}
        for call_id, pid, name in joined:
            by_call.setdefault(call_id, []).append((pid, name))
        holders: dict[str, dict[str, str]] = {}
        adopted = 0
        if self.seats is not None:
            holders = await self.seats.holders(list(by_call))
            adopted = await self._adopt(by_call, holders)
        released = await self._release_unconnected(by_call, holders)
        return adopted, released

    async def _adopt(
        self, by_call: dict[str, list[tuple[str, str | None]]], holders: dict[str, dict[str, str]]
    ) -> int:
        seats = self.seats
        assert seats is not None
        nodes = {node for seat in holders.values() for node in seat.values()}
        alive = await seats.alive(nodes)
        adopted = 0
        hold_s = self._grace.grace_s + seats.ttl_s
        for call_id, members in by_call.items():
            for pid, name in members:
                node = holders[call_id].get(pid)
                if node is None or node in alive or node == seats.holder:
                    continue  # never connected, or its node is alive
                if self._registry.held_here(call_id, pid):
                    continue
                if await seats.claim(call_id, pid, hold_s):
                    logger.info(
                        "Call(%s) Participant(%s): node %s is gone, leaving after grace",
                        call_id,
                        pid,
                        node,
                    )
                    self._grace.schedule_leave(call_id, pid, name, lost_node=node)
                    adopted += 1
        return adopted

    async def _release_unconnected(
        self, by_call: dict[str, list[tuple[str, str | None]]], holders: dict[str, dict[str, str]]
    ) -> int:
        """Joined participants with no socket anywhere leave once
        ``connect_timeout_s`` has passed since they joined.

        Without Redis: no socket here and no leave pending. With Redis: no
        seat record at all (seen so for two node TTLs, so that every live
        node's heartbeat has written back the seats Redis may have lost), or a
        seat of this very node whose socket is gone with no leave pending.
        Seats of other nodes are theirs (alive) or adopted (dead)."""
        seats = self.seats
        now = time.monotonic()
        # Two TTLs: every live node's heartbeat (every third of one) has had
        # several chances to write back seats Redis lost.
        hold_s = 2 * seats.ttl_s if seats is not None else 0.0
        unseated: dict[tuple[str, str], float] = {}
        candidates: dict[str, list[tuple[str, str | None, str]]] = {}
        for call_id, members in by_call.items():
            for pid, name in members:
                if self._registry.held_here(call_id, pid):
                    continue
                node = None
                if seats is not None:
                    node = holders.get(call_id, {}).get(pid)
                    if node is not None and node != seats.holder:
                        continue
                key = (call_id, pid)
                since = unseated[key] = self._unseated.get(key, now)
                if now - since >= hold_s:
                    # lost_node: a seat of ours whose socket is gone, or nobody ("").
                    candidates.setdefault(call_id, []).append((pid, name, node or ""))
        self._unseated = unseated
        released = 0
        if not candidates:
            return 0
        deadline = utcnow() - timedelta(seconds=self.settings.connect_timeout_s)
        for call_id, waiting in candidates.items():
            call = await self.calls.store.get_call(call_id)
            if call is None or call.is_ended:
                continue
            for pid, name, lost_node in waiting:
                participant = call.participant(pid)
                if participant is None or participant.joined_at is None:
                    continue
                if not participant.is_joined or participant.joined_at > deadline:
                    continue
                if seats is not None and not await seats.claim(
                    call_id, pid, self.settings.connect_timeout_s
                ):
                    continue  # another node is releasing it
                logger.info(
                    "Call(%s) Participant(%s) joined %.0f s ago and never opened a "
                    "signaling socket: releasing the seat",
                    call_id,
                    pid,
                    (utcnow() - participant.joined_at).total_seconds(),
                )
                self._unseated.pop((call_id, pid), None)
                self._grace.schedule_leave(call_id, pid, name, lost_node, never_connected=True)
                released += 1
        return released
