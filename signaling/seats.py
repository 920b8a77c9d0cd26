"""Which node holds each participant's socket, so a dead node's seats are freed.

On one node a dropped socket schedules the participant's leave after the
disconnect grace period. When a whole node dies (a crash, a kill, a lost
machine) nobody is left to do that, and its participants' seats were held
until the stale-call sweep. With Redis, :class:`SeatRegistry` keeps:

- ``huddle:alive:{node_id}:{run}``: a key each live node process refreshes
  (TTL ``HUDDLE_NODE_TTL``, renewed every third of it), deleted on a clean
  stop; ``run`` is random per process, so a node restarted under the same
  ``HUDDLE_NODE_ID`` does not pass for its dead predecessor;
- ``huddle:seats:{call_id}``: a hash participant → ``node_id:run``, written
  when a socket opens there (a reconnect elsewhere overwrites it), and written
  again (``HSETNX``, never over another node's newer seat) by every heartbeat
  for the sockets still open here, so seats lost with Redis (a restart with
  ``--save ''``, a flush, a failover) are back within a third of the TTL;
- ``huddle:orphan:{call_id}:{participant}``: ``SET NX`` by the one node that
  takes charge of an orphaned seat, so a leave is scheduled once.

Every node scans the participants joined to live calls every third of the
TTL; a seat whose node key has expired is adopted: the participant leaves
after the grace period unless, by then, its seat points to a live node (it
reconnected somewhere). Participants without a seat record (they never opened
a socket, or their node died while Redis had lost its records) leave once
``HUDDLE_CONNECT_TIMEOUT`` has passed since they joined and they have been
seen seatless for two TTLs (every live node has rebuilt its seats by
then). Redis errors make a scan skip, never kick anyone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: How long a call's seat map outlives its last write (longer than any call).
SEATS_TTL_S = 8 * 24 * 3600


def node_key(holder: str) -> str:
    return f"huddle:alive:{holder}"


def seats_key(call_id: str) -> str:
    return f"huddle:seats:{call_id}"


def orphan_key(call_id: str, participant_id: str) -> str:
    return f"huddle:orphan:{call_id}:{participant_id}"


class SeatRegistry:
    """This node's liveness and its participants' seats, in Redis."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        *,
        ttl_s: float = 15.0,
    ) -> None:
        self._redis = redis
        #: (call_id, participant_id) of the sockets open on this node; set by the hub.
        self.local_seats: Callable[[], Iterable[tuple[str, str]]] = tuple
        #: Called with how many seat records a heartbeat wrote back.
        self.on_rebuilt: Callable[[int], None] | None = None
        self.node_id = node_id
        #: What this process writes into seats: the node id and a per-run token.
        self.holder = f"{node_id}:{secrets.token_hex(4)}"
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def scan_interval_s(self) -> float:
        return self.ttl_s / 3

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._heartbeat(), name="signaling:node-heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat and drop our node key, so other nodes adopt at once (idempotent)."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._redis.delete(node_key(self.holder))
        except RedisError as exc:
            logger.warning("signaling: could not drop node key (expires by TTL): %s", exc)

    async def _heartbeat(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    logger.info("signaling: node heartbeat restored")
                failing = False
            except RedisError as exc:
                if not failing:
                    logger.warning("signaling: node heartbeat failed: %s", exc)
                failing = True
            await asyncio.sleep(self.scan_interval_s)

    async def beat(self) -> int:
        """Refresh the node key and write back missing seats of local sockets;
        returns how many seats were missing (Redis lost them). Raises RedisError."""
        seats = sorted(set(self.local_seats()))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(node_key(self.holder), "1", px=self._ttl_ms)
            for call_id, participant_id in seats:
                pipe.hsetnx(seats_key(call_id), participant_id, self.holder)
            for call_id in sorted({call_id for call_id, _ in seats}):
                pipe.expire(seats_key(call_id), SEATS_TTL_S)
            results = await pipe.execute()
        rebuilt = sum(1 for written in results[1 : 1 + len(seats)] if written)
        if rebuilt:
            logger.info("signaling: wrote %d seat record(s) Redis had lost", rebuilt)
            if self.on_rebuilt is not None:
                self.on_rebuilt(rebuilt)
        return rebuilt

    async def attach(self, call_id: str, participant_id: str) -> None:
        """``participant_id``'s socket for ``call_id`` is on this node now (best effort)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(seats_key(call_id), participant_id, self.holder)
                pipe.expire(seats_key(call_id), SEATS_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            logger.warning("Call(%s) seat of %s not recorded: %s", call_id, participant_id, exc)

    async def holders(self, call_ids: list[str]) -> dict[str, dict[str, str]]:
        """participant → node for each call (calls without seats map to {})."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hgetall(seats_key(call_id))
            results = await pipe.execute()
        return {
            call_id: {_text(k): _text(v) for k, v in (result or {}).items()}
            for call_id, result in zip(call_ids, results, strict=True)
        }

    async def alive(self, nodes: set[str]) -> set[str]:
        ordered = sorted(nodes)
        if not ordered:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in ordered:
                pipe.exists(node_key(node))
            results = await pipe.execute()
        return {node for node, exists in zip(ordered, results, strict=True) if exists}

    async def claim(self, call_id: str, participant_id: str, hold_s: float) -> bool:
        """Take charge of an orphaned seat; False when another node already did."""
        result = await self._redis.set(
            orphan_key(call_id, participant_id), self.holder, nx=True, px=int(hold_s * 1000)
        )
        return bool(result)

    async def held_elsewhere(self, call_id: str, participant_id: str, lost_node: str) -> bool:
        """Whether the seat now belongs to a live node other than ``lost_node``."""
        # redis-py types hget as sync-or-async; the asyncio client returns an awaitable.
        pending = cast(
            Awaitable[bytes | str | None], self._redis.hget(seats_key(call_id), participant_id)
        )
        holder = await pending
        if holder is None:
            return False
        node = _text(holder)
        return node != lost_node and bool(await self._redis.exists(node_key(node)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
