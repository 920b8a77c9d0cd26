"""Load-aware placement and drain with three ``huddle serve`` processes on one Redis
and one Postgres, and real aiortc peers (the load tester's ``SignaledPeer``).

- Rooms placed in a burst spread over the nodes (each placement weighs the
  chosen node by the room's size hint at once).
- Draining a room's node (``POST /v1/admin/drain``) moves nothing while the
  drain timeout runs: media keeps flowing there, new rooms go elsewhere, the
  node reports ``draining``. At the timeout the participants get
  ``reconnect``, their peers reopen the socket on another node and republish,
  media flows again through the room placed anew, the call never ends and
  nobody leaves; the drained node exits.
- SIGTERM drains too, and a node whose rooms empty stops before the timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from signaling.bus import room_owner_key
from signaling.client import SignalingClient
from signaling.load import NODES_KEY
from tests.signaling.cluster import Cluster, cluster
from tests.signaling.multinode import (
    ADMIN_TOKEN,
    Http,
    exited,
    frames,
    join_and_publish,
    owner_of,
    receives,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


GRACE_S = 2.0
DRAIN_S = 8.0


def nodes_env(drain_s: float) -> dict[str, str]:
    return {
        "HUDDLE_DISCONNECT_GRACE": str(GRACE_S),
        "HUDDLE_NODE_TTL": "3",
        "HUDDLE_ICE_HOSTS": "127.0.0.1",
        "HUDDLE_ADMIN_TOKEN": ADMIN_TOKEN,
        "HUDDLE_DRAIN_TIMEOUT": str(drain_s),
    }


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, nodes=3, **nodes_env(DRAIN_S)) as running:
        yield running


async def test_a_burst_of_rooms_spreads_over_the_nodes(three_nodes: Cluster, redis: Redis) -> None:
    http = Http(three_nodes)
    sockets: list[SignalingClient] = []
    try:
        calls = [await http.sfu_call((f"a{i}", f"b{i}", f"c{i}")) for i in range(3)]
        # Everyone asks node 1: each room goes to the least-loaded node.
        for call_id, users in calls:
            sock = await SignalingClient.open(http.nodes[0].base_url, call_id, users[0].token)
            sockets.append(sock)
            await sock.send({"type": "subscribe", "target_id": "sfu"})
            await owner_of(redis, call_id)
        owners = [await owner_of(redis, call_id) for call_id, _ in calls]
        assert sorted(owners) == sorted(n.name for n in http.nodes), owners

        async def each_node_hosts_its_room() -> bool:
            loads = {
                k.decode(): json.loads(v)
                for k, v in (await redis.hgetall(NODES_KEY)).items()  # type: ignore[misc]
            }
            return all(
                loads.get(node.name, {}).get("participants") == 1
                and loads[node.name]["expected"] == 3
                and loads[node.name]["draining"] is False
                for node in http.nodes
            )

        # Each owner adopted its room (the subscribe reached it) and counts it at its hint.
        await eventually(each_node_hosts_its_room, timeout=15, message="loads published")
    finally:
        for sock in sockets:
            await sock.close()
        await http.close()


async def test_a_drained_node_keeps_its_room_until_the_timeout_then_media_resumes_elsewhere(
    three_nodes: Cluster,
    redis: Redis,
    clips: tuple[EncodedClip, EncodedClip],
    restricted_ice: None,
) -> None:
    http = Http(three_nodes)
    peers: list[SignaledPeer] = []
    try:
        call_id, (ana, bob, _cyd) = await http.sfu_call(("ana", "bob", "cyd"))
        drained: list[int] = []  # filled once the room is placed

        def elsewhere(start: int) -> str:
            candidates = [i for i in range(3) if i not in drained]
            return http.nodes[candidates[start % len(candidates)]].base_url

        users_ = (ana, bob)
        await join_and_publish(
            http, call_id, users_, range(len(users_)), clips, peers, reconnect_url=elsewhere
        )
        a, b = peers
        await eventually(lambda: receives(a, bob.user_id) and receives(b, ana.user_id), timeout=30)
        owner = await owner_of(redis, call_id)
        doomed = http.ids[owner]
        drained.append(doomed)

        await http.drain(doomed)
        status, report = await http.ready(doomed)
        assert status == 503 and report["draining"] is True
        # A new room is placed elsewhere while the drain runs.
        other_id, others = await http.sfu_call(("dan", "eve", "fay"))
        sock = await SignalingClient.open(http.nodes[doomed].base_url, other_id, others[0].token)
        try:
            await sock.send({"type": "subscribe", "target_id": "sfu"})
            assert await owner_of(redis, other_id) != owner
        finally:
            await sock.close()
        # The live room does not move before the timeout: media keeps flowing on its node.
        seen = frames(a, bob.user_id)
        await eventually(lambda: frames(a, bob.user_id) > seen + 30, timeout=DRAIN_S / 2)
        assert await redis.get(room_owner_key(call_id)) == owner.encode()
        assert a.reconnects == b.reconnects == 0

        # At the timeout: reconnect, republish, placed anew on a live node, media again.
        for peer in peers:
            await peer.wait_resumed(timeout=DRAIN_S + 30)
        new_owner = await owner_of(redis, call_id)
        assert new_owner != owner
        moved_at = time.monotonic()
        await eventually(
            lambda: receives(a, bob.user_id) and receives(b, ana.user_id),
            timeout=30,
            message="media flows again after the move",
        )
        print(f"media flowing again {time.monotonic() - moved_at:.1f} s after the move")
        await eventually(lambda: exited(http.nodes[doomed]), timeout=30, message="node exits")
        assert http.nodes[doomed].process.returncode == 0, http.nodes[doomed].tail()
        assert "drain: done; 1 room(s) released" in http.nodes[doomed].log()

        # Nobody left, the call never ended, also once the grace period and node TTL passed.
        await asyncio.sleep(GRACE_S + 3 + 1)  # a negative needs time to pass
        live = next(i for i in range(3) if i != doomed)
        call = await http.api[live].status(call_id, ana)
        assert call["status"] == "active"
        assert all(p["left_at"] is None for p in call["participants"]), call["participants"]
        assert [f for p in peers for f in p.failures if "reconnect failed" in f] == []
    finally:
        for peer in peers:
            await peer.close()
        await http.close()


@pytest.fixture
def two_nodes_long_drain(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, nodes=2, **nodes_env(600)) as running:
        yield running


async def test_sigterm_drains_and_the_node_stops_once_its_rooms_empty(
    two_nodes_long_drain: Cluster, redis: Redis
) -> None:
    http = Http(two_nodes_long_drain)
    sockets: list[SignalingClient] = []
    try:
        call_id, (ana, bob, _cyd) = await http.sfu_call(("ana", "bob", "cyd"))
        for user in (ana, bob):
            sockets.append(await SignalingClient.open(http.nodes[0].base_url, call_id, user.token))
        await sockets[0].send({"type": "subscribe", "target_id": "sfu"})
        owner = await owner_of(redis, call_id)
        doomed = http.ids[owner]
        node = http.nodes[doomed]
        node.process.terminate()  # SIGTERM: drain, for up to 600 s

        async def draining() -> bool:
            status, report = await http.ready(doomed)
            return status == 503 and report["draining"] is True

        await eventually(draining, timeout=10)
        await asyncio.sleep(1.0)  # a negative needs time to pass
        assert not exited(node)
        # Ana leaves the call: the room empties (bob and cyd stay in the call).
        await http.api[1 - doomed].action(call_id, "leave", ana)
        await eventually(lambda: exited(node), timeout=30, message="the drained node stops")
        assert node.process.returncode == 0, node.tail()
        call = await http.api[1 - doomed].status(call_id, bob)
        assert call["status"] == "active"
    finally:
        for sock in sockets:
            await sock.close()
        await http.close()
