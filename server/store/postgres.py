"""Postgres backend over an asyncpg pool (CockroachDB-compatible SQL).

A call is loaded for mutation with ``SELECT … FOR UPDATE``: concurrent joins of
one call serialize on its row, in the database, whichever node they come from.

Every wait is bounded: the store cancels a transaction at ``HUDDLE_DB_TIMEOUT``,
and a cancelled transaction's connection is terminated at once rather than
rolled back or reset, because on a frozen server the rollback, the reset and
asyncpg's query cancellation would each wait forever (a terminated connection
rolls back on the server side anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)


class ConciseRetryLog(logging.Filter):
    """Turns asyncpg's pool-maintenance warnings into one line each.

    During an outage asyncpg retries the pool's connection floor with
    growing delays and logs each failure at WARNING with a full traceback;
    this keeps the record but replaces the traceback by the error's one-line
    summary.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            detail = str(error) or type(error).__name__
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {detail}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_CONCISE = ConciseRetryLog()


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
    claim_suffix = " FOR UPDATE SKIP LOCKED"
    #: SQLSTATE 40001 (CockroachDB's "restart transaction", Postgres at
    #: SERIALIZABLE or REPEATABLE READ) and 40P01 (deadlock detected).
    retryable_errors: tuple[type[BaseException], ...] = (
        asyncpg.SerializationError,
        asyncpg.DeadlockDetectedError,
    )
    unavailable_errors: tuple[type[BaseException], ...] = (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    )

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        release_timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._release_timeout_s = release_timeout_s
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        pool_logger = logging.getLogger("asyncpg.pool")
        if _CONCISE not in pool_logger.filters:
            pool_logger.addFilter(_CONCISE)
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
                # A frozen server would hold a graceful close forever.
                await asyncio.wait_for(pool.close(), self._release_timeout_s)
            except Exception:  # dead, frozen or timed out: must not block shutdown
                pool.terminate()

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_PostgresTx]:
        pool = self._pool
        if pool is None:
            raise asyncpg.InterfaceError("the Postgres store is closed")
        connection = await pool.acquire()
        try:
            transaction = connection.transaction(readonly=not write)
            await transaction.start()
            try:
                yield _PostgresTx(connection)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError | TimeoutError) and not (
                    connection.is_closed()
                ):
                    await transaction.rollback()
                raise
            else:
                await transaction.commit()
        except (asyncio.CancelledError, TimeoutError):
            # Timed out (or shutting down): the server may be frozen, so neither
            # roll back nor reset; drop the connection and let the pool replace it.
            connection.terminate()
            raise
        finally:
            with contextlib.suppress(Exception):
                await pool.release(connection, timeout=self._release_timeout_s)

    def to_db_time(self, value: datetime | None) -> object:
        return value

    def from_db_time(self, value: Any) -> datetime | None:
        return value if value is None or isinstance(value, datetime) else None
