"""The watch on room owners over the real Redis: a node whose channel nobody listens on
any more (a killed process) loses its rooms after ``confirm`` checks, once, to one node."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from signaling.bus import LocalBus, node_channel, room_owner_key
from signaling.owner_watch import OwnerWatch, RedisOwnerProbe
from signaling.placement import LocalPlacement
from signaling.registry import SocketRegistry

pytestmark = pytest.mark.redis


def node(name: str, *calls: str) -> SocketRegistry:
    """A node's registry holding sockets of ``calls`` (the watch reads only which calls)."""
    registry = SocketRegistry(LocalBus(), LocalPlacement(name), name)
    for call_id in calls:
        registry.conns[call_id] = {}
    return registry


async def test_rooms_of_a_node_nobody_listens_for_are_cleared_once_after_confirmation(
    redis: Redis,
) -> None:
    tag = uuid.uuid4().hex[:8]
    live, dead = f"live-{tag}", f"dead-{tag}"
    on_dead, on_live, p2p = (str(uuid.uuid4()) for _ in range(3))
    await redis.set(room_owner_key(on_dead), dead, px=60_000)
    await redis.set(room_owner_key(on_live), live, px=60_000)
    listener = redis.pubsub()
    await listener.subscribe(node_channel(live))  # the live node's bus
    told: list[tuple[str, str, str]] = []

    def watch(registry: SocketRegistry) -> OwnerWatch:
        async def lost(call_id: str, owner: str) -> None:
            told.append((registry.node_id, call_id, owner))

        return OwnerWatch(registry, RedisOwnerProbe(redis), lost, confirm=2)

    first = watch(node(f"a-{tag}", on_dead, on_live, p2p))
    second = watch(node(f"b-{tag}", on_dead))
    try:
        assert await first.check() == [] and await second.check() == []  # not confirmed yet
        assert await redis.get(room_owner_key(on_dead)) == dead.encode()
        assert await first.check() == [on_dead]
        assert await second.check() == []  # the first node cleared it: it tells everyone
        assert told == [(f"a-{tag}", on_dead, dead)]
        assert await redis.get(room_owner_key(on_dead)) is None
        assert await redis.get(room_owner_key(on_live)) == live.encode()
        # The room placed anew on a live node is left alone from then on.
        await redis.set(room_owner_key(on_dead), live, px=60_000)
        assert await first.check() == [] and await first.check() == []
        assert len(told) == 1
    finally:
        await listener.aclose()
        await redis.delete(room_owner_key(on_dead), room_owner_key(on_live))


async def test_a_node_that_listens_again_before_confirmation_keeps_its_rooms(
    redis: Redis,
) -> None:
    tag = uuid.uuid4().hex[:8]
    owner = f"blip-{tag}"
    call_id = str(uuid.uuid4())
    await redis.set(room_owner_key(call_id), owner, px=60_000)
    told: list[str] = []

    async def lost(call: str, _owner: str) -> None:
        told.append(call)

    watch = OwnerWatch(node(f"w-{tag}", call_id), RedisOwnerProbe(redis), lost, confirm=2)
    listener = redis.pubsub()
    try:
        assert await watch.check() == []  # silent once: a Redis reconnect, say
        await listener.subscribe(node_channel(owner))
        assert await watch.check() == []
        await listener.unsubscribe(node_channel(owner))
        assert await watch.check() == []  # the count started over
        assert told == [] and await redis.get(room_owner_key(call_id)) == owner.encode()
    finally:
        await listener.aclose()
        await redis.delete(room_owner_key(call_id))


async def test_a_node_does_not_watch_its_own_rooms(redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    me = f"me-{tag}"
    call_id = str(uuid.uuid4())
    registry = node(me, call_id)
    await registry.placement.claim(call_id)
    await redis.set(room_owner_key(call_id), me, px=60_000)

    async def lost(call: str, _owner: str) -> None:
        raise AssertionError(f"{call} is this node's own room")

    watch = OwnerWatch(registry, RedisOwnerProbe(redis), lost, confirm=1)
    try:
        assert await watch.check() == []
    finally:
        await redis.delete(room_owner_key(call_id))
