"""Which node holds a call's SFU room.

One node: always this one (:class:`LocalPlacement`), unless it is draining.
Several: the first node that needs a room with no owner places it, on the
least-loaded live node that is not draining (:mod:`signaling.load`: one Redis
script checks and sets ``huddle:room:{call_id}``), possibly another node,
which adopts it when the first SFU message for it arrives. The owner keeps
the key alive with a heartbeat (writing it back if Redis lost it) and
publishes its load in the same beat; when a node dies its claims expire and
the next SFU message re-places the room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from signaling.bus import BusUnavailable, room_owner_key
from signaling.load import CPU_WEIGHT, NODES_KEY, PLACE, PPS_WEIGHT, PUBLISH, LoadMeter

logger = logging.getLogger(__name__)

LostCallback = Callable[[str], Awaitable[None]]

#: A room's size hint weighs in its node's load for this long after placement
#: (its participants are on their way); then only who is in the room counts.
HINT_WINDOW_S = 120.0

# Compare-and-set scripts: only the owner may refresh or delete its claim
# (RELEASE: also the owner watch's, for a dead owner's claim). A
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
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class NoNodeAvailable(Exception):
    """No node may take a new room now (this one and every other is draining)."""


class RoomPlacement(Protocol):
    @property
    def owned(self) -> frozenset[str]: ...

    @property
    def draining(self) -> bool: ...

    async def set_draining(self) -> None:
        """Take no new rooms from now on (the ones placed here stay)."""

    async def claim(self, call_id: str, size_hint: int = 0) -> str:
        """Place the room if nobody holds it; returns the owner's node id. Raises
        :class:`NoNodeAvailable` (and :class:`BusUnavailable` over Redis)."""

    async def adopt(self, call_id: str, size_hint: int = 0) -> bool:
        """Another node placed the room here: take it if Redis still says so."""

    async def owner(self, call_id: str) -> str | None: ...

    async def release(self, call_id: str) -> None: ...

    async def close(self) -> None: ...


class LocalPlacement:
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._owned: set[str] = set()
        self._draining = False

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    @property
    def draining(self) -> bool:
        return self._draining

    async def set_draining(self) -> None:
        self._draining = True

    async def claim(self, call_id: str, size_hint: int = 0) -> str:
        if call_id not in self._owned:
            if self._draining:
                raise NoNodeAvailable("this node is draining")
            self._owned.add(call_id)
        return self._node_id

    async def adopt(self, call_id: str, size_hint: int = 0) -> bool:
        return call_id in self._owned

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
        meter: LoadMeter | None = None,
        nodes_key: str = NODES_KEY,
    ) -> None:
        self._redis = redis
        self._nodes_key = nodes_key
        self._node_id = node_id
        self._on_lost = on_lost
        self._ttl_ms = int(ttl_s * 1000)
        self._owned: set[str] = set()
        #: Size hints (invited count) of the rooms placed here, when known, and when.
        self._hints: dict[str, tuple[int, float]] = {}
        self._draining = False
        self.meter = meter or LoadMeter()
        self.meter.on_attach(self._publish_soon)
        self._task: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeat(), name="signaling:room-heartbeat")

    async def set_draining(self) -> None:
        self._draining = True
        try:
            await self.publish_load()
        except (RedisError, OSError) as exc:  # the script refuses this node anyway
            logger.warning("signaling: could not publish draining: %s", exc)

    async def claim(self, call_id: str, size_hint: int = 0, *, retry: bool = True) -> str:
        if call_id in self._owned:
            return self._node_id
        try:
            placed, owner_raw = await self._redis.eval(  # type: ignore[misc]
                PLACE,
                2,
                room_owner_key(call_id),
                self._nodes_key,
                self._node_id,
                str(self._ttl_ms),
                str(max(0, size_hint)),
                str(self._ttl_ms),
                str(PPS_WEIGHT),
                str(CPU_WEIGHT),
                "1" if self._draining else "0",
            )
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"room placement unavailable: {exc}") from exc
        if placed == 2:
            raise NoNodeAvailable("every live node is draining")
        owner = _text(owner_raw)
        if owner == self._node_id and placed == 0 and self._draining:
            await self._give_back(call_id)  # placed here by another, not adopted yet
            return await self.claim(call_id, size_hint, retry=False) if retry else owner
        if owner == self._node_id:
            self._take(call_id, size_hint)
        if placed == 1:
            logger.info("Room(%s) placed on node %s (size hint %d)", call_id, owner, size_hint)
        return owner

    async def adopt(self, call_id: str, size_hint: int = 0) -> bool:
        if call_id in self._owned:
            return True
        try:
            current = await self._redis.get(room_owner_key(call_id))
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"room placement unavailable: {exc}") from exc
        if current is None or _text(current) != self._node_id:
            return False
        if self._draining:
            # Placed here just before the drain began, and nobody is in it yet:
            # give it back, so that the message places it on another node.
            await self._give_back(call_id)
            return False
        self._take(call_id, size_hint)
        logger.info("Room(%s) adopted: placed on this node by another", call_id)
        return True

    def _take(self, call_id: str, size_hint: int) -> None:
        self._owned.add(call_id)
        if size_hint > 0:
            self._hints[call_id] = (size_hint, time.monotonic())

    def _publish_soon(self) -> None:
        """The SFU is attached: offer this node for rooms now, not at the next beat."""

        async def publish() -> None:
            try:
                await self.publish_load()
            except (RedisError, OSError) as exc:
                logger.warning("signaling: could not publish this node's load: %s", exc)

        task = asyncio.get_running_loop().create_task(publish(), name="signaling:load")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def publish_load(self) -> None:
        """Write this node's load into ``huddle:nodes`` (not before its SFU is
        attached: until then nobody may place a room here). Raises RedisError."""
        if not self.meter.attached:
            return
        since = time.monotonic() - HINT_WINDOW_S
        hints = {c: hint for c, (hint, at) in self._hints.items() if at >= since}
        load = self.meter.sample(self.owned, hints, self._draining)
        await self._redis.eval(PUBLISH, 1, self._nodes_key, self._node_id, load.to_json())  # type: ignore[misc]

    async def owner(self, call_id: str) -> str | None:
        if call_id in self._owned:
            return self._node_id
        try:
            current = await self._redis.get(room_owner_key(call_id))
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"room placement unavailable: {exc}") from exc
        if current is None:
            return None
        return _text(current)

    async def release(self, call_id: str) -> None:
        if call_id not in self._owned:
            return
        self._owned.discard(call_id)
        self._hints.pop(call_id, None)
        await self._give_back(call_id)

    async def _give_back(self, call_id: str) -> None:
        try:
            await self._redis.eval(RELEASE, 1, room_owner_key(call_id), self._node_id)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            logger.warning("Room(%s) release failed (expires by TTL): %s", call_id, exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        tasks = [t for t in (task, *self._publishing) if t is not None]
        for pending in tasks:
            pending.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call_id in list(self._owned):
            await self.release(call_id)
        try:
            await self._redis.hdel(self._nodes_key, self._node_id)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            logger.warning("signaling: could not drop this node's load (goes stale): %s", exc)

    async def _heartbeat(self) -> None:
        interval = self._ttl_ms / 3000
        while True:
            try:
                await self.publish_load()
            except (RedisError, OSError) as exc:
                logger.warning("signaling: load heartbeat failed: %s", exc)
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
                self._hints.pop(call_id, None)
                logger.warning("Room(%s) lost its placement on this node", call_id)
                try:
                    await self._on_lost(call_id)
                except Exception:
                    logger.exception("Room(%s) lost-room callback failed", call_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
