"""Dependencies going away and coming back; startup retries; graceful shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from tests.conftest import AppFactory, make_config
from tests.support.api import Api, error_code
from tests.support.polling import eventually
from tests.support.serve import SERVE_COMMAND, free_port, serve_env, spawn_serve
from tests.support.services import postgres_schema
from tests.support.tcpproxy import TcpProxy


def _via_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the app uses Postgres
async def test_ready_reports_database_outage_and_recovers(make_client: AppFactory) -> None:
    async with postgres_schema() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        await proxy.start()
        try:
            client = await make_client(
                config=make_config(_via_proxy(url, proxy.port), db_timeout_s=2.0)
            )
            api = Api(client)
            ana, bob = await api.users("ana", "bob")
            conversation_id = await api.conversation(ana, bob)
            assert (await client.get("/ready")).status == 200

            await proxy.cut()
            ready = await client.get("/ready")
            body = await ready.json()
            assert ready.status == 503
            assert body["checks"]["database"]["status"] == "down"
            assert (await client.get("/health")).status == 200
            failed = await api.call(
                "POST",
                "/v1/calls/initiate",
                ana,
                expect=503,
                json={
                    "call_type": "audio",
                    "conversation_id": conversation_id,
                    "callee_ids": [bob.user_id],
                },
            )
            assert error_code(failed) in {"database_unavailable", "database_timeout"}

            await proxy.start()

            async def ready_again() -> bool:
                return (await client.get("/ready")).status == 200

            await eventually(ready_again, timeout=20)
            call = await api.initiate(ana, conversation_id, bob)  # no restart needed
            assert call["status"] == "ringing"
        finally:
            await proxy.close()


async def test_startup_retries_then_exits_with_a_clear_error(tmp_path: object) -> None:
    dead = free_port()
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *SERVE_COMMAND,
        env=serve_env(
            HUDDLE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{dead}/test",
            HUDDLE_PORT=str(free_port()),
            HUDDLE_DB_CONNECT_ATTEMPTS="3",
            HUDDLE_DB_RETRY_BASE="0.2",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    text = stderr.decode()
    assert "startup failed: database unreachable after 3 attempts" in text
    assert text.count("retrying in") == 2  # backoff 0.2 s, then 0.4 s
    assert time.monotonic() - started >= 0.6


async def test_bad_configuration_names_the_variable() -> None:
    process = await asyncio.create_subprocess_exec(
        *SERVE_COMMAND,
        env=serve_env(HUDDLE_PORT="eighty"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "HUDDLE_PORT='eighty' is not an integer" in stderr.decode()


async def test_sigterm_exits_zero_within_the_shutdown_timeout(tmp_path: Path) -> None:
    server = spawn_serve(
        tmp_path,
        HUDDLE_DATABASE_URL=f"sqlite:///{tmp_path}/h.db",
        HUDDLE_SHUTDOWN_TIMEOUT="5",
    )
    try:
        await asyncio.to_thread(server.wait_healthy)
        token_url = f"{server.base_url}/v1/dev/token"
        async with aiohttp.request("POST", token_url, json={"name": "ana"}) as response:
            assert response.status == 201
        started = time.monotonic()
        returncode = await asyncio.to_thread(server.stop, 10)
        assert returncode == 0, server.tail()
        assert time.monotonic() - started < 5
    finally:
        server.stop()


async def test_a_restarted_single_node_frees_seats_on_both_backends(
    make_client: AppFactory,
) -> None:
    """After a crash or restart (in-process bus), joined participants without a
    socket leave after the grace period and the call ends; on both stores."""
    first = await make_client(disconnect_grace_s=0.2)
    api = Api(first)
    ana, ben = await api.users("ana", "ben")
    call = await api.group_call(ana, ben)
    await api.action(call["call_id"], "join", ben)
    await first.close()

    second = await make_client(disconnect_grace_s=0.2)
    api = Api(second)

    async def ended() -> bool:
        status = await api.status(call["call_id"], ana)
        return bool(status["status"] == "ended")

    await eventually(ended, timeout=10, message="the call ended after the restart")
