"""A frozen or dead Postgres: every database wait is bounded by HUDDLE_DB_TIMEOUT,
/ready answers within ~1 s and tells the truth, and the pool's retries log one
line each.

The database is reached through a proxy the test freezes (connections open, no
byte moves: what SIGSTOP does to the server) or cuts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import StartupError, create_app
from server.config import DatabaseRetry
from tests.conftest import FakeClock, make_config
from tests.support.api import Api, error_code
from tests.support.freezable_proxy import FreezableProxy
from tests.support.polling import eventually
from tests.support.services import postgres_schema

DB_TIMEOUT_S = 1.0


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[str, FreezableProxy]]:
    async with postgres_schema() as url:
        parts = urlsplit(url)
        proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        await proxy.start()
        netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else ""
        try:
            yield urlunsplit(parts._replace(netloc=netloc or f"127.0.0.1:{proxy.port}")), proxy
        finally:
            await proxy.close()


@pytest.fixture
async def client(proxied: tuple[str, FreezableProxy]) -> AsyncIterator[TestClient[Any, Any]]:
    url, _ = proxied
    config = make_config(url, db_timeout_s=DB_TIMEOUT_S, request_timeout_s=30.0)
    app = create_app(config, clock=FakeClock())
    test_client = TestClient(TestServer(app, host="127.0.0.1"))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def _timed(client: TestClient[Any, Any], path: str, **kw: Any) -> tuple[float, int, Any]:
    started = time.monotonic()
    response = await client.get(path, **kw)
    body = await response.json()
    return time.monotonic() - started, response.status, body


async def test_frozen_postgres_bounds_requests_and_ready(
    client: TestClient[Any, Any], proxied: tuple[str, FreezableProxy]
) -> None:
    _, proxy = proxied
    api = Api(client)
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    path = f"/v1/calls/{call['call_id']}"

    proxy.freeze()
    # The first /ready and the first request after the freeze are the ones that
    # used to hang for the whole request timeout.
    took, status, body = await _timed(client, "/ready")
    assert status == 503 and body["checks"]["database"]["status"] == "down", body
    assert took < 1.5, f"/ready took {took:.2f} s with a frozen database"
    for attempt in range(3):  # the first, and the reconnects after it
        took, status, body = await _timed(client, path, headers=ana.headers)
        assert status == 503, body
        assert error_code(body) in {"database_timeout", "database_unavailable"}, body
        assert took < DB_TIMEOUT_S + 1.0, f"request {attempt} took {took:.2f} s"
        took, status, _ = await _timed(client, "/ready")
        assert status == 503 and took < 1.5, took

    proxy.thaw()

    async def recovered() -> bool:
        took, status, _ = await _timed(client, "/ready")
        assert took < 1.5
        return status == 200

    await eventually(recovered, timeout=15, interval=0.2, message="/ready after the thaw")
    assert (await api.status(call["call_id"], ana))["status"] == "ringing"


async def test_pool_retry_warnings_are_one_line(
    client: TestClient[Any, Any],
    proxied: tuple[str, FreezableProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, proxy = proxied
    assert (await client.get("/ready")).status == 200
    caplog.set_level(logging.WARNING, logger="asyncpg.pool")
    await proxy.cut()  # the pool's floor connection dies; asyncpg retries it

    def retried() -> bool:
        return any(r.name == "asyncpg.pool" for r in caplog.records)

    await eventually(retried, timeout=10, message="an asyncpg pool retry warning")
    for record in caplog.records:
        if record.name == "asyncpg.pool":
            assert record.exc_info is None, "traceback logged on a pool retry"
            assert "\n" not in record.getMessage()
            assert "Error" in record.getMessage()  # the reason is kept, on one line


async def test_startup_against_a_frozen_postgres_fails_within_the_db_timeout(
    proxied: tuple[str, FreezableProxy],
) -> None:
    url, proxy = proxied
    proxy.freeze()
    config = dataclasses.replace(
        make_config(url, db_timeout_s=DB_TIMEOUT_S),
        db_retry=DatabaseRetry(attempts=1),
    )
    app = create_app(config, clock=FakeClock())
    server = TestServer(app, host="127.0.0.1")
    started = time.monotonic()
    with pytest.raises(StartupError, match="did not answer"):
        await server.start_server()
    took = time.monotonic() - started
    await server.close()
    assert took < DB_TIMEOUT_S + 1.5, f"startup took {took:.2f} s against a frozen database"
