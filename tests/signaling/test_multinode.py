"""Two ``huddle serve`` processes, one Redis (through a cuttable proxy), one Postgres.

A participant on node 1 and one on node 2 negotiate through the Redis bus;
lifecycle events raised on one node reach sockets on the other; a reconnect on
the other node keeps the seat; a Redis outage degrades and then heals without
clients reconnecting.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from server.app import create_app
from signaling.bus import call_channel, node_channel
from signaling.client import SignalingClient
from signaling.keys import HUB
from tests.signaling.cluster import Cluster, check_redis, cluster
from tests.signaling.conftest import Node, signaling_config
from tests.signaling.messages import answer, candidate, end_of_candidates, offer
from tests.support.api import Api, User
from tests.support.clock import ManualClock
from tests.support.polling import eventually
from tests.support.services import REDIS_URL, postgres_schema

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

GRACE_S = 2.0


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(
        tmp_path_factory.mktemp("cluster"), HUDDLE_DISCONNECT_GRACE=str(GRACE_S)
    ) as running:
        yield running


class Sessions:
    def __init__(self, running: Cluster) -> None:
        self.http = [aiohttp.ClientSession(base_url=node.base_url) for node in running.nodes]
        self.api = [Api(session) for session in self.http]  # type: ignore[arg-type]
        self.urls = [node.base_url for node in running.nodes]
        self.clients: list[SignalingClient] = []

    async def ws(self, node: int, call_id: str, user: User, **options: Any) -> SignalingClient:
        client = await SignalingClient.open(self.urls[node], call_id, user.token, **options)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for session in self.http:
            await session.close()


@pytest.fixture
async def nodes(two_nodes: Cluster) -> AsyncIterator[Sessions]:
    sessions = Sessions(two_nodes)
    yield sessions
    await sessions.close()


async def call_between(nodes: Sessions, *names: str) -> tuple[str, list[User]]:
    users = await nodes.api[0].users(*names)
    call = await nodes.api[0].group_call(users[0], *users[1:])
    for index, user in enumerate(users[1:], 1):
        await nodes.api[index % 2].action(call["call_id"], "join", user)
    return str(call["call_id"]), users


async def test_offer_answer_ice_across_two_nodes(nodes: Sessions) -> None:
    call_id, (ana, bob) = await call_between(nodes, "ana", "bob")
    a = await nodes.ws(0, call_id, ana)
    await a.receive("participants")
    b = await nodes.ws(1, call_id, bob)
    roster = await b.receive("participants")
    assert {p["participant_id"] for p in roster["participants"]} == {ana.user_id, bob.user_id}
    # Presence crosses nodes: node 1 learns that bob is online on node 2.
    online = await a.receive("presence", timeout=10)
    assert (online["participant_id"], online["online"]) == (bob.user_id, True)

    await a.send(offer(bob.user_id, sender_id="forged"))
    got = await b.receive("offer", timeout=10)
    assert got["sender_id"] == ana.user_id and got["call_id"] == call_id
    await b.send(answer(ana.user_id))
    assert (await a.receive("answer", timeout=10))["sender_id"] == bob.user_id
    for _ in range(3):
        await a.send(candidate(bob.user_id))
        await b.send(candidate(ana.user_id))
    await a.send(end_of_candidates(bob.user_id))
    for _ in range(3):
        await b.receive("ice_candidate", timeout=10, where=lambda m: m["candidate"] is not None)
        await a.receive("ice_candidate", timeout=10)
    assert (await b.receive("ice_candidate", timeout=10))["candidate"] is None


async def test_targeted_messages_go_to_the_target_node_only(
    two_nodes: Cluster, nodes: Sessions
) -> None:
    call_id, (ana, bob) = await call_between(nodes, "ana", "bob")
    watcher = Redis.from_url(REDIS_URL)
    pubsub = watcher.pubsub()
    channels = [call_channel(call_id), node_channel(two_nodes.nodes[1].name)]
    await pubsub.subscribe(*channels)
    try:
        a = await nodes.ws(0, call_id, ana)
        b = await nodes.ws(1, call_id, bob)
        # Node 1 knows bob's node once it told ana that bob is online.
        await a.receive("presence", timeout=10, where=lambda m: m["online"])
        await a.send(offer(bob.user_id))
        assert (await b.receive("offer", timeout=10))["sender_id"] == ana.user_id
        seen: dict[str, list[dict[str, Any]]] = {channel: [] for channel in channels}
        while (message := await pubsub.get_message(timeout=0.5)) is not None:
            if message["type"] == "message":
                payload = json.loads(message["data"])  # one envelope or a list
                envelopes = payload if isinstance(payload, list) else [payload]
                seen[message["channel"].decode()].extend(envelopes)
    finally:
        await pubsub.aclose()
        await watcher.aclose()

    def offers(channel: str) -> list[dict[str, Any]]:
        return [e for e in seen[channel] if e.get("message", {}).get("type") == "offer"]

    # The offer travelled on bob's node's channel only, naming its call; the
    # call channel carried the broadcasts (presence, sync).
    assert [e["call_id"] for e in offers(channels[1])] == [call_id]
    assert offers(channels[0]) == []
    assert any(e["kind"] == "presence" for e in seen[channels[0]])


async def test_lifecycle_events_cross_nodes(nodes: Sessions) -> None:
    call_id, (ana, bob, cyd) = await call_between(nodes, "ana", "bob", "cyd")
    a = await nodes.ws(0, call_id, ana)
    b = await nodes.ws(1, call_id, bob)
    await b.receive("participants")
    # A WebSocket mute on node 1 reaches node 2; an HTTP leave on node 2 reaches node 1.
    await a.send({"type": "mute", "video": False})
    muted = await b.receive("mute", timeout=10)
    assert (muted["participant_id"], muted["video"]) == (ana.user_id, False)
    await nodes.api[1].action(call_id, "leave", cyd)
    assert (await a.receive("leave", timeout=10))["participant_id"] == cyd.user_id
    # Ending on node 1 tells and closes node 2's socket.
    await nodes.api[0].action(call_id, "end", ana)
    assert (await b.receive("call_ended", timeout=10))["reason"] == "completed"
    assert await b.wait_closed(timeout=10) == 1000


async def test_reconnect_on_the_other_node_keeps_the_seat(nodes: Sessions) -> None:
    call_id, (ana, bob) = await call_between(nodes, "ana", "bob")
    a = await nodes.ws(0, call_id, ana)
    b = await nodes.ws(1, call_id, bob)
    await a.receive("presence", timeout=10, where=lambda m: m["online"])
    await b.ws.close()  # dropped on node 2: node 2 starts its grace timer
    await a.receive("presence", timeout=10, where=lambda m: not m["online"])
    b2 = await nodes.ws(0, call_id, bob)  # back within the grace period, on node 1
    await b2.receive("participants")
    # The seat held past node 2's grace period is shown without waiting it out
    # by test_a_reconnect_elsewhere_calls_off_the_grace_period (in process, a
    # clock of its own); here: signaling reaches bob on his new node.
    await a.send(offer(bob.user_id))
    assert (await b2.receive("offer", timeout=10))["sender_id"] == ana.user_id
    assert not [m for m in a.messages if m["type"] == "leave"]


@pytest.fixture
async def in_process_nodes(tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Two apps in this process on one Postgres schema and Redis: their parts (the
    grace period's clock) are within the test's reach."""
    check_redis()
    nodes: list[Node] = []
    async with postgres_schema() as database_url:
        try:
            for index in (1, 2):
                config = dataclasses.replace(
                    signaling_config(tmp_path, grace_s=GRACE_S),
                    database_url=database_url,
                    redis_url=REDIS_URL,
                    node_id=f"inproc{index}-{uuid.uuid4().hex[:6]}",
                )
                client = TestClient(TestServer(create_app(config), host="127.0.0.1"))
                await client.start_server()
                nodes.append(Node(client, Api(client)))
            yield nodes
        finally:
            for node in reversed(nodes):
                await node.stack.aclose()
                await node.client.close()


async def test_a_reconnect_elsewhere_calls_off_the_grace_period(
    in_process_nodes: list[Node],
) -> None:
    first, second = in_process_nodes
    clock = ManualClock()
    second.app[HUB].grace.sleep = clock.sleep
    ana, bob = await first.api.users("ana", "bob")
    call_id = await first.joined_call(ana, bob)
    a = await first.ws(call_id, ana)
    b = await second.ws(call_id, bob)
    await a.receive("presence", timeout=10, where=lambda m: m["online"])
    await b.ws.close()  # dropped on node 2: node 2's grace period starts
    await a.receive("presence", timeout=10, where=lambda m: not m["online"])
    await eventually(lambda: clock.pending(), timeout=5, message="node 2's grace period")
    assert [wait.seconds for wait in clock.pending()] == [GRACE_S]

    b2 = await first.ws(call_id, bob)  # back within it, on node 1
    await b2.receive("participants")
    await eventually(lambda: not clock.pending(), timeout=10, message="the grace called off")
    assert clock.waits[0].done.cancelled()
    assert second.app[HUB].pending_leaves(call_id) == 0
    clock.advance()  # the grace period is over: nothing follows
    await a.send({"type": "ping"})
    await a.receive("pong")
    status = await second.api.status(call_id, ana)
    bob_entry = next(p for p in status["participants"] if p["user_id"] == bob.user_id)
    assert bob_entry["left_at"] is None
    assert not [m for m in a.messages if m["type"] == "leave"]
    await a.send(offer(bob.user_id))
    assert (await b2.receive("offer", timeout=10))["sender_id"] == ana.user_id


async def test_redis_outage_degrades_then_heals_without_reconnects(
    two_nodes: Cluster, nodes: Sessions
) -> None:
    call_id, (ana, bob) = await call_between(nodes, "ana", "bob")
    a = await nodes.ws(0, call_id, ana)
    b = await nodes.ws(1, call_id, bob)
    await a.receive("presence", timeout=10, where=lambda m: m["online"])

    two_nodes.cut_redis()
    for client in (a, b):
        error = await client.receive(
            "error", timeout=15, where=lambda m: m["code"] == "signaling_degraded"
        )
        assert error["sender_id"] == "server"

    async def ready_status(node: int) -> int:
        response = await nodes.http[node].get("/ready")
        await response.read()
        return response.status

    async def not_ready() -> bool:
        return await ready_status(0) == 503

    await eventually(not_ready, timeout=15)

    two_nodes.restore_redis()

    async def ready() -> bool:
        return await ready_status(0) == 200 and await ready_status(1) == 200

    await eventually(ready, timeout=30)
    # Same sockets, no reconnect: an offer crosses the nodes again.
    delivered: list[dict[str, Any]] = []

    async def offer_crosses() -> bool:
        await a.send(offer(bob.user_id))
        try:
            delivered.append(await b.receive("offer", timeout=1))
        except TimeoutError:
            return False
        return True

    await eventually(offer_crosses, timeout=20)
    assert delivered[0]["sender_id"] == ana.user_id
    assert not a.closed and not b.closed
    metrics = await (await nodes.http[0].get("/metrics")).text()
    assert (
        "video_redis_pubsub_error_total 1.0" in metrics
        or "video_redis_pubsub_error_total" in metrics
    )


async def test_a_socket_dropped_during_a_redis_outage_still_leaves(
    two_nodes: Cluster, nodes: Sessions
) -> None:
    """The seat map cannot be read, but the socket was this node's: leave as before."""
    call_id, (ana, bob) = await call_between(nodes, "ana", "bob")
    a = await nodes.ws(0, call_id, ana)
    b = await nodes.ws(1, call_id, bob)
    await a.receive("presence", timeout=10, where=lambda m: m["online"])

    two_nodes.cut_redis()
    try:
        await b.receive("error", timeout=15, where=lambda m: m["code"] == "signaling_degraded")
        await b.ws.close()  # bob's socket on node 2 drops while Redis is away

        async def bob_left() -> bool:
            status = await nodes.api[0].status(call_id, ana)
            seats = {p["user_id"]: p for p in status["participants"]}
            return bool(seats[bob.user_id]["left_at"])

        await eventually(bob_left, timeout=GRACE_S + 15, message="bob left after the grace")
    finally:
        two_nodes.restore_redis()

    async def ready() -> bool:
        for session in nodes.http:
            response = await session.get("/ready")
            await response.read()
            if response.status != 200:
                return False
        return True

    await eventually(ready, timeout=30, message="both nodes ready again")
