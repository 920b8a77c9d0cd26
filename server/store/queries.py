"""The queries of conversations and of the notification outbox, parts of
:class:`server.store.sql.SqlStore` (which holds those of calls)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from server.models import Conversation, OutboxMessage, utcnow
from server.store.base import Backend, Tx

R = TypeVar("R")


class Queries:
    """Mixed into :class:`~server.store.sql.SqlStore`, which provides ``_backend`` and ``_run``."""

    _backend: Backend

    async def _run(self, operation: str, body: Callable[[Tx], Awaitable[R]], *, write: bool) -> R:
        raise NotImplementedError


class ConversationQueries(Queries):
    async def create_conversation(self, conversation: Conversation) -> None:
        t = self._backend.to_db_time

        async def body(tx: Tx) -> None:
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

        await self._run("create_conversation", body, write=True)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        async def body(tx: Tx) -> Conversation | None:
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

        return await self._run("get_conversation", body, write=False)


class OutboxQueries(Queries):
    # -- notification outbox -----------------------------------------------

    async def _write_outbox(self, tx: Tx, messages: Sequence[OutboxMessage]) -> None:
        t = self._backend.to_db_time
        await tx.executemany(
            "INSERT INTO notification_outbox (message_id, event, call_id, body, created_at, "
            "next_attempt_at, attempts) VALUES ($1, $2, $3, $4, $5, $6, 0)",
            [
                (m.message_id, m.event, m.call_id, m.body, t(m.created_at), t(m.created_at))
                for m in messages
            ],
        )

    async def enqueue_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        async def body(tx: Tx) -> None:
            await self._write_outbox(tx, messages)

        await self._run("enqueue_outbox", body, write=True)

    async def claim_outbox(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        """Take up to ``limit`` due messages; none is due again before ``lease_until``,
        so another node (or this one after a crash) retries it only after the lease."""
        t = self._backend.to_db_time
        f = self._backend.from_db_time

        async def body(tx: Tx) -> list[OutboxMessage]:
            rows = await tx.fetch(
                "SELECT message_id, event, call_id, body, created_at, attempts"
                " FROM notification_outbox WHERE dead_at IS NULL AND next_attempt_at <= $1"
                f" ORDER BY next_attempt_at LIMIT $2{self._backend.claim_suffix}",
                t(now),
                limit,
            )
            await tx.executemany(
                "UPDATE notification_outbox SET next_attempt_at = $2 WHERE message_id = $1",
                [(row["message_id"], t(lease_until)) for row in rows],
            )
            messages = []
            for row in rows:
                created_at = f(row["created_at"])
                assert created_at is not None
                messages.append(
                    OutboxMessage(
                        message_id=row["message_id"],
                        event=row["event"],
                        call_id=row["call_id"],
                        body=row["body"],
                        created_at=created_at,
                        attempts=int(row["attempts"]),
                    )
                )
            return messages

        return await self._run("claim_outbox", body, write=True)

    async def outbox_delivered(self, message_id: str) -> None:
        async def body(tx: Tx) -> None:
            await tx.execute("DELETE FROM notification_outbox WHERE message_id = $1", message_id)

        await self._run("outbox_delivered", body, write=True)

    async def outbox_failed(
        self, message_id: str, *, attempts: int, error: str, retry_at: datetime | None
    ) -> None:
        """Record a failed attempt: due again at ``retry_at``, or dead when it is None."""
        t = self._backend.to_db_time
        now = t(utcnow())

        async def body(tx: Tx) -> None:
            if retry_at is None:
                await tx.execute(
                    "UPDATE notification_outbox SET attempts = $2, last_error = $3,"
                    " dead_at = $4 WHERE message_id = $1",
                    message_id,
                    attempts,
                    error[:500],
                    now,
                )
            else:
                await tx.execute(
                    "UPDATE notification_outbox SET attempts = $2, last_error = $3,"
                    " next_attempt_at = $4 WHERE message_id = $1",
                    message_id,
                    attempts,
                    error[:500],
                    t(retry_at),
                )

        await self._run("outbox_failed", body, write=True)

    async def purge_outbox(self, *, dead_before: datetime) -> int:
        """Delete rows given up on before ``dead_before``; returns how many."""
        t = self._backend.to_db_time

        async def body(tx: Tx) -> int:
            rows = await tx.fetch(
                "SELECT COUNT(*) AS n FROM notification_outbox WHERE dead_at < $1",
                t(dead_before),
            )
            await tx.execute("DELETE FROM notification_outbox WHERE dead_at < $1", t(dead_before))
            return int(rows[0]["n"])

        return await self._run("purge_outbox", body, write=True)

    async def outbox_dead(self) -> int:
        async def body(tx: Tx) -> int:
            rows = await tx.fetch(
                "SELECT COUNT(*) AS n FROM notification_outbox WHERE dead_at IS NOT NULL"
            )
            return int(rows[0]["n"])

        return await self._run("outbox_dead", body, write=False)

    async def outbox_pending(self) -> int:
        async def body(tx: Tx) -> int:
            rows = await tx.fetch(
                "SELECT COUNT(*) AS n FROM notification_outbox WHERE dead_at IS NULL"
            )
            return int(rows[0]["n"])

        return await self._run("outbox_pending", body, write=False)

    # -- mapping -----------------------------------------------------------
