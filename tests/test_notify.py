"""Notifications: payload, signatures, outbox delivery, retries, breaker, restarts.

Webhooks go to a real aiohttp server on 127.0.0.1 from a real outbox (a SQLite
store in the test's folder); timings are shortened through the notifier's
constructor, and every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY, CollectorRegistry

from server.metrics import Metrics
from server.notify import (
    CircuitState,
    CountingMetrics,
    LogNotifier,
    Notification,
    WebhookNotifier,
    encode_body,
    notification_metrics,
    outbox_message,
    sign,
    verify,
)
from server.store import SqlStore, create_store
from tests.support.polling import eventually
from tests.support.serve import free_port
from tests.support.services import postgres_schema

SECRET = "s3cret-for-tests"
FAST: dict[str, Any] = {
    "timeout": 2.0,
    "backoff_base": 0.01,
    "backoff_cap": 0.05,
    "lease": 3.0,
    "poll_interval": 0.05,
}


def make_notification(event: str = "call.ringing", call_id: str = "c1") -> Notification:
    return Notification(
        event=event,
        call_id=call_id,
        conversation_id="conv1",
        recipient_ids=("bob", "carol"),
        occurred_at=datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC),
        data={"caller_id": "ana", "call_type": "video"},
    )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint: records requests, answers with scripted statuses."""

    statuses: deque[int] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    hold: asyncio.Event | None = None
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read()))
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.statuses.popleft() if self.statuses else 200)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))


def make_app(receiver: Receiver) -> web.Application:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    return app


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.server = TestServer(make_app(r), host="127.0.0.1")
    await r.server.start_server()
    try:
        yield r
    finally:
        if r.hold is not None:
            r.hold.set()
        await r.server.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = create_store(f"sqlite:///{tmp_path}/outbox.db", timeout_s=5.0, metrics=Metrics())
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def notifiers(store: SqlStore) -> AsyncIterator[Callable[..., WebhookNotifier]]:
    """Builds notifiers over the test's outbox and closes every one after the test."""
    made: list[WebhookNotifier] = []

    def build(url: str, **kwargs: Any) -> WebhookNotifier:
        options = {**FAST, **kwargs}
        n = WebhookNotifier(store, url, SECRET, metrics=CountingMetrics(), **options)
        made.append(n)
        return n

    yield build
    for n in made:
        await asyncio.wait_for(n.close(), 10)


async def enqueue(
    store: SqlStore, notifier: WebhookNotifier, *notifications: Notification
) -> list[str]:
    """Commit ``notifications`` to the outbox, as a transition does; their ids."""
    messages = [outbox_message(n) for n in notifications]
    await store.enqueue_outbox(messages)
    notifier.wake()
    return [m.message_id for m in messages]


def body_json(req: Received) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(req.body)
    return body


def counts(n: WebhookNotifier) -> CountingMetrics:
    assert isinstance(n.metrics, CountingMetrics)
    return n.metrics


# -- payload and signatures ---------------------------------------------------


def test_notification_json_shape() -> None:
    n = Notification(
        event="call.ended",
        call_id="c1",
        conversation_id="conv1",
        recipient_ids=("bob",),
        occurred_at=datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2))),
        data={"end_reason": "completed"},
    )
    assert n.to_json() == {
        "event": "call.ended",
        "call_id": "c1",
        "conversation_id": "conv1",
        "recipient_ids": ["bob"],
        "occurred_at": "2024-05-06T07:08:09Z",
        "data": {"end_reason": "completed"},
    }
    assert json.loads(encode_body(n, "id-1")) == {**n.to_json(), "notification_id": "id-1"}


def test_notification_is_validated_and_immutable() -> None:
    with pytest.raises(ValueError, match="unknown notification event"):
        make_notification(event="call.exploded")
    with pytest.raises(ValueError, match="timezone-aware"):
        Notification("call.missed", "c", "v", ("u",), datetime(2024, 1, 1), {})
    data: dict[str, object] = {"caller_id": "ana"}
    n = Notification("call.missed", "c", "v", ("u",), datetime.now(UTC), data)
    data["caller_id"] = "mallory"
    assert n.data["caller_id"] == "ana"
    assert hash(n) == hash(n)


def test_body_serialises_datetimes_in_data() -> None:
    n = Notification(
        "call.participant_joined",
        "c",
        "v",
        ("u",),
        datetime.now(UTC),
        {"joined_at": datetime(2024, 1, 1, tzinfo=UTC), "user_id": "u"},
    )
    assert json.loads(encode_body(n, "i"))["data"]["joined_at"] == "2024-01-01T00:00:00Z"


def test_sign_and_verify() -> None:
    body = b'{"event":"call.ringing"}'
    ts = int(time.time())
    sig = sign(SECRET, ts, body)
    assert sig.startswith("sha256=") and len(sig) == len("sha256=") + 64
    assert verify(SECRET, str(ts), body, sig)
    assert verify(SECRET.encode(), ts, body, sig)
    assert not verify("other", ts, body, sig)
    assert not verify(SECRET, ts, body + b" ", sig)
    assert not verify(SECRET, ts + 1, body, sig)
    assert not verify(SECRET, ts, body, sig.upper())
    assert not verify(SECRET, ts, body, "sha256=ünïcode")
    assert not verify(SECRET, "yesterday", body, sig)
    # Replay protection: a correct signature with an old timestamp is refused.
    old = ts - 301
    assert not verify(SECRET, old, body, sign(SECRET, old, body))
    assert verify(SECRET, old, body, sign(SECRET, old, body), tolerance_s=400)


def test_signed_string_is_timestamp_dot_body() -> None:
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, b"{}") == "sha256=" + expected


def test_constructor_validation(store: SqlStore) -> None:
    with pytest.raises(ValueError):
        WebhookNotifier(store, "ftp://example.invalid/", SECRET)
    with pytest.raises(ValueError):
        WebhookNotifier(store, "http://127.0.0.1:1/hook", "")
    with pytest.raises(ValueError):
        WebhookNotifier(store, "http://127.0.0.1:1/hook", SECRET, timeout=10, lease=5)


def test_unserialisable_data_fails_when_queued() -> None:
    # The body is fixed when the row is written (inside the transition), so a
    # bad payload is a bug that shows at once, not a poisoned row.
    bad = Notification("call.ended", "c", "v", ("u",), datetime.now(UTC), {"x": object()})
    with pytest.raises(TypeError):
        outbox_message(bad)


async def test_log_notifier_logs_at_info(caplog: pytest.LogCaptureFixture) -> None:
    notifier = LogNotifier()
    with caplog.at_level(logging.INFO, logger="server.notify"):
        notifier.notify(make_notification())
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.args is not None and "call.ringing" in record.args
    assert "bob,carol" in record.getMessage()


# -- webhook delivery from the outbox -------------------------------------------


async def test_delivers_signed_webhook_with_idempotency_id(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    notifier = notifiers(receiver.url)
    await notifier.start()
    n = make_notification()
    [message_id] = await enqueue(store, notifier, n)
    await eventually(lambda: counts(notifier).sent == 1)

    [req] = receiver.requests
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Huddle-Event"] == "call.ringing"
    assert req.headers["X-Huddle-Notification-Id"] == message_id
    assert abs(int(req.headers["X-Huddle-Timestamp"]) - time.time()) < 60
    assert verify(
        SECRET, req.headers["X-Huddle-Timestamp"], req.body, req.headers["X-Huddle-Signature"]
    )
    assert body_json(req) == {**n.to_json(), "notification_id": message_id}
    assert counts(notifier).failed == 0
    assert notifier.circuit_state is CircuitState.CLOSED
    assert await store.outbox_pending() == 0  # delivered rows are deleted


@pytest.mark.parametrize("transient", [500, 503, 429])
async def test_transient_errors_are_retried_with_the_same_id(
    receiver: Receiver,
    notifiers: Callable[..., WebhookNotifier],
    store: SqlStore,
    transient: int,
) -> None:
    receiver.statuses.extend([transient, transient, 200])
    notifier = notifiers(receiver.url)
    await notifier.start()
    [message_id] = await enqueue(store, notifier, make_notification())
    await eventually(lambda: counts(notifier).sent == 1)

    assert len(receiver.requests) == 3
    assert counts(notifier).retried == 2 and counts(notifier).failed == 0
    # Every attempt is signed afresh and verifies, under one idempotency id.
    for req in receiver.requests:
        ts, sig = req.headers["X-Huddle-Timestamp"], req.headers["X-Huddle-Signature"]
        assert verify(SECRET, ts, req.body, sig)
        assert req.headers["X-Huddle-Notification-Id"] == message_id
    assert len({req.body for req in receiver.requests}) == 1


async def test_retries_stop_after_max_attempts(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    receiver.statuses.extend([500] * 10)
    notifier = notifiers(receiver.url, max_attempts=3, breaker_threshold=10)
    await notifier.start()
    await enqueue(store, notifier, make_notification())
    await eventually(lambda: counts(notifier).failed == 1)
    assert len(receiver.requests) == 3
    assert counts(notifier).sent == 0
    assert notifier.circuit_state is CircuitState.CLOSED
    assert await store.outbox_pending() == 0  # kept as dead, not due again


async def test_client_error_is_not_retried(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    receiver.statuses.extend([400])
    notifier = notifiers(receiver.url, breaker_threshold=1)
    await enqueue(store, notifier, make_notification(call_id="rejected"))
    await enqueue(store, notifier, make_notification(call_id="accepted"))
    await notifier.start()
    await eventually(lambda: counts(notifier).sent == 1 and counts(notifier).failed == 1)

    call_ids = sorted(body_json(r)["call_id"] for r in receiver.requests)
    assert call_ids == ["accepted", "rejected"]
    assert await store.outbox_pending() == 0  # the rejected one is dead: never retried
    # A 4xx shows the receiver is up: it does not trip the breaker.
    assert notifier.circuit_state is CircuitState.CLOSED


async def test_dead_endpoint_opens_breaker_and_nothing_is_lost(
    notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    port = free_port()
    notifier = notifiers(
        f"http://127.0.0.1:{port}/hook", max_attempts=10, breaker_threshold=2, breaker_reset=0.3
    )
    await notifier.start()
    ids = await enqueue(
        store, notifier, make_notification(call_id="a"), make_notification(call_id="b")
    )
    await eventually(lambda: notifier.circuit_state is CircuitState.OPEN, interval=0.01)
    attempts_when_opened = counts(notifier).retried

    # While open, new notifications wait in the outbox: no attempt, no loss.
    ids += await enqueue(store, notifier, *(make_notification(call_id=f"w{i}") for i in range(5)))
    assert await store.outbox_pending() == 7
    assert counts(notifier).retried == attempts_when_opened

    # The endpoint comes back on the same port: a trial closes the circuit and
    # every notification arrives, each once.
    receiver = Receiver()
    receiver.server = TestServer(make_app(receiver), host="127.0.0.1", port=port)
    await receiver.server.start_server()
    try:
        await eventually(lambda: counts(notifier).sent == 7)
        assert notifier.circuit_state is CircuitState.CLOSED
        delivered = [r.headers["X-Huddle-Notification-Id"] for r in receiver.requests]
        assert sorted(delivered) == sorted(ids)
        assert await store.outbox_pending() == 0
    finally:
        await receiver.server.close()


async def test_failed_trial_reopens_breaker(
    notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    notifier = notifiers(url, max_attempts=10, breaker_threshold=1, breaker_reset=0.2)
    await notifier.start()
    await enqueue(store, notifier, make_notification())
    await eventually(lambda: notifier.circuit_state is CircuitState.OPEN, interval=0.01)
    # The trial, after the reset.
    await eventually(lambda: counts(notifier).retried == 2, interval=0.01)
    assert notifier.circuit_state is CircuitState.OPEN
    assert counts(notifier).failed == 0
    assert await store.outbox_pending() == 1


async def test_close_is_idempotent_bounded_and_keeps_the_row(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    receiver.hold = asyncio.Event()  # the endpoint accepts and never answers
    notifier = notifiers(receiver.url, timeout=30.0, lease=60.0)
    await notifier.start()
    await enqueue(store, notifier, make_notification(call_id="in-flight"))
    await enqueue(store, notifier, make_notification(call_id="queued"))
    await eventually(lambda: len(receiver.requests) == 1)

    # Bounded: both closes return without waiting out the 30 s request timeout.
    await asyncio.wait_for(asyncio.gather(notifier.close(), notifier.close()), 5)
    await asyncio.wait_for(notifier.close(), 1)
    assert counts(notifier).sent == 0
    assert await store.outbox_pending() == 2  # both survive, to be delivered later


async def test_a_notification_survives_a_restart_and_is_delivered_once(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    # The first process queues it and stops before it could deliver (its
    # receiver is down); the next one, on the same database, delivers it once.
    first = notifiers(f"http://127.0.0.1:{free_port()}/hook", breaker_threshold=1)
    await first.start()
    [message_id] = await enqueue(store, first, make_notification(call_id="durable"))
    await eventually(lambda: first.circuit_state is CircuitState.OPEN, interval=0.01)
    await first.close()
    assert await store.outbox_pending() == 1

    second = notifiers(receiver.url)
    await second.start()
    await eventually(lambda: counts(second).sent == 1, timeout=10)
    assert await store.outbox_pending() == 0  # delivered and deleted: no second delivery
    [req] = receiver.requests
    assert req.headers["X-Huddle-Notification-Id"] == message_id
    assert body_json(req)["notification_id"] == message_id


async def test_prometheus_metrics_in_own_registry(receiver: Receiver, store: SqlStore) -> None:
    registry = CollectorRegistry()
    metrics = notification_metrics(registry)
    # A second registry gets its own counters: nothing global is touched.
    notification_metrics(CollectorRegistry())
    assert REGISTRY.get_sample_value("video_notification_sent_total") is None

    receiver.statuses.extend([500, 400])
    notifier = WebhookNotifier(store, receiver.url, SECRET, metrics=metrics, **FAST)
    try:
        await notifier.start()
        await enqueue(store, notifier, make_notification())
        await eventually(
            lambda: registry.get_sample_value("video_notification_failed_total") == 1.0
        )
        await enqueue(store, notifier, make_notification())
        await eventually(lambda: registry.get_sample_value("video_notification_sent_total") == 1.0)
    finally:
        await notifier.close()
    assert registry.get_sample_value("video_notification_retried_total") == 1.0


async def test_two_nodes_share_a_postgres_outbox_and_deliver_each_once(
    receiver: Receiver,
) -> None:
    async with postgres_schema() as url:
        stores = [create_store(url, timeout_s=5.0, metrics=Metrics()) for _ in range(2)]
        for s in stores:
            await s.open()
        nodes = [
            # Small batches, so that both nodes claim while the other delivers.
            WebhookNotifier(s, receiver.url, SECRET, metrics=CountingMetrics(), batch=5, **FAST)
            for s in stores
        ]
        try:
            ids = await enqueue(
                stores[0], nodes[0], *(make_notification(call_id=f"c{i}") for i in range(40))
            )
            for node in nodes:
                await node.start()
                node.wake()
            await eventually(lambda: sum(counts(n).sent for n in nodes) == 40, timeout=15)
            delivered = [r.headers["X-Huddle-Notification-Id"] for r in receiver.requests]
            assert sorted(delivered) == sorted(ids)  # each once, none twice
            assert await stores[1].outbox_pending() == 0
        finally:
            for node in nodes:
                await node.close()
            for s in stores:
                await s.close()


async def test_dead_rows_are_kept_then_purged(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], store: SqlStore
) -> None:
    receiver.statuses.extend([410, 410])
    keeper = notifiers(receiver.url)  # dead rows kept for days
    await keeper.start()
    await enqueue(store, keeper, make_notification())
    await eventually(lambda: counts(keeper).failed == 1)
    assert await store.outbox_dead() == 1
    await keeper.close()

    purger = notifiers(receiver.url, keep_dead=0.0, purge_interval=0.0)
    await purger.start()

    async def purged() -> bool:
        return await store.outbox_dead() == 0

    await eventually(purged, timeout=5, message="dead rows purged")
