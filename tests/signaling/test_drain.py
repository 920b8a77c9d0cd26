"""Drain on one node (no Redis): the admin endpoint, ``/ready``, rooms that run on
until they empty or the drain timeout, then ``reconnect`` and 1012 without anyone
leaving the call. The SFU is a recording stand-in (``media.seam``)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Config
from signaling.client import SignalingClient
from signaling.keys import HUB
from tests.conftest import TEST_SECRET
from tests.signaling.conftest import Node, signaling_config
from tests.signaling.messages import offer
from tests.signaling.test_sfu_seam import FakeSfu
from tests.support.api import Api, error_code
from tests.support.polling import eventually
from tests.support.serve import spawn_serve

ADMIN_TOKEN = "a" * 40
GRACE_S = 0.5


class RoomSfu(FakeSfu):
    """The stand-in SFU, with the participants of each room."""

    def __init__(self) -> None:
        super().__init__()
        self.people: dict[str, set[str]] = {}

    async def handle_signal(self, call_id: str, participant_id: str, message: Any) -> None:
        await super().handle_signal(call_id, participant_id, message)
        self.people.setdefault(call_id, set()).add(participant_id)

    def members(self) -> dict[str, frozenset[str]]:
        return {c: frozenset(self.people.get(c, ())) for c in self.rooms}


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    nodes: list[Node] = []

    async def factory(**config: Any) -> Node:
        base = signaling_config(tmp_path, grace_s=GRACE_S)
        limits = dataclasses.replace(base.limits, drain_timeout_s=config.pop("drain_s", 0.0))
        app = create_app(dataclasses.replace(base, limits=limits, **config))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        node = Node(client, Api(client))
        nodes.append(node)
        return node

    yield factory
    for node in reversed(nodes):
        await node.stack.aclose()
        await node.client.close()


async def post_drain(node: Node, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = await node.client.post("/v1/admin/drain", headers=headers)
    return response.status, await response.json()


async def test_the_admin_drain_needs_the_configured_token(start: Any) -> None:
    off: Node = await start()
    status, body = await post_drain(off, ADMIN_TOKEN)
    assert (status, error_code(body)) == (403, "admin_disabled")

    node: Node = await start(admin_token=ADMIN_TOKEN)
    assert (await node.client.get("/ready")).status == 200
    status, body = await post_drain(node, None)
    assert (status, error_code(body)) == (401, "unauthorized")
    response = await node.client.post("/v1/admin/drain", headers={"Authorization": "Basic x"})
    assert response.status == 401
    status, body = await post_drain(node, "b" * 40)
    assert (status, error_code(body)) == (403, "forbidden")
    assert (await node.client.get("/ready")).status == 200  # refused: nothing changed

    status, body = await post_drain(node, ADMIN_TOKEN)
    assert status == 202 and body["status"] == "draining" and body["started"] is True
    ready = await node.client.get("/ready")
    report = await ready.json()
    assert ready.status == 503
    assert report["status"] == "not_ready" and report["draining"] is True
    status, body = await post_drain(node, ADMIN_TOKEN)
    assert status == 202 and body["started"] is False  # idempotent


def test_the_admin_token_must_be_long() -> None:
    from server.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="HUDDLE_ADMIN_TOKEN"):
        load_config({"HUDDLE_ADMIN_TOKEN": "short"})
    config = load_config({"HUDDLE_ADMIN_TOKEN": ADMIN_TOKEN, "HUDDLE_DRAIN_TIMEOUT": "45"})
    assert config.admin_token == ADMIN_TOKEN and config.limits.drain_timeout_s == 45
    assert ADMIN_TOKEN not in repr(config)
    assert Config().limits.drain_timeout_s == 0


async def test_rooms_run_on_until_the_timeout_then_clients_reconnect_and_stay_joined(
    start: Any,
) -> None:
    node: Node = await start(admin_token=ADMIN_TOKEN, drain_s=1.5)
    sfu = RoomSfu()
    node.app[HUB].attach_sfu(sfu)
    ana, bob, cyd, dan = await node.api.users("ana", "bob", "cyd", "dan")
    call_id = await node.joined_call(ana, bob, cyd)
    sockets = [await node.ws(call_id, user) for user in (ana, bob, cyd)]
    for sock in sockets[:2]:
        await sock.send(offer("sfu", pc="publish"))
    await eventually(lambda: sfu.members().get(call_id) == {ana.user_id, bob.user_id})

    assert (await post_drain(node, ADMIN_TOKEN))[0] == 202
    # A new room is refused while draining (one node: nowhere else to place it).
    other = await node.joined_call(dan, ana, bob)
    d = await node.ws(other, dan)
    await d.send(offer("sfu", pc="publish", id="new"))
    error = await d.receive("error")
    assert (error["code"], error["id"]) == ("sfu_unavailable", "new")
    # The live room runs on: nobody is told anything before the timeout.
    await asyncio.sleep(0.5)  # a negative needs time to pass
    assert not any(m["type"] == "reconnect" for s in sockets for m in s.messages)
    assert call_id in sfu.rooms

    # At the timeout: those in the room republish, everyone reconnects, 1012.
    for sock, republish in zip(sockets, (True, True, False), strict=True):
        message = await sock.receive("reconnect", timeout=10)
        assert message["republish"] is republish and message["reason"] == "draining"
        assert await sock.wait_closed(5) == 1012
    assert await d.wait_closed(5) == 1012
    assert sfu.closed == [call_id]  # its media released (to be placed again elsewhere)
    metrics = await (await node.client.get("/metrics")).text()
    assert "video_signaling_draining 1.0" in metrics
    assert "video_signaling_drain_rooms_moved_total 1.0" in metrics
    assert 'video_signaling_closed_total{code="1012"} 4.0' in metrics
    await asyncio.sleep(GRACE_S * 3)  # the grace period would have passed
    status = await node.api.status(call_id, ana)
    assert status["status"] != "ended"
    assert all(p["left_at"] is None for p in status["participants"])


async def test_the_drain_ends_as_soon_as_the_rooms_empty(start: Any) -> None:
    node: Node = await start(admin_token=ADMIN_TOKEN, drain_s=600)
    sfu = RoomSfu()
    node.app[HUB].attach_sfu(sfu)
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    sockets = [await node.ws(call_id, user) for user in (ana, bob)]
    await sockets[0].send(offer("sfu", pc="publish"))
    await eventually(lambda: sfu.members().get(call_id) == {ana.user_id})
    assert (await post_drain(node, ADMIN_TOKEN))[0] == 202
    await asyncio.sleep(0.5)  # a negative needs time to pass
    assert not sockets[0].closed
    sfu.people[call_id].clear()  # the last one left the room (the call goes on)
    for sock in sockets:
        message = await sock.receive("reconnect", timeout=10)
        assert message["republish"] is False
        assert await sock.wait_closed(5) == 1012
    assert node.app[HUB].drain.done.is_set()
    response = await node.client.get(
        "/v1/calls/ws/signaling", params={"call_id": call_id, "access_token": cyd.token}
    )
    assert response.status == 503  # a drained node takes no new sockets


async def test_sigterm_on_one_node_drains_then_stops(tmp_path: Path) -> None:
    """``huddle serve`` without Redis: SIGTERM waits out the drain timeout for a
    live room, then tells the socket to reconnect (1012), then exits 0."""
    server = spawn_serve(
        tmp_path,
        HUDDLE_DATABASE_URL=f"sqlite:///{tmp_path / 'huddle.db'}",
        HUDDLE_JWT_SECRET=TEST_SECRET,
        HUDDLE_DEV="1",
        HUDDLE_DRAIN_TIMEOUT="3",
        HUDDLE_ICE_HOSTS="127.0.0.1",
    )
    try:
        await asyncio.to_thread(server.wait_healthy)
        async with aiohttp.ClientSession(base_url=server.base_url) as http:
            api = Api(http)  # type: ignore[arg-type]
            ana, bob, cyd = await api.users("ana", "bob", "cyd")
            call = await api.group_call(ana, bob, cyd)
            sock = await SignalingClient.open(server.base_url, call["call_id"], ana.token)
            try:
                await sock.send({"type": "subscribe", "target_id": "sfu"})

                async def in_room() -> bool:
                    metrics = await (await http.get("/metrics")).text()
                    return "video_call_sfu_participants_active 1.0" in metrics

                await eventually(in_room, timeout=10)
                server.process.send_signal(signal.SIGTERM)

                async def draining() -> bool:
                    response = await http.get("/ready")
                    return response.status == 503 and (await response.json())["draining"]

                await eventually(draining, timeout=10)
                assert not sock.closed  # the room runs on for the drain timeout
                message = await sock.receive("reconnect", timeout=15)
                assert message["republish"] is True
                assert await sock.wait_closed(5) == 1012
            finally:
                await sock.close()
        assert await asyncio.to_thread(server.process.wait, 20) == 0, server.tail()
        assert "drain: done; 1 room(s) released" in server.log()
    finally:
        await asyncio.to_thread(server.stop)
