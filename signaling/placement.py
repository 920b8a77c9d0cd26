"""Which node holds a call's SFU room.

One node: always this one (:class:`LocalPlacement`). Several: the first node
that needs the room claims it with ``SET NX`` on ``huddle:room:{call_id}`` and
keeps the key alive with a heartbeat (writing it back if Redis lost it); when
a node dies its claims expire and the next SFU message re-places the room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from signaling.bus import BusUnavailable, room_owner_key

logger = logging.getLogger(__name__)

LostCallback = Callable[[str], Awaitable[None]]

# Compare-and-set scripts: only the owner may refresh or delete its claim. A
# claim Redis lost (a restart with no persistence, a flush) is written back by
# the node still serving the room, unless another node claimed it meanwhile.
_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RoomPlacement(Protocol):
    @property
    def owned(self) -> frozenset[str]: ...

    async def claim(self, call_id: str) -> str:
        """Claim the room if nobody holds it; returns the owner's node id."""

    async def owner(self, call_id: str) -> str | None: ...

    async def release(self, call_id: str) -> None: ...

    async def close(self) -> None: ...


class LocalPlacement:
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._owned: set[str] = set()

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    async def claim(self, call_id: str) -> str:
        self._owned.add(call_id)
        return self._node_id

    async def owner(self, call_id: str) -> str | None:
        return self._node_id if call_id in self._owned else None

    async def release(self, call_id: str) -> None:
        self._owned.discard(call_id)

    async def close(self) -> None:
        self._owned.clear()


class RedisPlacement:
    def __init__(
        self,
        redis: Redis,
        node_id: str,
        on_lost: LostCallback,
        *,
        ttl_s: float = 15.0,
    ) -> None:
        self._redis = redis
        self._node_id = node_id
        self._on_lost = on_lost
        self._ttl_ms = int(ttl_s * 1000)
        self._owned: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeat(), name="signaling:room-heartbeat")

    async def claim(self, call_id: str) -> str:
        if call_id in self._owned:
            return self._node_id
        key = room_owner_key(call_id)
        try:
            if await self._redis.set(key, self._node_id, nx=True, px=self._ttl_ms):
                self._owned.add(call_id)
                logger.info("Room(%s) placed on this node (%s)", call_id, self._node_id)
                return self._node_id
            current = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"room placement unavailable: {exc}") from exc
        if current is None:  # expired between SET and GET: try once more
            return await self.claim(call_id)
        owner = current.decode() if isinstance(current, bytes) else str(current)
        if owner == self._node_id:
            self._owned.add(call_id)
        return owner

    async def owner(self, call_id: str) -> str | None:
        if call_id in self._owned:
            return self._node_id
        try:
            current = await self._redis.get(room_owner_key(call_id))
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"room placement unavailable: {exc}") from exc
        if current is None:
            return None
        return current.decode() if isinstance(current, bytes) else str(current)

    async def release(self, call_id: str) -> None:
        if call_id not in self._owned:
            return
        self._owned.discard(call_id)
        try:
            await self._redis.eval(_RELEASE, 1, room_owner_key(call_id), self._node_id)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            logger.warning("Room(%s) release failed (expires by TTL): %s", call_id, exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for call_id in list(self._owned):
            await self.release(call_id)

    async def _heartbeat(self) -> None:
        interval = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> None:
        """Keep (or write back) this node's claims; a claim another node holds is lost."""
        for call_id in list(self._owned):
            try:
                kept = await self._redis.eval(  # type: ignore[misc]
                    _REFRESH, 1, room_owner_key(call_id), self._node_id, str(self._ttl_ms)
                )
            except (RedisError, OSError) as exc:
                # Keep the room: the key outlives a short outage by its TTL.
                logger.warning("Room(%s) heartbeat failed: %s", call_id, exc)
                continue
            except asyncio.CancelledError:
                raise
            if kept == 2:
                logger.info("Room(%s) placement written back (Redis had lost it)", call_id)
            if not kept and call_id in self._owned:
                self._owned.discard(call_id)
                logger.warning("Room(%s) lost its placement on this node", call_id)
                try:
                    await self._on_lost(call_id)
                except Exception:
                    logger.exception("Room(%s) lost-room callback failed", call_id)
