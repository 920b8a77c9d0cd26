"""The SQL store shared by every backend: queries, row mapping, timeouts, metrics.

Backends (:mod:`server.store.sqlite`, :mod:`server.store.postgres`) only open
connections and transactions; every query, the mapping to domain records, the
per-call timeout and the ``db_query_*`` metrics live here once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from typing import Any, Protocol, TypeVar

from server.errors import NotFound
from server.models import (
    Call,
    CallMode,
    CallStatus,
    CallType,
    Conversation,
    EndReason,
    Participant,
)
from server.store.base import Backend, StoreTimeout, StoreUnavailable, Tx

logger = logging.getLogger(__name__)

R = TypeVar("R")

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


class SqlStore:
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
        try:
            await self._backend.connect()
            await self._migrate()
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

    @asynccontextmanager
    async def _tx(self, operation: str, *, write: bool) -> AsyncIterator[Tx]:
        """A transaction bounded by the DB timeout, timed, with errors mapped to 503s."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._backend.transaction(write=write) as tx:
                    yield tx
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
        async with self._tx("ping", write=False) as tx:
            await tx.fetch("SELECT 1 AS ok")

    # -- conversations -----------------------------------------------------

    async def create_conversation(self, conversation: Conversation) -> None:
        t = self._backend.to_db_time
        async with self._tx("create_conversation", write=True) as tx:
            await tx.execute(
                "INSERT INTO conversations (conversation_id, title, created_by, created_at) "
                "VALUES ($1, $2, $3, $4)",
                conversation.conversation_id,
                conversation.title,
                conversation.created_by,
                t(conversation.created_at),
            )
            await tx.executemany(
                "INSERT INTO conversation_members (conversation_id, user_id, position) "
                "VALUES ($1, $2, $3)",
                [
                    (conversation.conversation_id, user_id, index)
                    for index, user_id in enumerate(conversation.member_ids)
                ],
            )

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        async with self._tx("get_conversation", write=False) as tx:
            rows = await tx.fetch(
                "SELECT conversation_id, title, created_by, created_at FROM conversations "
                "WHERE conversation_id = $1",
                conversation_id,
            )
            if not rows:
                return None
            members = await tx.fetch(
                "SELECT user_id FROM conversation_members WHERE conversation_id = $1 "
                "ORDER BY position",
                conversation_id,
            )
        row = rows[0]
        created_at = self._backend.from_db_time(row["created_at"])
        assert created_at is not None
        return Conversation(
            conversation_id=row["conversation_id"],
            title=row["title"],
            member_ids=[m["user_id"] for m in members],
            created_by=row["created_by"],
            created_at=created_at,
        )

    # -- calls -------------------------------------------------------------

    async def create_call(self, call: Call) -> None:
        async with self._tx("create_call", write=True) as tx:
            await tx.execute(
                f"INSERT INTO calls ({_CALL_COLUMNS}, duration_seconds) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                *self._call_row(call),
            )
            await self._write_participants(tx, call)

    async def get_call(self, call_id: str) -> Call | None:
        async with self._tx("get_call", write=False) as tx:
            return await self._load_call(tx, call_id, lock=False)

    async def list_calls(
        self, conversation_id: str, *, limit: int, before: datetime | None = None
    ) -> list[Call]:
        t = self._backend.to_db_time
        where = "conversation_id = $1"
        args: list[object] = [conversation_id]
        if before is not None:
            where += " AND created_at < $3"
        async with self._tx("list_calls", write=False) as tx:
            newest = f"SELECT call_id FROM calls WHERE {where} ORDER BY created_at DESC LIMIT $2"
            args.append(limit)
            if before is not None:
                args.append(t(before))
            call_rows = await tx.fetch(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id IN ({newest}) "
                "ORDER BY created_at DESC",
                *args,
            )
            participant_rows = await tx.fetch(
                f"SELECT {_PARTICIPANT_COLUMNS} FROM call_participants "
                f"WHERE call_id IN ({newest}) ORDER BY position",
                *args,
            )
        by_call: dict[str, list[Participant]] = {}
        for row in participant_rows:
            by_call.setdefault(row["call_id"], []).append(self._participant(row))
        return [self._call(row, by_call.get(row["call_id"], [])) for row in call_rows]

    async def mutate_call(self, call_id: str, mutate: Callable[[Call], R]) -> tuple[Call, R]:
        async with self._tx("mutate_call", write=True) as tx:
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
        return call, result

    async def due_call_ids(
        self,
        *,
        ringing_before: datetime,
        started_before: datetime,
        idle_before: datetime,
        limit: int,
    ) -> list[str]:
        t = self._backend.to_db_time
        async with self._tx("due_call_ids", write=False) as tx:
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

    async def count_live_calls(self) -> int:
        async with self._tx("count_live_calls", write=False) as tx:
            rows = await tx.fetch("SELECT COUNT(*) AS n FROM calls WHERE status <> 'ended'")
        return int(rows[0]["n"])

    async def joined_in_live_calls(self, *, limit: int) -> list[tuple[str, str, str | None]]:
        async with self._tx("joined_in_live_calls", write=False) as tx:
            rows = await tx.fetch(
                "SELECT p.call_id, p.user_id, p.name FROM call_participants p"
                " JOIN calls c ON c.call_id = p.call_id"
                " WHERE c.status <> 'ended' AND p.joined_at IS NOT NULL AND p.left_at IS NULL"
                " ORDER BY c.created_at, p.call_id, p.position LIMIT $1",
                limit,
            )
        return [(str(r["call_id"]), str(r["user_id"]), r["name"]) for r in rows]

    # -- mapping -----------------------------------------------------------

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
        return self._call(rows[0], [self._participant(row) for row in participants])

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

    def _call_row(self, call: Call) -> tuple[object, ...]:
        t = self._backend.to_db_time
        return (
            call.call_id,
            call.conversation_id,
            call.caller_id,
            call.call_type.value,
            call.status.value,
            call.mode.value,
            call.end_reason.value if call.end_reason else None,
            t(call.created_at),
            t(call.updated_at),
            t(call.started_at),
            t(call.ended_at),
            call.duration_seconds if call.ended_at else None,
        )

    def _call(self, row: Mapping[str, Any], participants: list[Participant]) -> Call:
        f = self._backend.from_db_time
        created_at, updated_at = f(row["created_at"]), f(row["updated_at"])
        assert created_at is not None and updated_at is not None
        return Call(
            call_id=row["call_id"],
            conversation_id=row["conversation_id"],
            caller_id=row["caller_id"],
            call_type=CallType(row["call_type"]),
            status=CallStatus(row["status"]),
            mode=CallMode(row["mode"]),
            end_reason=EndReason(row["end_reason"]) if row["end_reason"] else None,
            created_at=created_at,
            updated_at=updated_at,
            started_at=f(row["started_at"]),
            ended_at=f(row["ended_at"]),
            participants=participants,
        )

    def _participant(self, row: Mapping[str, Any]) -> Participant:
        f = self._backend.from_db_time
        return Participant(
            user_id=row["user_id"],
            name=row["name"],
            invited=bool(row["invited"]),
            invited_at=f(row["invited_at"]),
            joined_at=f(row["joined_at"]),
            left_at=f(row["left_at"]),
            declined_at=f(row["declined_at"]),
            muted=bool(row["muted"]),
            video=bool(row["video"]),
        )
