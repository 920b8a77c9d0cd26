"""Rooms whose owner node died: noticed in seconds, their participants told to start over.

A node killed with SIGKILL leaves its room claims (``huddle:room:{call_id}``)
in Redis until their TTL runs out, and the participants connected to other
nodes keep talking to a room that no longer exists. Each node therefore
watches the rooms of the calls it holds sockets for, every
:data:`INTERVAL_S`: it reads their owners (one ``MGET``) and asks Redis how
many connections listen on each owner's node channel (one ``PUBSUB
NUMSUB``). A killed process's connections close with it, so a dead owner
shows as **no listener** at once, long before any TTL. Only after
:data:`CONFIRM` checks in a row (a Redis reconnect of a live node takes less)
is the owner taken for dead: the claim is deleted if it still names it
(compare-and-delete; exactly one watching node wins), and that node tells
every participant of the call online anywhere ``error {code:
"sfu_session_lost"}``. Their clients start the SFU session over, and their
publish offers place the room anew on a live node. A participant offline at
that moment asks on its return (``resume``) and is told the same.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.workers import PeriodicWorker
from signaling.bus import node_channel, room_owner_key
from signaling.placement import RELEASE
from signaling.registry import SocketRegistry

logger = logging.getLogger(__name__)

#: How often the owners are checked (seconds).
INTERVAL_S = 1.0
#: Checks in a row that must find no listener before the owner is taken for dead.
CONFIRM = 2
#: At most this many calls are checked per round (one MGET).
MAX_CALLS = 5_000

OwnerLost = Callable[[str, str], Awaitable[None]]


class OwnerProbe(Protocol):
    async def owners(self, call_ids: list[str]) -> dict[str, str]:
        """The owner node of each call's room that has one."""

    async def listening(self, nodes: Iterable[str]) -> dict[str, bool]:
        """Whether anything listens on each node's channel (the node is up)."""

    async def clear(self, call_id: str, owner: str) -> bool:
        """Delete the call's room claim if ``owner`` still holds it; True if this did."""


class RedisOwnerProbe:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def owners(self, call_ids: list[str]) -> dict[str, str]:
        if not call_ids:
            return {}
        values = await self._redis.mget([room_owner_key(c) for c in call_ids])
        return {
            call_id: value.decode() if isinstance(value, bytes) else str(value)
            for call_id, value in zip(call_ids, values, strict=True)
            if value is not None
        }

    async def listening(self, nodes: Iterable[str]) -> dict[str, bool]:
        names = list(nodes)
        if not names:
            return {}
        counts = await self._redis.pubsub_numsub(*(node_channel(n) for n in names))
        by_channel = {(c.decode() if isinstance(c, bytes) else str(c)): int(n) for c, n in counts}
        return {n: by_channel.get(node_channel(n), 0) > 0 for n in names}

    async def clear(self, call_id: str, owner: str) -> bool:
        deleted = await self._redis.eval(RELEASE, 1, room_owner_key(call_id), owner)  # type: ignore[misc]
        return bool(deleted)


class OwnerWatch:
    """Owned task: watches the room owners of this node's calls (see the module doc)."""

    def __init__(
        self,
        registry: SocketRegistry,
        probe: OwnerProbe,
        on_lost: OwnerLost,
        *,
        interval_s: float = INTERVAL_S,
        confirm: int = CONFIRM,
    ) -> None:
        self._registry = registry
        self._probe = probe
        self._on_lost = on_lost
        self._confirm = confirm
        #: node -> checks in a row that found nothing listening on its channel.
        self._silent: dict[str, int] = {}
        self._worker = PeriodicWorker("room-owner-watch", interval_s, self._step)

    def start(self) -> None:
        self._worker.start()

    async def close(self) -> None:
        await self._worker.close()

    async def _step(self) -> None:
        try:
            await self.check()
        except (RedisError, OSError) as exc:  # Redis away: the next round tries again
            logger.warning("signaling: room owner check failed: %s", exc)

    async def check(self) -> list[str]:
        """One round; returns the calls whose dead owner's claim this node cleared."""
        registry = self._registry
        mine = registry.placement.owned
        calls = [c for c in registry.conns if c not in mine][:MAX_CALLS]
        owners = await self._probe.owners(calls)
        others = {o for o in owners.values() if o != registry.node_id}
        alive = await self._probe.listening(sorted(others))
        for node, up in alive.items():
            self._silent[node] = 0 if up else self._silent.get(node, 0) + 1
        for node in [n for n in self._silent if n not in alive]:
            del self._silent[node]  # no call of ours on it any more
        dead = {n for n, count in self._silent.items() if count >= self._confirm}
        cleared: list[str] = []
        for call_id, owner in sorted(owners.items()):
            if owner not in dead:
                continue
            if not await self._probe.clear(call_id, owner):
                continue  # another node cleared it first (and tells everyone)
            logger.warning(
                "Room(%s) lost: its node %s stopped listening; participants start over",
                call_id,
                owner,
            )
            cleared.append(call_id)
            await self._on_lost(call_id, owner)
        return cleared
