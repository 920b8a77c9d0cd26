"""The store seam: what the call service needs from persistence, and the backend seam.

:class:`Store` is the repository the service uses. Its one write path that
matters for correctness is :meth:`Store.mutate_call`: load a call with its
participants under a database lock, apply a pure rule, write the result back,
all in one transaction. That is what keeps concurrent joins from exceeding the
participant limit or double-joining, across processes and nodes.

:class:`Backend` is the smaller seam below it (SQLite, Postgres): connections,
transactions and the few dialect differences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar

from server.errors import Unavailable
from server.models import Call, Conversation, OutboxMessage

R = TypeVar("R")


class StoreUnavailable(Unavailable):
    code = "database_unavailable"


class StoreTimeout(Unavailable):
    code = "database_timeout"


class StoreConflict(Unavailable):
    """A transaction kept failing with serialization conflicts past its retries."""

    code = "database_conflict"


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply migrations; raises StoreUnavailable when unreachable."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Round-trip to the database; raises StoreUnavailable or StoreTimeout."""

    async def create_conversation(self, conversation: Conversation) -> None: ...

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def create_call(self, call: Call, outbox: Sequence[OutboxMessage] = ()) -> None:
        """Insert a new call, and ``outbox`` in the same transaction."""

    async def get_call(self, call_id: str) -> Call | None: ...

    async def list_calls(
        self,
        conversation_id: str,
        *,
        limit: int,
        before: datetime | None = None,
        invited: str | None = None,
    ) -> list[Call]:
        """Calls of a conversation, newest first; only those ``invited`` was invited to."""

    async def ringing_for(self, user_id: str, *, limit: int) -> list[Call]:
        """Live calls in which ``user_id`` is invited and has neither joined nor declined."""

    async def mutate_call(
        self,
        call_id: str,
        mutate: Callable[[Call], R],
        outbox: Callable[[Call, R], Sequence[OutboxMessage]] | None = None,
    ) -> tuple[Call, R]:
        """Atomically load ``call_id`` under a lock, apply ``mutate``, persist.

        ``outbox(call, result)``, when given, names notifications written in the
        same transaction. Raises NotFound when the call does not exist; an
        exception from ``mutate`` rolls the transaction back and propagates. On a
        serialization failure the whole transaction, ``mutate`` included, runs
        again on freshly loaded state.
        """

    async def due_call_ids(
        self,
        *,
        ringing_before: datetime,
        started_before: datetime,
        idle_before: datetime,
        limit: int,
    ) -> list[str]:
        """Live calls that may have passed a ringing, duration or staleness limit."""

    async def count_live_calls(self) -> int: ...

    async def joined_in_live_calls(self, *, limit: int) -> list[tuple[str, str, str | None]]:
        """(call id, user id, name) of participants joined to a live call, oldest calls first."""

    async def enqueue_outbox(self, messages: Sequence[OutboxMessage]) -> None: ...

    async def claim_outbox(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]: ...

    async def outbox_delivered(self, message_id: str) -> None: ...

    async def outbox_failed(
        self, message_id: str, *, attempts: int, error: str, retry_at: datetime | None
    ) -> None: ...

    async def purge_outbox(self, *, dead_before: datetime) -> int: ...

    async def outbox_pending(self) -> int: ...


class Tx(Protocol):
    """One open transaction. SQL uses ``$1``-style placeholders."""

    async def fetch(self, sql: str, *args: object) -> list[Mapping[str, Any]]: ...

    async def execute(self, sql: str, *args: object) -> None: ...

    async def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None: ...


class Backend(Protocol):
    name: str
    #: Appended to the SELECT that loads a call for mutation.
    lock_suffix: str
    #: Appended to the SELECT that claims outbox rows (skip rows another node holds).
    claim_suffix: str
    #: Exceptions that mean "the database is unreachable" rather than a bug.
    unavailable_errors: tuple[type[BaseException], ...]
    #: Exceptions after which the whole transaction may simply run again
    #: (serialization failures, deadlocks).
    retryable_errors: tuple[type[BaseException], ...]

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self, *, write: bool) -> AbstractAsyncContextManager[Tx]: ...

    def to_db_time(self, value: datetime | None) -> object: ...

    def from_db_time(self, value: Any) -> datetime | None: ...
