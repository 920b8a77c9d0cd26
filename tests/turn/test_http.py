"""TURN credentials over the HTTP API: GET /v1/turn/credentials and join's ice_servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Config, TurnSettings
from server.turn import turn_password
from tests.support.api import Api

SECRET = "huddle-test-secret-0123456789"
JWT_SECRET = "turn-http-test-jwt-secret-long-enough-for-hs256"
TURN = TurnSettings(
    uris=("turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"),
    stun_uris=("stun:127.0.0.1:3478",),
    secret=SECRET,
    ttl_s=3600,
)

ApiFactory = Callable[[TurnSettings], AbstractAsyncContextManager[Api]]


@pytest.fixture
def huddle(tmp_path: Path) -> ApiFactory:
    @asynccontextmanager
    async def start(turn: TurnSettings) -> AsyncIterator[Api]:
        config = Config(
            port=0,
            database_url=f"sqlite:///{tmp_path / 'huddle.db'}",
            jwt_secret=JWT_SECRET,
            dev_mode=True,
            turn=turn,
        )
        async with TestClient(TestServer(create_app(config))) as client:
            yield Api(client)

    return start


def check_credential(username: str, password: str, user_id: str, before: float) -> None:
    expiry, owner = username.split(":", 1)
    assert owner == user_id
    assert before + TURN.ttl_s - 1 <= int(expiry) <= time.time() + TURN.ttl_s
    assert password == turn_password(SECRET, username)


async def test_credentials_endpoint(huddle: ApiFactory) -> None:
    async with huddle(TURN) as api:
        ana = await api.user("ana")
        before = time.time()
        body = await api.call("GET", "/v1/turn/credentials", ana, expect=200)
    assert set(body) == {"username", "password", "ttl", "uris"}
    assert body["ttl"] == 3600
    assert body["uris"] == list(TURN.uris)
    check_credential(body["username"], body["password"], ana.user_id, before)


async def test_credentials_need_a_token(huddle: ApiFactory) -> None:
    async with huddle(TURN) as api:
        body = await api.call("GET", "/v1/turn/credentials", None, expect=401)
        assert body["error"]["code"]
        response = await api.client.get(
            "/v1/turn/credentials", headers={"Authorization": "Bearer not-a-token"}
        )
        assert response.status == 401


async def test_credentials_without_turn_configured(huddle: ApiFactory) -> None:
    async with huddle(TurnSettings()) as api:
        ana = await api.user("ana")
        body = await api.call("GET", "/v1/turn/credentials", ana, expect=404)
    assert body["error"]["code"] == "turn_not_configured"


async def test_join_response_carries_ice_servers(huddle: ApiFactory) -> None:
    async with huddle(TURN) as api:
        ana, bob = await api.users("ana", "bob")
        call = await api.group_call(ana, bob)
        before = time.time()
        joined: dict[str, Any] = await api.call(
            "POST", f"/v1/calls/{call['call_id']}/join", bob, expect=200
        )
    stun, relay = joined["ice_servers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    assert relay["urls"] == list(TURN.uris)
    check_credential(relay["username"], relay["credential"], bob.user_id, before)


async def test_join_without_turn_has_empty_ice_servers(huddle: ApiFactory) -> None:
    async with huddle(TurnSettings()) as api:
        ana, bob = await api.users("ana", "bob")
        call = await api.group_call(ana, bob)
        joined = await api.call("POST", f"/v1/calls/{call['call_id']}/join", bob, expect=200)
    assert joined["ice_servers"] == []
