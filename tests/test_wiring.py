"""The composition root (server/app.py): with Redis configured, everything that
talks to it shares the app's one client, and the start-up order is the order of
``app.cleanup_ctx`` (docs/architecture.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import REDIS, create_app
from server.keys import CALLS
from signaling.keys import HUB
from tests.conftest import make_config
from tests.signaling.cluster import check_redis
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.redis


async def test_one_redis_client_serves_rate_limits_bus_placement_and_seats(
    tmp_path: Path,
) -> None:
    check_redis()
    config = dataclasses.replace(
        make_config(f"sqlite:///{tmp_path}/huddle.db"), redis_url=REDIS_URL
    )
    app = create_app(config)
    assert [ctx.__name__ for ctx in app.cleanup_ctx] == [
        "redis_ctx",
        "store_ctx",
        "notifier_ctx",
        "calls_ctx",
        "workers_ctx",
        "signaling_ctx",
        "media_ctx",
    ]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        redis = app[REDIS]
        hub = app[HUB]
        assert hub.seats is not None
        users = {
            "rate limits": app[CALLS]._rate_limiter._redis,
            "bus": hub._bus._redis,
            "placement": hub._placement._redis,
            "seats": hub.seats._redis,
        }
        assert {name: client is redis for name, client in users.items()} == dict.fromkeys(
            users, True
        )
        assert await redis.ping()
    finally:
        await client.close()
