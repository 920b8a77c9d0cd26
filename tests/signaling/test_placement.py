"""SFU room placement over the real Redis: a claim Redis lost is written back."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from signaling.bus import room_owner_key
from signaling.placement import RedisPlacement
from tests.signaling.cluster import check_redis
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.redis


async def test_a_room_claim_lost_with_redis_is_written_back_unless_taken() -> None:
    check_redis()
    redis = Redis.from_url(REDIS_URL)
    lost: list[str] = []

    async def on_lost(call_id: str) -> None:
        lost.append(call_id)

    # A hash of node loads of its own: nodes of other tests must not take the room.
    nodes_key = f"huddle:test-nodes:{uuid.uuid4().hex}"
    mine = RedisPlacement(redis, "node-a", on_lost, ttl_s=30, nodes_key=nodes_key)
    other = RedisPlacement(redis, "node-b", on_lost, ttl_s=30, nodes_key=nodes_key)
    call_id = str(uuid.uuid4())
    key = room_owner_key(call_id)
    try:
        assert await mine.claim(call_id) == "node-a"
        await redis.delete(key)  # what a Redis restarted empty looks like
        await mine.refresh()
        assert await redis.get(key) == b"node-a"
        assert 0 < await redis.pttl(key) <= 30_000
        assert lost == [] and call_id in mine.owned
        assert await other.claim(call_id) == "node-a"  # still placed: no second room

        await redis.delete(key)
        assert await other.claim(call_id) == "node-b"  # someone else got there first
        await mine.refresh()
        assert lost == [call_id] and call_id not in mine.owned
        assert await redis.get(key) == b"node-b"
    finally:
        await redis.delete(key)
        await redis.aclose()
