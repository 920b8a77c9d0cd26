"""Where a participant's media lives when rooms span nodes (signaling/span.py), over
the real Redis: several nodes' SpanPlacement share one nodes hash and one call."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from server.config import SpanConfig
from signaling.load import PUBLISH
from signaling.span import SpanPlacement, media_key

pytestmark = pytest.mark.redis


@pytest.fixture
async def nodes_key(redis: Redis) -> AsyncIterator[str]:
    key = f"test:nodes:{uuid.uuid4().hex}"
    yield key
    await redis.delete(key)


@pytest.fixture
async def call_id(redis: Redis) -> AsyncIterator[str]:
    call = str(uuid.uuid4())
    yield call
    await redis.delete(media_key(call))


async def live(redis: Redis, key: str, node: str, expected: int = 0, **extra: object) -> None:
    load = {"participants": expected, "expected": expected, "pps": 0, "cpu": 0, **extra}
    await redis.eval(PUBLISH, 1, key, node, json.dumps(load))  # type: ignore[misc]


def placements(redis: Redis, key: str, span: SpanConfig, *names: str) -> dict[str, SpanPlacement]:
    return {n: SpanPlacement(redis, n, span, ttl_s=3, nodes_key=key) for n in names}


async def test_a_room_grows_on_its_owner_and_spills_over_past_the_limit(
    redis: Redis, nodes_key: str, call_id: str
) -> None:
    for node, load in (("a", 0), ("b", 5), ("c", 1)):
        await live(redis, nodes_key, node, load)
    at = placements(redis, nodes_key, SpanConfig(node_limit=2), "a", "b", "c")
    # The owner (a) takes the first two, whichever node their sockets are on.
    assert await at["b"].media_node(call_id, "p1", "a") == "a"
    assert await at["c"].media_node(call_id, "p2", "a") == "a"
    # Full: the socket's own node, while it is under the limit.
    assert await at["b"].media_node(call_id, "p3", "a") == "b"
    assert await at["b"].media_node(call_id, "p4", "a") == "b"
    # Owner and socket node full: the live node with the fewest of the room (c).
    assert await at["b"].media_node(call_id, "p5", "a") == "c"
    # Asked again, each keeps its node.
    assert await at["c"].media_node(call_id, "p3", "a") == "b"
    assert await at["b"].nodes(call_id) == {"a", "b", "c"}
    await at["a"].forget(call_id, "p1")
    assert await at["c"].media_node(call_id, "p6", "a") == "a"  # room on a again
    await at["a"].forget_call(call_id)
    assert await redis.exists(media_key(call_id)) == 0


async def test_no_limit_keeps_everyone_on_the_owner_and_local_on_their_socket_node(
    redis: Redis, nodes_key: str, call_id: str
) -> None:
    await live(redis, nodes_key, "a")
    await live(redis, nodes_key, "b")
    owner = placements(redis, nodes_key, SpanConfig(node_limit=0), "b")["b"]
    assert not SpanConfig(node_limit=0).enabled
    for pid in ("p1", "p2", "p3"):
        assert await owner.media_node(call_id, pid, "a") == "a"
    await redis.delete(media_key(call_id))
    local = placements(redis, nodes_key, SpanConfig(policy="local"), "a", "b")
    assert await local["b"].media_node(call_id, "p1", "a") == "b"
    assert await local["a"].media_node(call_id, "p2", "a") == "a"


async def test_a_participant_on_a_dead_node_is_placed_anew(
    redis: Redis, nodes_key: str, call_id: str
) -> None:
    await live(redis, nodes_key, "a")
    await live(redis, nodes_key, "c", 3)
    at = placements(redis, nodes_key, SpanConfig(node_limit=1), "a", "c")
    # p1 was on node b, which died (no load in the hash any more).
    await redis.hset(media_key(call_id), "p1", "b")  # type: ignore[misc]
    await redis.hset(media_key(call_id), "p0", "a")  # type: ignore[misc]
    # The owner is full (p0), the socket node c is free: there.
    assert await at["c"].media_node(call_id, "p1", "a") == "c"
    # Past the limit everywhere, the node with the fewest of the room: a draining
    # node (d, none of the room) takes nobody new, so a (one) rather than c (two).
    await live(redis, nodes_key, "d", 0, draining=True)
    await redis.hset(media_key(call_id), "p2", "c")  # type: ignore[misc]
    assert await at["a"].media_node(call_id, "p3", "a") == "a"


async def test_nodes_write_their_participants_back_when_redis_lost_them(
    redis: Redis, nodes_key: str, call_id: str
) -> None:
    await live(redis, nodes_key, "a")
    await live(redis, nodes_key, "b")
    at = placements(redis, nodes_key, SpanConfig(policy="local"), "a", "b")
    assert await at["a"].media_node(call_id, "p1", "a") == "a"
    assert await at["b"].media_node(call_id, "p2", "a") == "b"
    await redis.delete(media_key(call_id))  # a Redis that restarted empty
    assert await at["a"].nodes(call_id, ["p1"]) == {"a"}
    assert await at["b"].nodes(call_id, ["p2", "p1"]) == {"a", "b"}  # p1 stays a's
    assert await redis.hget(media_key(call_id), "p1") == b"a"  # type: ignore[misc]
    assert await redis.pttl(media_key(call_id)) > 0
