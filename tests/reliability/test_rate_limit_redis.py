"""The Redis rate limiter against a real Redis: it counts across nodes, and it
fails closed (503 ``rate_limiter_unavailable``) while Redis is down; /ready
stays bounded with Redis frozen (SIGSTOP)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from server.app import create_app
from server.ratelimit import RateLimiterUnavailable, RedisRateLimiter
from tests.conftest import FakeClock, make_config
from tests.support.api import Api, error_code
from tests.support.own_redis import OwnRedis
from tests.support.polling import eventually


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    await server.start()
    yield server
    server.stop()


async def test_counts_are_shared_by_every_limiter_on_the_redis(own_redis: OwnRedis) -> None:
    one, two = Redis.from_url(own_redis.url), Redis.from_url(own_redis.url)
    try:
        first, second = RedisRateLimiter(one), RedisRateLimiter(two)
        key = uuid.uuid4().hex
        day = 86_400.0  # a window the test cannot straddle
        assert await first.hit("initiate", key, 3, day) is None
        assert await second.hit("initiate", key, 3, day) is None
        assert await first.hit("initiate", key, 3, day) is None
        wait = await second.hit("initiate", key, 3, day)
        assert wait is not None and 0 < wait <= day
        assert await first.hit("initiate", uuid.uuid4().hex, 3, day) is None  # per key
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_down_fails_closed(own_redis: OwnRedis) -> None:
    redis = Redis.from_url(own_redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        limiter = RedisRateLimiter(redis)
        assert await limiter.hit("initiate", "ana", 10, 60.0) is None
        own_redis.stop()
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit("initiate", "ana", 10, 60.0)
    finally:
        await redis.aclose()


async def test_initiate_answers_503_while_redis_is_down(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    config = dataclasses.replace(
        make_config(f"sqlite:///{tmp_path}/huddle.db"), redis_url=own_redis.url
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(config, clock=FakeClock()), host="127.0.0.1")
    )
    await client.start_server()
    try:
        api = Api(client)
        ana, bob = await api.users("ana", "bob")
        conversation_id = await api.conversation(ana, bob)
        await api.initiate(ana, conversation_id, bob)
        own_redis.stop()
        body = await api.call(
            "POST",
            "/v1/calls/initiate",
            ana,
            json={
                "call_type": "audio",
                "conversation_id": conversation_id,
                "callee_ids": [bob.user_id],
            },
            expect=503,
        )
        assert error_code(body) == "rate_limiter_unavailable"
    finally:
        await client.close()


async def test_ready_reports_each_dependency_within_a_second_with_redis_frozen(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    config = dataclasses.replace(
        make_config(f"sqlite:///{tmp_path}/huddle.db"), redis_url=own_redis.url
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(config, clock=FakeClock()), host="127.0.0.1")
    )
    await client.start_server()
    try:
        assert (await client.get("/ready")).status == 200
        own_redis.freeze()
        for _ in range(3):
            started = time.monotonic()
            response = await client.get("/ready")
            took = time.monotonic() - started
            body = await response.json()
            assert response.status == 503, body
            assert body["checks"]["redis"]["status"] == "down", body
            assert body["checks"]["database"]["status"] == "up", body
            assert took < 1.5, f"/ready took {took:.2f} s with Redis frozen"
        own_redis.thaw()

        async def ready() -> bool:
            return (await client.get("/ready")).status == 200

        await eventually(ready, timeout=10, message="/ready after Redis thawed")
    finally:
        own_redis.thaw()
        await client.close()
