"""Load-aware room placement over the real Redis: several placement instances (as
several nodes would run) share one nodes hash, and the Lua script places each
room that has no owner on the least-loaded live node that is not draining."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from signaling.bus import room_owner_key
from signaling.load import LoadMeter, MediaLoad
from signaling.placement import NoNodeAvailable, RedisPlacement
from tests.signaling.cluster import check_redis
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.redis


@dataclass
class FakeMedia:
    """What an SFU would report: participants per room, packets forwarded."""

    sizes: dict[str, int] = field(default_factory=dict)
    packets: int = 0

    def __call__(self) -> MediaLoad:
        return MediaLoad(dict(self.sizes), self.packets)


@dataclass
class Nodes:
    redis: Redis
    key: str
    placements: dict[str, RedisPlacement] = field(default_factory=dict)
    media: dict[str, FakeMedia] = field(default_factory=dict)
    rooms: list[str] = field(default_factory=list)

    def add(self, node_id: str, *, cpu: list[float] | None = None) -> RedisPlacement:
        async def on_lost(call_id: str) -> None:
            pass

        media = self.media[node_id] = FakeMedia()
        clock = iter(float(i) for i in range(10_000))
        cpu_clock = iter(cpu) if cpu is not None else iter([0.0] * 10_000)
        meter = LoadMeter(media, clock=lambda: next(clock), cpu_clock=lambda: next(cpu_clock))
        placement = RedisPlacement(self.redis, node_id, on_lost, meter=meter, nodes_key=self.key)
        self.placements[node_id] = placement
        return placement

    def room(self) -> str:
        call_id = str(uuid.uuid4())
        self.rooms.append(call_id)
        return call_id

    async def publish(self) -> None:
        for placement in self.placements.values():
            await placement.publish_load()

    async def loads(self) -> dict[str, dict[str, object]]:
        raw = await self.redis.hgetall(self.key)  # type: ignore[misc]
        return {k.decode(): json.loads(v) for k, v in raw.items()}


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    check_redis()
    redis = Redis.from_url(REDIS_URL)
    running = Nodes(redis, f"huddle:test-nodes:{uuid.uuid4().hex}")
    try:
        yield running
    finally:
        for placement in running.placements.values():
            await placement.close()
        if running.rooms:
            await redis.delete(*[room_owner_key(c) for c in running.rooms])
        await redis.delete(running.key)
        await redis.aclose()


async def test_a_room_goes_to_the_least_loaded_node(nodes: Nodes) -> None:
    a, b, c = nodes.add("node-a"), nodes.add("node-b"), nodes.add("node-c")
    busy = nodes.room()
    assert await a.claim(busy) == "node-a"
    nodes.media["node-a"].sizes[busy] = 8  # node-a carries a room of 8
    other = nodes.room()
    assert await b.claim(other) == "node-b"
    nodes.media["node-b"].sizes[other] = 3
    await nodes.publish()
    loads = await nodes.loads()
    assert loads["node-a"]["participants"] == 8 and loads["node-a"]["rooms"] == 1
    assert loads["node-c"]["participants"] == 0

    # Asked on the busiest node, the new room goes to the idle one.
    new = nodes.room()
    assert await a.claim(new, size_hint=4) == "node-c"
    assert new not in a.owned and new not in c.owned  # node-c adopts it on its first message
    assert await nodes.redis.get(room_owner_key(new)) == b"node-c"
    assert await c.adopt(new, size_hint=4) and new in c.owned
    assert not await b.adopt(new)  # not b's
    # The claim weighed node-c by the room's size hint at once: 4 > 3 on node-b.
    assert await a.claim(nodes.room(), size_hint=2) == "node-b"
    # And node-c's own heartbeat keeps counting the room at its hint until people arrive.
    await c.publish_load()
    assert (await nodes.loads())["node-c"]["expected"] == 4


async def test_a_burst_of_rooms_spreads_over_the_nodes_between_heartbeats(nodes: Nodes) -> None:
    for node_id in ("node-a", "node-b", "node-c"):
        nodes.add(node_id)
    await nodes.publish()
    asking = nodes.placements["node-a"]
    owners = [await asking.claim(nodes.room(), size_hint=5) for _ in range(9)]
    assert {owner: owners.count(owner) for owner in set(owners)} == {
        "node-a": 3,
        "node-b": 3,
        "node-c": 3,
    }


async def test_racing_claims_of_one_room_yield_one_owner(nodes: Nodes) -> None:
    placements = [nodes.add(f"node-{i}") for i in range(8)]
    await nodes.publish()
    for _ in range(5):
        call_id = nodes.room()
        owners = await asyncio.gather(*(p.claim(call_id, size_hint=3) for p in placements))
        assert len(set(owners)) == 1, owners
        owner = owners[0]
        assert await nodes.redis.get(room_owner_key(call_id)) == owner.encode()
        holders = [p for p in placements if call_id in p.owned]
        assert len(holders) == 1  # exactly one node holds it
        assert call_id in nodes.placements[owner].owned
    # Every claim of a room bumped one node's load once, not once per racer.
    total = sum(int(str(load["expected"])) for load in (await nodes.loads()).values())
    assert total == 5 * 3


async def test_draining_and_dead_nodes_are_never_chosen(nodes: Nodes) -> None:
    a, b = nodes.add("node-a"), nodes.add("node-b")
    idle = nodes.add("node-idle")
    busy = nodes.room()
    assert await a.claim(busy) == "node-a"
    nodes.media["node-a"].sizes[busy] = 5
    await nodes.publish()
    await idle.set_draining()
    assert (await nodes.loads())["node-idle"]["draining"] is True
    # A dead node's entry: its last heartbeat is older than the room TTL.
    await nodes.redis.hset(  # type: ignore[misc]
        nodes.key, "node-dead", json.dumps({"expected": 0, "at": 1})
    )

    assert await a.claim(nodes.room()) == "node-b"
    assert "node-dead" not in await nodes.loads()  # dropped by the placement
    # A draining node asking places elsewhere, even though it is the least loaded...
    assert await idle.claim(nodes.room()) in {"node-a", "node-b"}
    # ... keeps the rooms it has ...
    assert await idle.claim(busy) == "node-a"
    # ... and when every node drains, nobody takes a new room.
    await a.set_draining()
    await b.set_draining()
    with pytest.raises(NoNodeAvailable):
        await idle.claim(nodes.room())


async def test_packets_and_cpu_weigh_in_the_load(nodes: Nodes) -> None:
    # node-a: one core busy (1 s of CPU per second), node-b idle; equal participants.
    hot = nodes.add("node-hot", cpu=[0.0, 0.0, 1.0, 2.0])
    nodes.add("node-cool")
    await nodes.publish()  # first samples: rates still 0
    nodes.media["node-cool"].packets = 3000  # 3000 pps is worth 3 participants
    await nodes.publish()
    loads = await nodes.loads()
    assert loads["node-hot"]["cpu"] == 100.0 and loads["node-cool"]["pps"] == 3000.0
    # 100 % CPU (score 10) weighs more than 3000 pps (score 3).
    assert await hot.claim(nodes.room()) == "node-cool"


async def test_without_any_published_load_the_asking_node_takes_the_room(nodes: Nodes) -> None:
    a = nodes.add("node-a")
    nodes.add("node-b")
    # Nothing published (Redis lost the hash): placement falls back to the asking node.
    call_id = nodes.room()
    assert await a.claim(call_id) == "node-a" and call_id in a.owned


async def test_a_node_that_drains_before_adopting_a_room_gives_it_back(nodes: Nodes) -> None:
    a, b, c = nodes.add("node-a"), nodes.add("node-b"), nodes.add("node-c")
    busy = nodes.room()
    assert await a.claim(busy) == "node-a"
    nodes.media["node-a"].sizes[busy] = 9  # node-a is busy: the new room goes elsewhere
    await nodes.publish()
    call_id = nodes.room()
    placed = await a.claim(call_id, size_hint=3)
    late = nodes.placements[placed]
    await late.set_draining()  # before its first message for the room arrived
    assert not await late.adopt(call_id, size_hint=3)
    assert await nodes.redis.get(room_owner_key(call_id)) is None  # given back
    again = await a.claim(call_id, size_hint=3)
    assert again not in {placed, "node-a"} and again in {"node-b", "node-c"}
    assert {p for p in (a, b, c) if call_id in p.owned} <= {nodes.placements[again]}
