"""One room across two or three ``huddle serve`` processes on one Redis and one Postgres,
with real aiortc peers (the load tester's ``SignaledPeer``).

``HUDDLE_ROOM_SPAN=local`` puts each participant's media on the node its socket is
on: ana on node 1, bob and cyd on node 2. Everyone receives everyone; ana's tracks
cross to node 2 once, although two subscribers receive them there (counted by the
relay metrics of both nodes against what the subscribers received); leaving frees
the relay on both nodes. With the default policy and a limit of one per node, a
room of three spreads over three nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from signaling.span import media_key
from tests.signaling.cluster import Cluster, cluster
from tests.signaling.multinode import (
    ADMIN_TOKEN,
    Http,
    everyone_receives,
    exited,
    join_and_publish,
    receives,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Cluster]:
    env = {
        "HUDDLE_ROOM_SPAN": "local",
        "HUDDLE_ICE_HOSTS": "127.0.0.1",
        "HUDDLE_NODE_TTL": "3",
    }
    with cluster(tmp_path, nodes=2, **env) as running:
        yield running


async def scrape(session: aiohttp.ClientSession) -> dict[str, float]:
    """The node's metric samples by name with labels (``name{labels}``)."""
    async with session.get("/metrics") as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def relay(samples: dict[str, float], direction: str, kind: str) -> float:
    key = f'video_call_sfu_relay_packets_total{{direction="{direction}",kind="{kind}"}}'
    return samples.get(key, 0.0)


async def test_a_room_spans_two_nodes_and_each_track_crosses_once(
    two_nodes: Cluster, clips: tuple[EncodedClip, EncodedClip], restricted_ice: None
) -> None:
    http = Http(two_nodes)
    peers: list[SignaledPeer] = []
    try:
        call_id, users = await http.sfu_call(("ana", "bob", "cyd"))
        ids = [u.user_id for u in users]
        homes = [0, 1, 1]  # ana on node 1; bob and cyd on node 2
        await join_and_publish(http, call_id, users, homes, clips, peers)

        await eventually(
            lambda: everyone_receives(peers, ids, more_than=30),
            timeout=40,
            message="media across the nodes",
        )
        ana = ids[0]

        def subscribers_got() -> list[int]:
            counts = [peers[i].packet_counts().get((ana, "video")) for i in (1, 2)]
            return [c.received if c is not None else 0 for c in counts]

        # Over the same stretch, once everyone's subscriptions run: what crossed vs
        # what each of node 2's two subscribers received.
        start_a, start_b = await scrape(http.sessions[0]), await scrape(http.sessions[1])
        start_got = subscribers_got()
        await eventually(
            lambda: min(g - s for g, s in zip(subscribers_got(), start_got, strict=True)) >= 150,
            timeout=20,
            message="150 more packets of ana's video at bob and cyd",
        )
        a, b = await scrape(http.sessions[0]), await scrape(http.sessions[1])
        got = [g - s for g, s in zip(subscribers_got(), start_got, strict=True)]
        out_a = relay(a, "out", "video") - relay(start_a, "out", "video")
        in_b = relay(b, "in", "video") - relay(start_b, "in", "video")
        print(
            f"ana's video meanwhile: {out_a:.0f} packets relayed out of node 1, {in_b:.0f} "
            f"into node 2; bob received {got[0]}, cyd {got[1]}"
        )
        # Each packet of ana's video crossed once: about what one subscriber on node 2
        # received (they are read a moment apart), not the two subscribers' sum.
        assert out_a > 0 and in_b > 0
        assert out_a < 1.25 * max(got), (out_a, got)
        assert out_a < 0.7 * sum(got), (out_a, got)
        assert in_b <= out_a + 5
        # Node 2 sent node 1 its two publishers' video, each once.
        assert relay(b, "out", "video") > 0 and relay(a, "in", "video") > 0
        assert a.get("video_call_sfu_relay_links") == 1.0
        assert b.get("video_call_sfu_relay_links") == 1.0
        # None forged, replayed or malformed (a stream's first packets may arrive before
        # its state: unknown_stream, unknown_peer).
        drops = {
            k: v for k, v in {**a, **b}.items() if k.startswith("video_call_sfu_relay_dropped")
        }
        print("relay drops:", drops)
        for reason in ("auth", "replay", "malformed", "short", "magic"):
            assert not any(f'reason="{reason}"' in k and v for k, v in drops.items()), drops

        # Bob and cyd leave: node 2's room closes, and node 1 stops relaying.
        for index in (1, 2):
            await http.api[1].action(call_id, "leave", users[index])

        async def released() -> bool:
            first, second = await scrape(http.sessions[0]), await scrape(http.sessions[1])
            return (
                first.get("video_call_sfu_relay_links") == 0.0
                and second.get("video_call_sfu_relay_links", 0.0) == 0.0
                and second.get("video_call_sfu_rooms_active") == 0.0
            )

        await eventually(released, timeout=10, message="relay state released on both nodes")
        # Ana still publishes, but nothing of it crosses any more: two readings agree.
        last = [-1.0]

        async def relay_stopped() -> bool:
            now = relay(await scrape(http.sessions[0]), "out", "video")
            same, last[0] = now == last[0], now
            return same

        await eventually(relay_stopped, timeout=5, message="node 1 stops relaying ana's video")
    finally:
        for peer in peers:
            await peer.close()
        await http.close()


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[Cluster]:
    env = {
        "HUDDLE_ROOM_NODE_LIMIT": "1",  # the default policy (owner), spilling at once
        "HUDDLE_ICE_HOSTS": "127.0.0.1",
        "HUDDLE_NODE_TTL": "3",
    }
    with cluster(tmp_path, nodes=3, **env) as running:
        yield running


async def test_a_room_that_outgrows_its_owner_spreads_over_three_nodes(
    three_nodes: Cluster,
    redis: Redis,
    clips: tuple[EncodedClip, EncodedClip],
    restricted_ice: None,
) -> None:
    http = Http(three_nodes)
    peers: list[SignaledPeer] = []
    try:
        call_id, users = await http.sfu_call(("ana", "bob", "cyd"))
        ids = [u.user_id for u in users]
        await join_and_publish(http, call_id, users, range(len(users)), clips, peers)

        await eventually(
            lambda: everyone_receives(peers, ids), timeout=45, message="media across three nodes"
        )
        # One media participant per node (the limit), wherever the sockets are.
        media = await redis.hgetall(media_key(call_id))  # type: ignore[misc]
        assert len(media) == 3 and len(set(media.values())) == 3, media
        samples = [await scrape(s) for s in http.sessions]
        for node in samples:
            assert node.get("video_call_sfu_relay_links") == 2.0  # the two others
            assert node.get("video_call_sfu_participants_active") == 1.0
            # Its publisher's video out to two nodes, the two others' in.
            assert relay(node, "out", "video") > 0 and relay(node, "in", "video") > 0

        # The call ends: every node closes its part, nothing is relayed any more, and
        # the media nodes are forgotten.
        await http.api[0].action(call_id, "end", users[0])

        async def all_released() -> bool:
            for session in http.sessions:
                node = await scrape(session)
                if node.get("video_call_sfu_relay_links") or node.get(
                    "video_call_sfu_rooms_active"
                ):
                    return False
            return True

        await eventually(all_released, timeout=10, message="every node's part released")

        async def forgotten() -> bool:
            return await redis.exists(media_key(call_id)) == 0

        await eventually(forgotten, timeout=5, message="the call's media nodes forgotten")
    finally:
        for peer in peers:
            await peer.close()
        await http.close()


@pytest.fixture
def two_draining_nodes(tmp_path: Path) -> Iterator[Cluster]:
    env = {
        "HUDDLE_ROOM_SPAN": "local",
        "HUDDLE_ICE_HOSTS": "127.0.0.1",
        "HUDDLE_NODE_TTL": "3",
        "HUDDLE_ADMIN_TOKEN": ADMIN_TOKEN,
        "HUDDLE_DRAIN_TIMEOUT": "2",
    }
    with cluster(tmp_path, nodes=2, **env) as running:
        yield running


async def test_draining_a_node_with_part_of_a_room_moves_its_participants_to_the_rest(
    two_draining_nodes: Cluster, clips: tuple[EncodedClip, EncodedClip], restricted_ice: None
) -> None:
    http = Http(two_draining_nodes)
    peers: list[SignaledPeer] = []
    try:
        call_id, users = await http.sfu_call(("ana", "bob", "cyd"))
        ids = [u.user_id for u in users]
        await join_and_publish(
            http,
            call_id,
            users,
            (0, 1, 1),
            clips,
            peers,
            reconnect_url=lambda i: http.nodes[0].base_url,
        )

        await eventually(
            lambda: everyone_receives(peers, ids), timeout=40, message="media across the nodes"
        )
        await http.drain(1)  # node 2: bob's and cyd's media
        for peer in peers[1:]:
            await peer.wait_resumed(timeout=30)
        assert [p.reconnects for p in peers] == [0, 1, 1]
        await eventually(
            lambda: everyone_receives(peers, ids), timeout=30, message="media again, all on node 1"
        )
        await eventually(lambda: exited(http.nodes[1]), timeout=30, message="node 2 exits")
        node = await scrape(http.sessions[0])
        assert node.get("video_call_sfu_relay_links") == 0.0
        assert node.get("video_call_sfu_participants_active") == 3.0
    finally:
        for peer in peers:
            await peer.close()
        await http.close()


@pytest.fixture
def two_nodes_with_workers(tmp_path: Path) -> Iterator[Cluster]:
    env = {
        "HUDDLE_ROOM_SPAN": "local",
        "HUDDLE_ICE_HOSTS": "127.0.0.1",
        "HUDDLE_NODE_TTL": "3",
        "HUDDLE_WORKERS": "2",
    }
    with cluster(tmp_path, nodes=2, **env) as running:
        yield running


def summed(samples: dict[str, float], prefix: str) -> float:
    """A metric summed over its ``worker`` label (and any other)."""
    return sum(v for k, v in samples.items() if k.startswith(prefix + "{"))


async def test_a_room_spans_nodes_whose_media_runs_in_workers(
    two_nodes_with_workers: Cluster, clips: tuple[EncodedClip, EncodedClip], restricted_ice: None
) -> None:
    http = Http(two_nodes_with_workers)
    peers: list[SignaledPeer] = []
    try:
        call_id, users = await http.sfu_call(("ana", "bob", "cyd"))
        ids = [u.user_id for u in users[:2]]
        await join_and_publish(http, call_id, users[:2], (0, 1), clips, peers)
        await eventually(
            lambda: receives(peers[0], ids[1]) and receives(peers[1], ids[0]),
            timeout=40,
            message="media across the nodes' workers",
        )

        async def relayed_both_ways() -> bool:
            # (The workers' samples reach the front's /metrics with their load, each second.)
            for session in http.sessions:
                node = await scrape(session)
                if not summed(node, "video_call_sfu_relay_packets_total") or (
                    summed(node, "video_call_sfu_relay_links") != 1.0
                ):
                    return False
            return True

        await eventually(relayed_both_ways, timeout=10, message="relayed between the workers")
    finally:
        for peer in peers:
            await peer.close()
        await http.close()
