"""Serialization failures (SQLSTATE 40001) are retried by the store.

CockroachDB runs every transaction SERIALIZABLE and asks clients to retry
conflicts; Postgres at SERIALIZABLE does the same, which is how this is tested:
the schema's connections default to SERIALIZABLE, and a second real transaction
updates the call row while the store's transaction waits for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server import lifecycle
from server.config import Limits
from server.metrics import Metrics
from server.models import Call, CallMode, CallStatus, CallType, Conversation, Participant, utcnow
from server.store import SqlStore, create_store
from tests.support.polling import eventually
from tests.support.services import postgres_schema


@pytest.fixture
async def serializable_url() -> AsyncIterator[str]:
    async with postgres_schema() as url:
        yield f"{url}&default_transaction_isolation=serializable"


@pytest.fixture
async def store(serializable_url: str) -> AsyncIterator[tuple[SqlStore, Metrics]]:
    metrics = Metrics()
    store = create_store(serializable_url, timeout_s=10.0, metrics=metrics)
    await store.open()
    yield store, metrics
    await store.close()


async def _ringing_call(store: SqlStore, callees: list[str]) -> Call:
    now = utcnow()
    conversation = Conversation(str(uuid.uuid4()), None, ["ana", *callees], "ana", now)
    await store.create_conversation(conversation)
    call = Call(
        call_id=str(uuid.uuid4()),
        conversation_id=conversation.conversation_id,
        caller_id="ana",
        call_type=CallType.AUDIO,
        status=CallStatus.RINGING,
        mode=CallMode.SFU,
        created_at=now,
        updated_at=now,
        participants=[
            Participant("ana", invited_at=now, joined_at=now),
            *(Participant(user_id, invited_at=now) for user_id in callees),
        ],
    )
    await store.create_call(call)
    return call


def _retries(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "db_transaction_retry_total", {"operation": "mutate_call"}
    )
    return value or 0.0


async def test_a_conflicting_transaction_is_retried(
    store: tuple[SqlStore, Metrics], serializable_url: str
) -> None:
    sql_store, metrics = store
    call = await _ringing_call(sql_store, ["bob"])
    other = await asyncpg.connect(serializable_url)
    watcher = await asyncpg.connect(serializable_url)
    try:
        conflicting = other.transaction(isolation="serializable")
        await conflicting.start()
        await other.execute("SELECT 1 FROM calls WHERE call_id = $1 FOR UPDATE", call.call_id)

        limits = Limits()
        join = asyncio.create_task(
            sql_store.mutate_call(
                call.call_id, lambda c: lifecycle.join(c, "bob", "Bob", utcnow(), limits)
            )
        )

        async def store_waits_for_the_lock() -> bool:
            # Blocked by exactly our conflicting transaction (other suites share
            # this Postgres, so nothing looser than that).
            rows = await watcher.fetch(
                "SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                other.get_server_pid(),
            )
            return bool(rows)

        await eventually(store_waits_for_the_lock, timeout=5, message="the store blocked")
        await other.execute(
            "UPDATE calls SET updated_at = updated_at WHERE call_id = $1", call.call_id
        )
        await conflicting.commit()  # the store's snapshot is now stale: 40001

        joined, _ = await asyncio.wait_for(join, 10)
    finally:
        await other.close()
        await watcher.close()
    assert joined.participant("bob") is not None and joined.participant("bob").is_joined  # type: ignore[union-attr]
    assert _retries(metrics) >= 1
    stored = await sql_store.get_call(call.call_id)
    assert stored is not None and stored.status is CallStatus.ACTIVE


async def test_concurrent_joins_all_land_at_serializable(
    store: tuple[SqlStore, Metrics],
) -> None:
    sql_store, _ = store
    callees = [f"user{i}" for i in range(6)]
    call = await _ringing_call(sql_store, callees)
    limits = Limits()

    def joiner(user_id: str) -> object:
        return sql_store.mutate_call(
            call.call_id, lambda c: lifecycle.join(c, user_id, None, utcnow(), limits)
        )

    await asyncio.wait_for(asyncio.gather(*(joiner(u) for u in callees)), 20)  # type: ignore[arg-type]
    stored = await sql_store.get_call(call.call_id)
    assert stored is not None
    assert sorted(p.user_id for p in stored.joined) == sorted(["ana", *callees])
