"""Faults mid-call against a Redis, a Postgres and two ``huddle serve`` nodes of the test's own.

Each test breaks one thing while calls are up, then checks what an operator
and a user would: ``/ready`` tells the truth within a bound while it is broken
and after it is back, no call record is lost, and no participant stays joined
past its bound:

- a dropped socket: ``HUDDLE_DISCONNECT_GRACE`` + one ``HUDDLE_LEAVE_RETRY``
  after the database is back;
- a dead node: ``HUDDLE_NODE_TTL`` + a scan (a third of it) + the grace;
- a frozen client: ``HUDDLE_DROP_AFTER`` + the grace;
- a client that never reads: dropped when its send queue fills (4031), then the grace;
- a participant who joins and never connects: ``HUDDLE_CONNECT_TIMEOUT`` + a scan.

Short settings keep the module around half a minute; ``make reliability``
repeats the outages (``scale.seconds``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from signaling.client import SignalingClient
from tests.reliability.scale import examples
from tests.signaling.cluster import start_node
from tests.signaling.messages import SDP
from tests.support.api import Api, User
from tests.support.own_services import OwnPostgres, OwnRedis, RawWebSocket, own_postgres, own_redis
from tests.support.polling import eventually
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.slow]

GRACE_S = 1.0
NODE_TTL_S = 2.0
LEAVE_RETRY_S = 0.5
PING_AFTER_S = 1.0
DROP_AFTER_S = 2.0
SCAN_S = NODE_TTL_S / 3
CONNECT_TIMEOUT_S = 4.0
#: Reconnecting to a restarted database or Redis, process scheduling on a busy machine.
SLACK_S = 3.0
#: /ready must change its answer within this long of a dependency going or coming.
READY_BOUND_S = 4.0

ENV = {
    "HUDDLE_DISCONNECT_GRACE": str(GRACE_S),
    "HUDDLE_NODE_TTL": str(NODE_TTL_S),
    "HUDDLE_LEAVE_RETRY": str(LEAVE_RETRY_S),
    "HUDDLE_PING_AFTER": str(PING_AFTER_S),
    "HUDDLE_DROP_AFTER": str(DROP_AFTER_S),
    "HUDDLE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
    "HUDDLE_RINGING_TIMEOUT": "3",
    "HUDDLE_SWEEP_INTERVAL": "0.5",
    "HUDDLE_DB_TIMEOUT": "2",
    "HUDDLE_MESSAGES_PER_SECOND": "5000",
}


@dataclass
class Rig:
    redis: OwnRedis
    postgres: OwnPostgres
    nodes: list[ServeProcess]

    def logs(self) -> str:
        return "\n\n".join(f"== {n.name}\n{n.tail(60)}" for n in self.nodes)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("faults")
    with own_redis(workdir) as redis_server, own_postgres() as postgres:
        nodes: list[ServeProcess] = []
        try:
            for index in range(2):
                node = start_node(
                    workdir,
                    f"fault{index + 1}",
                    database_url=postgres.url,
                    redis_url=redis_server.url,
                    **ENV,
                )
                nodes.append(node)
                node.wait_healthy(60)  # one at a time: the first applies the migrations
            yield Rig(redis_server, postgres, nodes)
        finally:
            for node in nodes:
                node.stop()


@pytest.fixture
async def sessions(rig: Rig) -> Any:
    http = [aiohttp.ClientSession(base_url=node.base_url) for node in rig.nodes]
    try:
        yield http
    finally:
        for session in http:
            await session.close()


async def ready(http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(READY_BOUND_S):
        response = await http.get("/ready")
        body: dict[str, Any] = await response.json()
        return response.status, body


async def ready_becomes(http: aiohttp.ClientSession, status: int, what: str) -> None:
    async def check() -> bool:
        try:
            code, _ = await ready(http)
        except TimeoutError:
            return False
        return code == status

    await eventually(check, timeout=READY_BOUND_S, interval=0.2, message=what)


def seats(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["user_id"]: p for p in status["participants"]}


async def joined(api: Api, call_id: str, asking: User, user: User) -> bool:
    status = await api.status(call_id, asking)
    seat = seats(status)[user.user_id]
    return bool(seat["joined_at"]) and not seat["left_at"]


async def open_ws(node: ServeProcess, call_id: str, user: User) -> SignalingClient:
    client = await SignalingClient.open(node.base_url, call_id, user.token)
    await client.receive("participants")
    return client


async def call_of(api: Api, caller: User, *callees: User) -> str:
    call = await api.group_call(caller, *callees)
    for callee in callees:
        await api.action(call["call_id"], "join", callee)
    return str(call["call_id"])


async def metric(http: aiohttp.ClientSession, name: str) -> float:
    text = await (await http.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_a_participant_who_never_connects_is_released_once(
    rig: Rig, sessions: list[aiohttp.ClientSession]
) -> None:
    n1, _ = rig.nodes
    api1, api2 = Api(sessions[0]), Api(sessions[1])  # type: ignore[arg-type]
    pat, quinn = await api1.users("pat", "quinn")
    call = await api1.group_call(pat, quinn)
    call_id = call["call_id"]
    await api2.action(call_id, "join", quinn)  # over HTTP on the other node, then nothing
    joined_at = time.monotonic()
    p = await open_ws(n1, call_id, pat)
    try:
        await p.receive(
            "leave",
            timeout=CONNECT_TIMEOUT_S + SCAN_S + SLACK_S,
            where=lambda m: m["participant_id"] == quinn.user_id,
        )
        released_s = time.monotonic() - joined_at
        assert released_s >= CONNECT_TIMEOUT_S - 0.5
        print(f"never connected: released {released_s:.1f} s after joining")
        assert not await joined(api1, call_id, pat, quinn)
        assert await joined(api1, call_id, pat, pat) and not p.closed
        released = [await metric(s, "video_call_connect_timeout_total") for s in sessions]
        assert sum(released) == 1, released  # one node took charge
    finally:
        await p.close()


async def test_postgres_restart_mid_call(rig: Rig, sessions: list[aiohttp.ClientSession]) -> None:
    """Postgres stops mid-call while a socket drops and a ringing call times out."""
    n1, n2 = rig.nodes
    api = Api(sessions[0])  # type: ignore[arg-type]
    clients: list[SignalingClient] = []
    try:
        for _ in range(examples(1, 3)):
            ana, ben, cy, dan, eve, fay = await api.users("ana", "ben", "cy", "dan", "eve", "fay")
            first = await call_of(api, ana, ben)
            second = await call_of(api, cy, dan)
            ringing = (await api.group_call(eve, fay))["call_id"]
            a = await open_ws(n1, first, ana)
            b = await open_ws(n2, first, ben)
            clients += [a, b, await open_ws(n1, second, cy), await open_ws(n2, second, dan)]
            e = await open_ws(n1, ringing, eve)  # eve's call rings 3 s: no one answers
            clients.append(e)

            failed_before = await metric(sessions[1], "video_call_cleanup_failed_total")
            rig.postgres.stop("fast")
            for http in sessions:
                await ready_becomes(http, 503, "/ready reports the database down")
            _, body = await ready(sessions[0])
            assert body["checks"]["database"]["status"] == "down", body
            await b.close()  # ben's socket drops while the database is away

            async def leave_tried_twice(before: float = failed_before) -> bool:
                failed = await metric(sessions[1], "video_call_cleanup_failed_total")
                return failed >= before + 2  # several failed attempts, by design

            await eventually(
                leave_tried_twice, timeout=GRACE_S + 10, message="ben's leave was tried twice"
            )
            rig.postgres.start()
            back = time.monotonic()
            for http in sessions:
                await ready_becomes(http, 200, "/ready reports the database back")

            left = await a.receive(
                "leave",
                timeout=LEAVE_RETRY_S + SLACK_S,
                where=lambda m, ben=ben: m["participant_id"] == ben.user_id,
            )
            assert left["sender_id"] == "server"
            recovered_s = time.monotonic() - back
            assert recovered_s <= LEAVE_RETRY_S + SLACK_S, rig.logs()
            print(f"postgres back: the lost leave landed {recovered_s:.1f} s later")
            ended = await e.receive("call_ended", timeout=SLACK_S)
            assert (ended["reason"], ended["by_worker"]) == ("missed", True)

            # Nothing lost: every call is there, in the state it should be.
            assert not await joined(api, first, ana, ben)
            assert await joined(api, first, ana, ana)
            assert await joined(api, second, cy, cy) and await joined(api, second, cy, dan)
            assert (await api.status(first, ana))["status"] == "active"
            assert (await api.status(ringing, eve))["status"] == "ended"
            for client in clients:
                await client.close()
            clients.clear()
    finally:
        for client in clients:
            await client.close()


async def test_frozen_and_never_reading_clients_lose_their_seat_alone(
    rig: Rig, sessions: list[aiohttp.ClientSession]
) -> None:
    n1, n2 = rig.nodes
    api = Api(sessions[0])  # type: ignore[arg-type]
    gus, hal, ivy, jon = await api.users("gus", "hal", "ivy", "jon")
    frozen_call = await call_of(api, gus, hal)
    deaf_call = await call_of(api, ivy, jon)
    h = await open_ws(n2, frozen_call, hal)
    j = await open_ws(n1, deaf_call, jon)
    frozen = await RawWebSocket.open(n1.port, frozen_call, gus.token)  # then silent
    deaf = await RawWebSocket.open(n1.port, deaf_call, ivy.token)  # answers, never reads
    try:
        await h.receive("presence", where=lambda m: m["online"])
        await j.receive("presence", where=lambda m: m["online"])
        start = time.monotonic()
        big_sdp = SDP + "a=x-pad:" + "y" * 16_000 + "\r\n"
        sent = 0
        while sent < 2_000 and not deaf_gone(j, ivy):
            try:
                await deaf.send_text('{"type":"pong"}')
            except ConnectionError:
                break  # the server cut it (before its presence reached jon)
            for _ in range(50):
                await j.send({"type": "offer", "target_id": ivy.user_id, "sdp": big_sdp})
            sent += 50
            # Paced by the server: at most one batch in flight, under the flood limit's burst.
            await j.send({"type": "ping"})
            await j.receive("pong", timeout=SLACK_S)
        await j.receive(
            "leave", timeout=GRACE_S + SLACK_S, where=lambda m: m["participant_id"] == ivy.user_id
        )
        deaf_s = time.monotonic() - start
        await h.receive(
            "leave",
            timeout=DROP_AFTER_S + GRACE_S + SLACK_S,
            where=lambda m: m["participant_id"] == gus.user_id,
        )
        frozen_s = time.monotonic() - start
        assert not h.closed and not j.closed
        assert await joined(api, frozen_call, hal, hal) and await joined(api, deaf_call, jon, jon)
        assert not await joined(api, frozen_call, hal, gus)
        assert not await joined(api, deaf_call, jon, ivy)
        closed = await (await sessions[0].get("/metrics")).text()
        assert 'video_signaling_closed_total{code="4031"}' in closed, rig.logs()
        assert 'video_signaling_closed_total{code="4008"}' in closed, rig.logs()
        print(f"never-reading client released after {deaf_s:.1f} s, frozen after {frozen_s:.1f} s")
    finally:
        frozen.close()
        deaf.close()
        await h.close()
        await j.close()


def deaf_gone(observer: SignalingClient, user: User) -> bool:
    return any(
        m.get("type") == "presence" and m["participant_id"] == user.user_id and not m["online"]
        for m in observer.messages
    )


async def test_redis_restarts_empty_then_a_node_dies(
    rig: Rig, sessions: list[aiohttp.ClientSession]
) -> None:
    """Seat records lost with Redis are written again, so a node that dies
    afterwards still has its seats freed by the survivor within the bound."""
    doomed, survivor = rig.nodes
    api = Api(sessions[1])  # type: ignore[arg-type]
    kit, lou, mo, ned = await api.users("kit", "lou", "mo", "ned")
    abandoned = await call_of(api, kit, lou)
    shared = await call_of(api, mo, ned)
    clients = [
        await open_ws(doomed, abandoned, kit),
        await open_ws(doomed, abandoned, lou),
        await open_ws(doomed, shared, mo),
    ]
    n = await open_ws(survivor, shared, ned)
    clients.append(n)
    try:
        await eventually(
            lambda: f"huddle:seats:{abandoned}" in rig.redis.keys("huddle:seats:*"),
            timeout=SLACK_S,
            message="seats recorded",
        )
        # A key no node writes: gone after the restart proves it came back empty
        # (the nodes may write their own keys again the moment it is up).
        rig.redis.set("test:before-restart", "1")
        rig.redis.stop()
        for http in sessions:
            await ready_becomes(http, 503, "/ready reports Redis down")
        rig.redis.start()  # empty: --save '' --appendonly no
        assert not rig.redis.keys("test:*")
        for http in sessions:
            await ready_becomes(http, 200, "/ready reports Redis back")

        def rebuilt() -> bool:
            return {f"huddle:seats:{abandoned}", f"huddle:seats:{shared}"} <= set(
                rig.redis.keys("huddle:seats:*")
            )

        await eventually(rebuilt, timeout=SCAN_S * 2 + SLACK_S, message="seats rebuilt")
        # Nobody connected was kicked meanwhile (a whole TTL without seats is the bar).
        await asyncio.sleep(NODE_TTL_S)
        for call_id, asking, user in (
            (abandoned, kit, kit),
            (abandoned, kit, lou),
            (shared, ned, mo),
        ):
            assert await joined(api, call_id, asking, user), rig.logs()

        # Signaling across the nodes works again (the bus resubscribed).
        await clients[2].send({"type": "offer", "target_id": ned.user_id, "sdp": SDP, "id": 1})
        relayed = await n.receive("offer", timeout=SLACK_S)
        assert relayed["sender_id"] == mo.user_id

        doomed.process.kill()
        doomed.process.wait(10)
        died = time.monotonic()

        async def abandoned_ended() -> bool:
            return bool((await api.status(abandoned, kit))["status"] == "ended")

        bound = NODE_TTL_S + SCAN_S + GRACE_S + SLACK_S
        await eventually(abandoned_ended, timeout=bound, message="the abandoned call ended")
        await n.receive("leave", timeout=bound, where=lambda m: m["participant_id"] == mo.user_id)
        freed_s = time.monotonic() - died
        assert freed_s <= bound
        print(f"node killed after a Redis restart: seats freed {freed_s:.1f} s later")
        assert await joined(api, shared, ned, ned)
        assert (await api.status(shared, ned))["status"] == "active"
        ready_code, body = await ready(sessions[1])
        assert ready_code == 200, json.dumps(body)
    finally:
        for client in clients:
            await client.close()
