"""A group call in three browsers survives draining, or killing, the node that holds its room.

Two ``huddle serve`` nodes on one Redis and one Postgres, behind a small TCP
balancer on loopback (what the browsers know as the server). The room's node
is drained (``POST /v1/admin/drain``, timeout 0); the balancer already points
at the other node, as a real one would once ``/ready`` says ``draining``.
The browsers get ``reconnect``, reopen their sockets through the balancer,
start their SFU sessions over, and decode each other again through the room
placed anew; the call never ends. Killed instead (SIGKILL), the node says
nothing: the browsers whose sockets it held reconnect and ask ``resume``, the
others are told ``sfu_session_lost`` by the surviving node, and all start over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from signaling.bus import room_owner_key
from tests.browser.conftest import Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    api,
    join_by_link,
    make_call,
    make_user,
    new_participant,
)
from tests.browser.test_sfu import everyone_decodes_everyone, mode_is
from tests.signaling.cluster import Cluster, cluster
from tests.support.polling import eventually
from tests.support.serve import ServeProcess
from tests.support.services import REDIS_URL
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

ADMIN_TOKEN = "browser-drain-admin-token-0123456789abcdef"
CONNECTED = {"publish": "connected", "subscribe": "connected"}


class Balancer(TcpProxy):
    """A TCP proxy whose upstream can be switched (new connections go there)."""

    def point_to(self, port: int) -> None:
        self._target = ("127.0.0.1", port)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(
        tmp_path,
        nodes=2,
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_ADMIN_TOKEN=ADMIN_TOKEN,
        HUDDLE_DRAIN_TIMEOUT="0",
        HUDDLE_INITIATE_PER_MINUTE="1000",
    ) as running:
        yield running


@pytest.fixture
async def balancer(two_nodes: Cluster) -> AsyncIterator[Balancer]:
    proxy = Balancer("127.0.0.1", two_nodes.nodes[0].port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_drained_node_moves_a_browser_call_without_ending_it(
    browser: Any, two_nodes: Cluster, balancer: Balancer
) -> None:
    first = two_nodes.nodes[0]
    front = Server(ServeProcess("balancer", balancer.port, first.process, first.log_path))
    users = [await make_user(front, name) for name in ("ana", "bob", "cyd")]
    call_id = await make_call(front, users[0], *users[1:])
    group: dict[str, Participant] = {}
    try:
        await sfu_call_in_browsers(browser, front, call_id, users, group)

        client = redis.Redis.from_url(REDIS_URL)
        try:
            owner = client.get(room_owner_key(call_id))
            assert owner is not None
            by_name = {node.name: node for node in two_nodes.nodes}
            doomed = by_name[owner.decode()]
            survivor = next(node for node in two_nodes.nodes if node is not doomed)
            balancer.point_to(survivor.port)  # /ready says draining: the balancer moves on
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            doomed_front = Server(doomed)
            status, body = await asyncio.to_thread(_post, doomed_front, "/v1/admin/drain", headers)
            assert status == 202, body

            def moved() -> bool:
                value = client.get(room_owner_key(call_id))
                return value is not None and value.decode() == survivor.name

            await eventually(moved, timeout=EVENTUALLY_S, message="the room placed anew")
        finally:
            client.close()

        async def both_connected() -> bool:
            for participant in group.values():
                state = await participant.state()
                if state["sfu"] != CONNECTED:
                    return False
            return True

        await eventually(both_connected, timeout=EVENTUALLY_S, interval=POLL_S)
        await everyone_decodes_everyone(group)
        await eventually(lambda: doomed.process.poll() is not None, timeout=EVENTUALLY_S)
        assert doomed.process.returncode == 0, doomed.tail()
        await call_goes_on(survivor, call_id, users[0], group)
    finally:
        for participant in group.values():
            with contextlib.suppress(Exception):
                await participant.context.close()


async def test_a_killed_node_moves_a_browser_call_without_ending_it(
    browser: Any, two_nodes: Cluster, balancer: Balancer
) -> None:
    first = two_nodes.nodes[0]
    front = Server(ServeProcess("balancer", balancer.port, first.process, first.log_path))
    users = [await make_user(front, name) for name in ("ana", "bob", "cyd")]
    call_id = await make_call(front, users[0], *users[1:])
    group: dict[str, Participant] = {}
    try:
        await sfu_call_in_browsers(browser, front, call_id, users, group)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            owner = client.get(room_owner_key(call_id))
            assert owner is not None
            doomed = next(node for node in two_nodes.nodes if node.name == owner.decode())
            survivor = next(node for node in two_nodes.nodes if node is not doomed)
            balancer.point_to(survivor.port)
            doomed.process.kill()
            killed_at = time.monotonic()

            def moved() -> bool:
                value = client.get(room_owner_key(call_id))
                return value is not None and value.decode() == survivor.name

            await eventually(moved, timeout=EVENTUALLY_S, message="the room placed anew")
        finally:
            client.close()

        async def all_started_over() -> bool:
            for participant in group.values():
                state = await participant.state()
                if state["sfuRestarts"] < 1 or state["sfu"] != CONNECTED:
                    return False
            return True

        await eventually(all_started_over, timeout=EVENTUALLY_S, interval=POLL_S)
        await everyone_decodes_everyone(group)
        print(f"every browser decoding again {time.monotonic() - killed_at:.1f} s after the kill")
        await call_goes_on(survivor, call_id, users[0], group)
    finally:
        for participant in group.values():
            with contextlib.suppress(Exception):
                await participant.context.close()


async def sfu_call_in_browsers(
    browser: Any, front: Server, call_id: str, users: list[Any], group: dict[str, Participant]
) -> None:
    """Each user joins in a browser of its own (added to ``group`` at once, so the
    caller closes them whatever happens), all on the SFU, everyone decoding everyone."""
    for user in users:
        participant = await new_participant(browser, front.base_url, user.name)
        group[user.user_id] = participant
        await join_by_link(participant, call_id, user)
    for participant in group.values():
        await eventually(
            lambda p=participant: mode_is(p, "sfu"), timeout=EVENTUALLY_S, interval=POLL_S
        )
    await everyone_decodes_everyone(group)


async def call_goes_on(
    survivor: ServeProcess, call_id: str, user: Any, group: dict[str, Participant]
) -> None:
    """The call record is whole on the surviving node: active, nobody left."""
    status, call = await api(Server(survivor), "GET", f"/v1/calls/{call_id}", user.token)
    assert status == 200 and call["status"] == "active"
    assert all(p["left_at"] is None for p in call["participants"])
    for participant in group.values():
        assert (await participant.state())["mode"] == "sfu"


def _post(server: Server, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(server.base_url + path, b"", headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
