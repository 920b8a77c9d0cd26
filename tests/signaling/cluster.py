"""Several real ``huddle serve`` processes sharing one Postgres schema and one Redis.

Redis is reached through a :class:`~tests.support.tcpproxy.TcpProxy` the test can
cut and restore. The proxy and the schema live on a background event loop so
that the processes (slow to start) can be shared by a whole test module.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import redis

from tests.conftest import TEST_SECRET
from tests.support.serve import ServeProcess, spawn_serve
from tests.support.services import POSTGRES_URL, REDIS_URL, postgres_schema, unreachable
from tests.support.tcpproxy import TcpProxy

T = TypeVar("T")


class BackgroundLoop:
    """An event loop on a thread, for fixtures that outlive one test's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def check_redis() -> tuple[str, int]:
    parts = urlsplit(REDIS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        client = redis.Redis(host=host, port=port, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        unreachable("Redis", exc)
    return host, port


def check_postgres() -> None:
    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError) as exc:
        unreachable("Postgres", exc)


@dataclass
class Cluster:
    nodes: list[ServeProcess]
    proxy: TcpProxy
    background: BackgroundLoop

    def cut_redis(self) -> None:
        self.background.run(self.proxy.cut())

    def restore_redis(self) -> None:
        self.background.run(self.proxy.start())


def start_node(
    tmp_path: Path, prefix: str, *, database_url: str, redis_url: str | None, **env: str
) -> ServeProcess:
    """Spawn one dev-mode node (not waited for: see :meth:`ServeProcess.wait_healthy`)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    settings = {
        "HUDDLE_DATABASE_URL": database_url,
        "HUDDLE_JWT_SECRET": TEST_SECRET,
        "HUDDLE_DEV": "1",
        "HUDDLE_NODE_ID": name,
        "HUDDLE_INITIATE_PER_MINUTE": "100000",
        "HUDDLE_LOG_LEVEL": "INFO",
        **({"HUDDLE_REDIS_URL": redis_url} if redis_url else {}),
        **env,
    }
    return spawn_serve(tmp_path, name=name, **settings)


@contextmanager
def cluster(tmp_path: Path, *, nodes: int = 2, **env: str) -> Iterator[Cluster]:
    """Start ``nodes`` servers on one fresh Postgres schema and Redis (via a proxy)."""
    redis_host, redis_port = check_redis()
    check_postgres()
    background = BackgroundLoop()
    schema: AbstractAsyncContextManager[str] = postgres_schema()
    servers: list[ServeProcess] = []
    proxy = TcpProxy(redis_host, redis_port)
    try:
        database_url = background.run(schema.__aenter__())
        background.run(proxy.start())
        db = urlsplit(REDIS_URL).path or "/0"
        for index in range(nodes):
            server = start_node(
                tmp_path,
                f"node{index + 1}",
                database_url=database_url,
                redis_url=f"redis://127.0.0.1:{proxy.port}{db}",
                **env,
            )
            servers.append(server)
            server.wait_healthy(60)  # one at a time: the first applies the migrations
        yield Cluster(servers, proxy, background)
    finally:
        for server in servers:
            server.stop()
        try:
            background.run(proxy.close())
            background.run(schema.__aexit__(None, None, None))
        finally:
            background.close()
