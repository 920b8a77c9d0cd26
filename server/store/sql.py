"""The SQL store shared by every backend: queries, row mapping, timeouts, metrics.

Backends (:mod:`server.store.sqlite`, :mod:`server.store.postgres`) only open
connections and transactions; every query, the mapping to domain records, the
per-call timeout and the ``db_query_*`` metrics live here once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Protocol, TypeVar

from server.errors import NotFound
from server.models import (
    Call,
    OutboxMessage,
    Participant,
)
from server.store.base import Backend, StoreConflict, StoreTimeout, StoreUnavailable, Tx
from server.store.queries import ConversationQueries, OutboxQueries
from server.store.rows import call_from_row, call_row, participant_from_row

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Attempts of one transaction that keeps hitting serialization failures.
#: N transactions racing on one row (N people joining one ringing call) commit
#: one per round in the worst case, so the last needs N attempts: 10 covers a
#: group call's simultaneous answers, and the DB timeout still bounds them all.
MAX_ATTEMPTS = 10
RETRY_BASE_S = 0.01
RETRY_CAP_S = 0.2
#: Bound on applying migrations at startup (when longer than the DB timeout).
MIGRATION_TIMEOUT_S = 60.0

_CALL_COLUMNS = (
    "call_id, conversation_id, caller_id, call_type, status, mode, end_reason, "
    "created_at, updated_at, started_at, ended_at"
)
_PARTICIPANT_COLUMNS = (
    "call_id, user_id, position, name, invited, invited_at, joined_at, left_at, "
    "declined_at, muted, video"
)


class DbMetrics(Protocol):
    def db_query(self, operation: str, seconds: float) -> None: ...

    def db_timeout(self, operation: str) -> None: ...

    def db_retry(self, operation: str) -> None: ...


def migrations(backend_name: str) -> list[tuple[int, str]]:
    """The versioned migrations shipped for a backend, in order."""
    folder = resources.files("server.store").joinpath("migrations", backend_name)
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


class SqlStore(ConversationQueries, OutboxQueries):
    """:class:`server.store.base.Store` over any :class:`Backend`."""

    def __init__(self, backend: Backend, *, timeout_s: float, metrics: DbMetrics) -> None:
        self._backend = backend
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._opened = False

    @property
    def backend_name(self) -> str:
        return self._backend.name

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Connect (bounded by the DB timeout like every other wait: a frozen server
        fails this attempt instead of hanging startup), then migrate (bounded by
        :data:`MIGRATION_TIMEOUT_S` at least, as schema changes may be slow on
        CockroachDB)."""
        bound = self._timeout_s
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._backend.connect()
            bound = max(self._timeout_s, MIGRATION_TIMEOUT_S)
            async with asyncio.timeout(bound):
                await self._migrate()
        except TimeoutError:
            await self._backend.close()
            raise StoreUnavailable(
                f"the {self._backend.name} database did not answer within {bound:g} s"
            ) from None
        except self._backend.unavailable_errors as exc:
            await self._backend.close()
            raise StoreUnavailable(
                f"cannot reach the {self._backend.name} database: {exc}"
            ) from exc
        self._opened = True

    async def close(self) -> None:
        self._opened = False
        await self._backend.close()

    async def _migrate(self) -> None:
        async with self._backend.transaction(write=True) as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            rows = await tx.fetch("SELECT version FROM schema_migrations")
            applied = {int(row["version"]) for row in rows}
            for version, script in migrations(self._backend.name):
                if version in applied:
                    continue
                logger.info("applying %s migration %04d", self._backend.name, version)
                for statement in _statements(script):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    version,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                )

    async def _run(self, operation: str, body: Callable[[Tx], Awaitable[R]], *, write: bool) -> R:
        """Run ``body`` in one transaction, all attempts bounded by the DB timeout.

        A serialization failure (SQLSTATE 40001, which CockroachDB and Postgres at
        ``SERIALIZABLE`` raise when two transactions conflict) or a deadlock rolls
        the transaction back; ``body`` then runs again in a fresh one, after a
        jittered backoff, up to :data:`MAX_ATTEMPTS` times in all.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    try:
                        async with self._backend.transaction(write=write) as tx:
                            return await body(tx)
                    except self._backend.retryable_errors as exc:
                        if attempt == MAX_ATTEMPTS:
                            raise StoreConflict(
                                f"{operation} kept conflicting with concurrent "
                                f"transactions ({attempt} attempts): {exc}"
                            ) from exc
                        self._metrics.db_retry(operation)
                        delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1))
                        logger.info(
                            "%s: serialization conflict (attempt %d/%d), retrying: %s",
                            operation,
                            attempt,
                            MAX_ATTEMPTS,
                            exc,
                        )
                        await asyncio.sleep(random.uniform(delay / 2, delay))
                raise AssertionError("unreachable")  # the loop returns or raises
        except TimeoutError:
            self._metrics.db_timeout(operation)
            raise StoreTimeout(
                f"the database did not answer within {self._timeout_s:g} s"
            ) from None
        except self._backend.unavailable_errors as exc:
            raise StoreUnavailable(f"the database is unavailable: {exc}") from exc
        finally:
            self._metrics.db_query(operation, time.perf_counter() - started)

    async def ping(self) -> None:
        async def body(tx: Tx) -> None:
            await tx.fetch("SELECT 1 AS ok")

        await self._run("ping", body, write=False)

    # -- calls -------------------------------------------------------------

    async def create_call(self, call: Call, outbox: Sequence[OutboxMessage] = ()) -> None:
        async def body(tx: Tx) -> None:
            await tx.execute(
                f"INSERT INTO calls ({_CALL_COLUMNS}, duration_seconds) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                *call_row(self._backend, call),
            )
            await self._write_participants(tx, call)
            await self._write_outbox(tx, outbox)

        await self._run("create_call", body, write=True)

    async def get_call(self, call_id: str) -> Call | None:
        async def body(tx: Tx) -> Call | None:
            return await self._load_call(tx, call_id, lock=False)

        return await self._run("get_call", body, write=False)

    async def list_calls(
        self,
        conversation_id: str,
        *,
        limit: int,
        before: datetime | None = None,
        invited: str | None = None,
    ) -> list[Call]:
        t = self._backend.to_db_time
        where = "conversation_id = $1"
        args: list[object] = [conversation_id, limit]
        if before is not None:
            args.append(t(before))
            where += f" AND created_at < ${len(args)}"
        if invited is not None:
            args.append(invited)
            where += (
                " AND call_id IN (SELECT call_id FROM call_participants"
                f" WHERE user_id = ${len(args)} AND invited = TRUE)"
            )
        newest = f"SELECT call_id FROM calls WHERE {where} ORDER BY created_at DESC LIMIT $2"
        return await self._calls_where(
            "list_calls", f"call_id IN ({newest})", args, order="created_at DESC"
        )

    async def ringing_for(self, user_id: str, *, limit: int) -> list[Call]:
        """Live calls in which ``user_id`` is invited and has neither joined nor declined."""
        matching = (
            "SELECT p.call_id FROM call_participants p JOIN calls c ON c.call_id = p.call_id"
            " WHERE p.user_id = $1 AND p.invited = TRUE AND p.joined_at IS NULL"
            " AND p.declined_at IS NULL AND c.status <> 'ended'"
            " ORDER BY c.created_at DESC LIMIT $2"
        )
        return await self._calls_where(
            "ringing_for", f"call_id IN ({matching})", [user_id, limit], order="created_at DESC"
        )

    async def _calls_where(
        self, operation: str, where: str, args: list[object], *, order: str
    ) -> list[Call]:
        async def body(tx: Tx) -> list[Call]:
            call_rows = await tx.fetch(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE {where} ORDER BY {order}", *args
            )
            participant_rows = await tx.fetch(
                f"SELECT {_PARTICIPANT_COLUMNS} FROM call_participants "
                f"WHERE {where} ORDER BY position",
                *args,
            )
            by_call: dict[str, list[Participant]] = {}
            for row in participant_rows:
                by_call.setdefault(row["call_id"], []).append(
                    participant_from_row(self._backend, row)
                )
            return [
                call_from_row(self._backend, row, by_call.get(row["call_id"], []))
                for row in call_rows
            ]

        return await self._run(operation, body, write=False)

    async def mutate_call(
        self,
        call_id: str,
        mutate: Callable[[Call], R],
        outbox: Callable[[Call, R], Sequence[OutboxMessage]] | None = None,
    ) -> tuple[Call, R]:
        async def body(tx: Tx) -> tuple[Call, R]:
            call = await self._load_call(tx, call_id, lock=True)
            if call is None:
                raise NotFound(f"no call {call_id}", code="call_not_found")
            result = mutate(call)
            await tx.execute(
                "UPDATE calls SET status = $2, mode = $3, end_reason = $4, updated_at = $5, "
                "started_at = $6, ended_at = $7, duration_seconds = $8 WHERE call_id = $1",
                call.call_id,
                call.status.value,
                call.mode.value,
                call.end_reason.value if call.end_reason else None,
                self._backend.to_db_time(call.updated_at),
                self._backend.to_db_time(call.started_at),
                self._backend.to_db_time(call.ended_at),
                call.duration_seconds if call.ended_at else None,
            )
            await self._write_participants(tx, call)
            if outbox is not None:
                await self._write_outbox(tx, outbox(call, result))
            return call, result

        return await self._run("mutate_call", body, write=True)

    async def due_call_ids(
        self,
        *,
        ringing_before: datetime,
        started_before: datetime,
        idle_before: datetime,
        limit: int,
    ) -> list[str]:
        t = self._backend.to_db_time

        async def body(tx: Tx) -> list[str]:
            rows = await tx.fetch(
                "SELECT call_id FROM calls WHERE status <> 'ended' AND ("
                "(status = 'ringing' AND created_at <= $1) OR "
                "(status = 'active' AND started_at <= $2) OR "
                "updated_at <= $3) ORDER BY created_at LIMIT $4",
                t(ringing_before),
                t(started_before),
                t(idle_before),
                limit,
            )
            return [row["call_id"] for row in rows]

        return await self._run("due_call_ids", body, write=False)

    async def count_live_calls(self) -> int:
        async def body(tx: Tx) -> int:
            rows = await tx.fetch("SELECT COUNT(*) AS n FROM calls WHERE status <> 'ended'")
            return int(rows[0]["n"])

        return await self._run("count_live_calls", body, write=False)

    async def joined_in_live_calls(self, *, limit: int) -> list[tuple[str, str, str | None]]:
        async def body(tx: Tx) -> list[tuple[str, str, str | None]]:
            rows = await tx.fetch(
                "SELECT p.call_id, p.user_id, p.name FROM call_participants p"
                " JOIN calls c ON c.call_id = p.call_id"
                " WHERE c.status <> 'ended' AND p.joined_at IS NOT NULL AND p.left_at IS NULL"
                " ORDER BY c.created_at, p.call_id, p.position LIMIT $1",
                limit,
            )
            return [(str(r["call_id"]), str(r["user_id"]), r["name"]) for r in rows]

        return await self._run("joined_in_live_calls", body, write=False)

    # -- calls: rows --------------------------------------------------------

    async def _load_call(self, tx: Tx, call_id: str, *, lock: bool) -> Call | None:
        suffix = self._backend.lock_suffix if lock else ""
        rows = await tx.fetch(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = $1{suffix}", call_id
        )
        if not rows:
            return None
        participants = await tx.fetch(
            f"SELECT {_PARTICIPANT_COLUMNS} FROM call_participants WHERE call_id = $1 "
            "ORDER BY position",
            call_id,
        )
        return call_from_row(
            self._backend,
            rows[0],
            [participant_from_row(self._backend, row) for row in participants],
        )

    async def _write_participants(self, tx: Tx, call: Call) -> None:
        t = self._backend.to_db_time
        await tx.executemany(
            f"INSERT INTO call_participants ({_PARTICIPANT_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (call_id, user_id) DO UPDATE SET name = excluded.name, "
            "invited = excluded.invited, invited_at = excluded.invited_at, "
            "joined_at = excluded.joined_at, left_at = excluded.left_at, "
            "declined_at = excluded.declined_at, muted = excluded.muted, "
            "video = excluded.video",
            [
                (
                    call.call_id,
                    p.user_id,
                    index,
                    p.name,
                    p.invited,
                    t(p.invited_at),
                    t(p.joined_at),
                    t(p.left_at),
                    t(p.declined_at),
                    p.muted,
                    p.video,
                )
                for index, p in enumerate(call.participants)
            ],
        )
