"""A node dies (SIGKILL): the surviving node frees the seats its sockets held.

Two ``huddle serve`` processes over Redis and Postgres. Participants whose
sockets were on the killed node leave after the grace period (and their call
ends), unless they reconnect to the surviving node first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from signaling.client import SignalingClient
from tests.signaling.cluster import Cluster, cluster
from tests.support.api import Api
from tests.support.polling import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

GRACE_S = 1.0
NODE_TTL_S = 2.0


@pytest.fixture
def doomed_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(
        tmp_path_factory.mktemp("crash"),
        HUDDLE_DISCONNECT_GRACE=str(GRACE_S),
        HUDDLE_NODE_TTL=str(NODE_TTL_S),
    ) as running:
        yield running


async def test_seats_of_a_killed_node_are_freed_unless_their_client_returns(
    doomed_pair: Cluster,
) -> None:
    doomed, survivor = doomed_pair.nodes
    clients: list[SignalingClient] = []
    async with aiohttp.ClientSession(base_url=survivor.base_url) as http1:
        api1 = Api(http1)  # type: ignore[arg-type]
        ana, ben, cy, dan = await api1.users("ana", "ben", "cy", "dan")
        abandoned = (await api1.group_call(ana, ben))["call_id"]
        await api1.action(abandoned, "join", ben)
        resumed = (await api1.group_call(cy, dan))["call_id"]
        await api1.action(resumed, "join", dan)

        async def ws(base_url: str, call_id: str, token: str) -> SignalingClient:
            client = await SignalingClient.open(base_url, call_id, token)
            clients.append(client)
            await client.receive("participants")
            return client

        try:
            await ws(doomed.base_url, abandoned, ana.token)
            await ws(doomed.base_url, abandoned, ben.token)
            await ws(doomed.base_url, resumed, cy.token)
            await ws(survivor.base_url, resumed, dan.token)

            doomed.process.kill()  # no shutdown, no leaves, no goodbye to Redis
            doomed.process.wait(10)
            # cy's client comes back on the surviving node at once.
            await ws(survivor.base_url, resumed, cy.token)

            async def abandoned_ended() -> bool:
                status = await api1.status(abandoned, ana)
                return bool(status["status"] == "ended")

            # Node key expiry (2 s) + a scan (<= 0.7 s) + the grace period (1 s).
            await eventually(abandoned_ended, timeout=20, message="the abandoned call ended")
            await asyncio.sleep(NODE_TTL_S + GRACE_S)  # a negative needs time to pass
            status = await api1.status(resumed, dan)
            assert status["status"] != "ended"
            seats = {p["user_id"]: p for p in status["participants"]}
            assert not seats[cy.user_id]["left_at"] and not seats[dan.user_id]["left_at"]
            metrics = await (await http1.get("/metrics")).text()
            assert "video_call_cleanup_on_disconnect_total 2.0" in metrics, survivor.tail()
        finally:
            for client in clients:
                await client.close()
