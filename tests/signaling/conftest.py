"""Signaling fixtures: the real app on 127.0.0.1 (SQLite), users, joined calls, clients."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from server.app import create_app
from server.config import Config, Limits, SignalingSettings
from signaling.client import SignalingClient
from tests.conftest import TEST_SECRET
from tests.signaling.cluster import check_redis
from tests.support.api import Api, User
from tests.support.services import REDIS_URL

FAST_SIGNALING = SignalingSettings(ping_after_s=20.0, drop_after_s=45.0)


@dataclass
class Node:
    """One running app: its HTTP driver, base URL and the clients opened on it."""

    client: TestClient[Any, Any]
    api: Api
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("/"))

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert app is not None
        return app

    async def ws(self, call_id: str, user: User, **options: Any) -> SignalingClient:
        session = self.client.session
        client = await SignalingClient.open(
            self.base_url, call_id, user.token, session=session, **options
        )
        self.stack.push_async_callback(client.close)
        return client

    async def joined_call(self, caller: User, *callees: User) -> str:
        """A call initiated by ``caller`` that every callee has joined."""
        call = await self.api.group_call(caller, *callees)
        for callee in callees:
            await self.api.action(call["call_id"], "join", callee)
        return str(call["call_id"])


NodeFactory = Callable[..., Awaitable[Node]]


def signaling_config(tmp_path: Path, *, grace_s: float = 10.0, **signaling: Any) -> Config:
    return Config(
        port=0,
        database_url=f"sqlite:///{tmp_path}/huddle.db",
        jwt_secret=TEST_SECRET,
        dev_mode=True,
        limits=Limits(disconnect_grace_s=grace_s, sweep_interval_s=60.0, initiate_per_minute=1000),
        signaling=dataclasses.replace(FAST_SIGNALING, **signaling),
    )


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    nodes: list[Node] = []

    async def factory(*, grace_s: float = 10.0, **signaling: Any) -> Node:
        app = create_app(signaling_config(tmp_path, grace_s=grace_s, **signaling))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        node = Node(client, Api(client))
        nodes.append(node)
        return node

    yield factory
    for node in reversed(nodes):
        await node.stack.aclose()
        await node.client.close()


@pytest.fixture
async def node(make_node: NodeFactory) -> Node:
    return await make_node()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the real Redis (multi-node tests read placement keys with it)."""
    check_redis()
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()
