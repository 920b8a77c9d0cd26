"""SQLite backend (the embedded default) over aiosqlite.

One connection, so transactions are serialized with an asyncio lock: statements
of two coroutines must never interleave on it. Writes use ``BEGIN IMMEDIATE``
so that a second process on the same file waits for the write lock (bounded by
``busy_timeout``) instead of reading state that is about to change.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite

_PLACEHOLDER = re.compile(r"\$(\d+)")


def sqlite_path(url: str) -> str:
    """``sqlite:///var/huddle.db`` → ``var/huddle.db``; ``sqlite:////abs`` → ``/abs``."""
    path = urlsplit(url).path
    if path.startswith("//"):
        return path[1:]
    return path.lstrip("/") or ":memory:"


class _SqliteTx:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, *args: object) -> list[Mapping[str, Any]]:
        async with self._connection.execute(_PLACEHOLDER.sub(r"?\1", sql), args) as cursor:
            rows = await cursor.fetchall()
        return [dict(row) for row in rows]

    async def execute(self, sql: str, *args: object) -> None:
        await self._connection.execute(_PLACEHOLDER.sub(r"?\1", sql), args)

    async def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        if rows:
            await self._connection.executemany(_PLACEHOLDER.sub(r"?\1", sql), rows)


class SqliteBackend:
    name = "sqlite"
    lock_suffix = ""  # BEGIN IMMEDIATE already holds the database's write lock
    claim_suffix = ""
    unavailable_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError, OSError)
    retryable_errors: tuple[type[BaseException], ...] = ()  # one writer at a time

    def __init__(self, url: str) -> None:
        self._path = sqlite_path(url)
        self._connection: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(self._path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA foreign_keys=ON")
        await connection.execute("PRAGMA busy_timeout=5000")
        await connection.execute("PRAGMA synchronous=NORMAL")
        self._connection = connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await connection.close()

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_SqliteTx]:
        async with self._lock:
            connection = self._connection
            if connection is None:
                raise sqlite3.OperationalError("the SQLite store is closed")
            await connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTx(connection)
            except BaseException:
                await asyncio.shield(connection.rollback())
                raise
            else:
                await connection.commit()

    def to_db_time(self, value: datetime | None) -> object:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def from_db_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(value)
