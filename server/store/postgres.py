"""Postgres backend over an asyncpg pool (CockroachDB-compatible SQL).

A call is loaded for mutation with ``SELECT … FOR UPDATE``: concurrent joins of
one call serialize on its row, in the database, whichever node they come from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg


class _PostgresTx:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, *args: object) -> list[Mapping[str, Any]]:
        return list(await self._connection.fetch(sql, *args))

    async def execute(self, sql: str, *args: object) -> None:
        await self._connection.execute(sql, *args)

    async def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        if rows:
            await self._connection.executemany(sql, rows)


class PostgresBackend:
    name = "postgres"
    lock_suffix = " FOR UPDATE"
    unavailable_errors: tuple[type[BaseException], ...] = (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    )

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, connect_timeout_s: float = 5.0
    ) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        # Unknown query parameters of the URL (e.g. ?search_path=huddle) become
        # server settings, which is how tests get a schema of their own.
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._connect_timeout_s,
            max_inactive_connection_lifetime=60.0,
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:  # a dead server must not block shutdown
                pool.terminate()

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_PostgresTx]:
        pool = self._pool
        if pool is None:
            raise asyncpg.InterfaceError("the Postgres store is closed")
        async with pool.acquire() as connection, connection.transaction(readonly=not write):
            yield _PostgresTx(connection)

    def to_db_time(self, value: datetime | None) -> object:
        return value

    def from_db_time(self, value: Any) -> datetime | None:
        return value if value is None or isinstance(value, datetime) else None
