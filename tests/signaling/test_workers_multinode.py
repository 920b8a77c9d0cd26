"""Two ``huddle serve --workers 2`` nodes on one Redis and one Postgres: a burst of
rooms spreads over the nodes (placement by node load, which sums the workers')
and, within each node, over its workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from signaling.bus import room_owner_key
from signaling.client import SignalingClient
from signaling.load import NODES_KEY
from tests.signaling.cluster import Cluster, cluster
from tests.support.api import Api
from tests.support.polling import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, nodes=2, HUDDLE_WORKERS="2", HUDDLE_NODE_TTL="3") as running:
        yield running


async def rooms_on(session: aiohttp.ClientSession, want: int) -> bool:
    """Whether the node's workers hold ``want`` rooms in all."""
    async with session.get("/metrics") as response:
        text = await response.text()
    return (
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("video_call_sfu_rooms_active{")
        )
        == want
    )


async def test_rooms_spread_over_the_nodes_and_their_workers(
    two_nodes: Cluster, redis: Redis
) -> None:
    nodes = two_nodes.nodes
    sessions = [aiohttp.ClientSession(base_url=n.base_url) for n in nodes]
    api = Api(sessions[0])  # type: ignore[arg-type]
    sockets: list[SignalingClient] = []
    try:
        calls: list[str] = []
        placed: dict[str, int] = {}
        for i in range(4):
            users = await api.users(f"a{i}", f"b{i}", f"c{i}")
            call = await api.group_call(users[0], *users[1:])
            call_id = str(call["call_id"])
            calls.append(call_id)
            sock = await SignalingClient.open(nodes[0].base_url, call_id, users[0].token)
            sockets.append(sock)
            await sock.send({"type": "subscribe", "target_id": "sfu"})
            owner = await eventually(lambda c=call_id: redis.get(room_owner_key(c)), timeout=15)
            name = owner.decode()
            placed[name] = placed.get(name, 0) + 1
            # Its node's workers hold it before the next room is placed.
            index = next(k for k, n in enumerate(nodes) if n.name == name)
            await eventually(
                lambda k=index, want=placed[name]: rooms_on(sessions[k], want),
                timeout=15,
                message=f"room {i} on {name}'s workers",
            )
        assert sorted(placed.values()) == [2, 2], placed

        async def one_room_per_worker() -> bool:
            for session in sessions:
                async with session.get("/metrics") as response:
                    text = await response.text()
                for worker in ("0", "1"):
                    if f'video_call_sfu_rooms_active{{worker="{worker}"}} 1.0' not in text:
                        return False
            return True

        await eventually(one_room_per_worker, timeout=15, message="each worker has one room")

        async def loads_summed() -> bool:
            raw = await redis.hgetall(NODES_KEY)  # type: ignore[misc]
            loads = {k.decode(): json.loads(v) for k, v in raw.items()}
            return all(loads.get(n.name, {}).get("participants") == 2 for n in nodes)

        await eventually(loads_summed, timeout=15, message="node loads sum their workers'")
    finally:
        for sock in sockets:
            await sock.close()
        for session in sessions:
            await session.close()
