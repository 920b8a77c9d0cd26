"""Transitions the server starts by itself: leaves retried through a database
outage, participants who join over HTTP but never open the signaling socket,
and the sweeper's timeouts that fall due while the database is away."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.keys import METRICS
from signaling.client import SignalingClient
from tests.conftest import FakeClock, make_config
from tests.signaling.conftest import Node, NodeFactory, signaling_config
from tests.support.api import Api, User
from tests.support.polling import eventually
from tests.support.services import POSTGRES_URL, postgres_schema
from tests.support.tcpproxy import TcpProxy


def sample(node: Node, name: str) -> float:
    value = node.app[METRICS].registry.get_sample_value(name)
    return float(value or 0.0)


async def seat(node: Node, call_id: str, asking: User, user: User) -> dict[str, Any]:
    status = await node.api.status(call_id, asking)
    found: dict[str, Any] = next(p for p in status["participants"] if p["user_id"] == user.user_id)
    return found


async def test_a_participant_who_never_connects_is_released(make_node: NodeFactory) -> None:
    node = await make_node(connect_timeout_s=1.0)
    ana, bob, cy = await node.api.users("ana", "bob", "cy")
    call_id = await node.joined_call(ana, bob, cy)  # all three joined over HTTP
    a = await node.ws(call_id, ana)
    c = await node.ws(call_id, cy)
    await a.receive("participants")
    # bob never connects: after the connect timeout (+ one scan) he leaves.
    left = await a.receive("leave", timeout=8, where=lambda m: m["participant_id"] == bob.user_id)
    assert left["sender_id"] == "server"
    assert (await seat(node, call_id, ana, bob))["left_at"]
    for user in (ana, cy):
        assert not (await seat(node, call_id, ana, user))["left_at"]
    assert not a.closed and not c.closed
    assert sample(node, "video_call_connect_timeout_total") == 1
    assert sample(node, "video_call_cleanup_on_disconnect_total") == 0


async def test_a_caller_who_never_connects_ends_the_ringing_call(make_node: NodeFactory) -> None:
    node = await make_node(connect_timeout_s=1.0)
    ana, bob = await node.api.users("ana", "bob")
    call = await node.api.group_call(ana, bob)  # ana is joined by initiating

    async def ended() -> bool:
        status = await node.api.status(call["call_id"], ana)
        return bool(status["status"] == "ended")

    await eventually(ended, timeout=8, message="the abandoned call ended")


@pytest.fixture
async def postgres_behind_proxy() -> AsyncIterator[tuple[str, TcpProxy]]:
    """A fresh schema on the shared Postgres, reached through a proxy the test can cut."""
    async with postgres_schema() as url:
        target = url.removeprefix("postgresql://postgres@")
        host_port = target.split("/", 1)[0]
        host, port = host_port.split(":")
        proxy = TcpProxy(host, int(port))
        await proxy.start()
        try:
            yield url.replace(host_port, f"127.0.0.1:{proxy.port}"), proxy
        finally:
            await proxy.close()


@pytest.mark.postgres
async def test_a_disconnect_leave_lost_to_a_database_outage_is_retried(
    tmp_path: Path, postgres_behind_proxy: tuple[str, TcpProxy]
) -> None:
    assert POSTGRES_URL.startswith("postgresql://postgres@")
    database_url, proxy = postgres_behind_proxy
    grace_s, retry_s = 0.5, 0.5
    config = signaling_config(tmp_path, grace_s=grace_s, leave_retry_s=retry_s)
    config = dataclasses.replace(config, database_url=database_url)
    client = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    node = Node(client, Api(client))
    try:
        ana, bob = await node.api.users("ana", "bob")
        call_id = await node.joined_call(ana, bob)
        a = await node.ws(call_id, ana)
        b = await SignalingClient.open(node.base_url, call_id, bob.token)
        await b.receive("participants")
        await proxy.cut()  # the database goes away
        await b.close()  # bob's socket drops during the outage

        await eventually(
            lambda: sample(node, "video_call_cleanup_failed_total") >= 2,
            timeout=10,
            message="the leave was tried (and failed) at least twice",
        )
        await proxy.start()  # the database is back
        # Within one retry interval (plus a reconnect): bob has left.
        left = await a.receive(
            "leave", timeout=retry_s + 5, where=lambda m: m["participant_id"] == bob.user_id
        )
        assert left["participant_id"] == bob.user_id
        assert (await seat(node, call_id, ana, bob))["left_at"]
        assert not (await seat(node, call_id, ana, ana))["left_at"]
        assert sample(node, "video_call_cleanup_on_disconnect_total") == 1
    finally:
        await node.stack.aclose()
        await client.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("limits", "answered", "reason"),
    [
        ({"ringing_timeout_s": 60.0}, False, "missed"),
        ({"max_duration_s": 60.0}, True, "expired"),
        ({"stale_after_s": 60.0, "max_duration_s": 7 * 86_400.0}, True, "cleaned"),
    ],
)
async def test_worker_transitions_due_during_a_database_outage_land_after_it(
    postgres_behind_proxy: tuple[str, TcpProxy],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    limits: dict[str, float],
    answered: bool,
    reason: str,
) -> None:
    """Ringing timeout, max duration, staleness: the sweep that fails while the
    database is away is run again, and the call ends once it is back."""
    database_url, proxy = postgres_behind_proxy
    config = make_config(database_url, sweep_interval_s=0.1, **limits)
    client = TestClient(TestServer(create_app(config, clock=clock), host="127.0.0.1"))
    await client.start_server()
    try:
        api = Api(client)
        ana, bob = await api.users("ana", "bob")
        call_id = (await api.group_call(ana, bob))["call_id"]
        if answered:
            await api.action(call_id, "join", bob)
        await proxy.cut()
        clock.advance(61)  # due now, while nothing can be written

        def sweep_failed() -> bool:
            return any("worker call-sweeper" in r.getMessage() for r in caplog.records)

        await eventually(sweep_failed, timeout=10, message="a sweep failed during the outage")
        await proxy.start()

        async def ended() -> bool:
            response = await client.get(f"/v1/calls/{call_id}", headers=ana.headers)
            if response.status != 200:
                return False
            body = await response.json()
            return bool(body["status"] == "ended")

        await eventually(ended, timeout=10, message="the due call ended after the outage")
        status = await api.status(call_id, ana)
        assert status["end_reason"] == reason
    finally:
        await client.close()
