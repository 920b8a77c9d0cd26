"""Notifications: payload, signatures, webhook delivery, retries, breaker, shutdown.

Webhooks go to a real aiohttp server on 127.0.0.1; timings are shortened
through the notifier's constructor, and every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY, CollectorRegistry

from server.notify import (
    DROP_CIRCUIT_OPEN,
    DROP_CLOSED,
    DROP_QUEUE_FULL,
    DROP_SHUTDOWN,
    CircuitState,
    CountingMetrics,
    LogNotifier,
    Notification,
    WebhookNotifier,
    create_notifier,
    encode_body,
    notification_metrics,
    sign,
    verify,
)

SECRET = "s3cret-for-tests"
FAST: dict[str, Any] = {
    "timeout": 2.0,
    "backoff_base": 0.01,
    "backoff_cap": 0.05,
    "close_timeout": 2.0,
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


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


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
async def notifiers() -> AsyncIterator[Callable[..., WebhookNotifier]]:
    """Builds notifiers and closes every one of them after the test."""
    made: list[WebhookNotifier] = []

    def build(url: str, **kwargs: Any) -> WebhookNotifier:
        options = {**FAST, **kwargs}
        n = WebhookNotifier(url, SECRET, metrics=CountingMetrics(), **options)
        made.append(n)
        return n

    yield build
    for n in made:
        await asyncio.wait_for(n.close(), 10)


def counts(n: WebhookNotifier) -> CountingMetrics:
    assert isinstance(n.metrics, CountingMetrics)
    return n.metrics


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


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
    assert json.loads(encode_body(n)) == n.to_json()


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
    assert json.loads(encode_body(n))["data"]["joined_at"] == "2024-01-01T00:00:00Z"


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


def test_constructor_and_factory_validation() -> None:
    with pytest.raises(ValueError):
        WebhookNotifier("ftp://example.invalid/", SECRET)
    with pytest.raises(ValueError):
        WebhookNotifier("http://127.0.0.1:1/hook", "")
    with pytest.raises(ValueError):
        create_notifier("http://127.0.0.1:1/hook", None)
    assert isinstance(create_notifier(None, None), LogNotifier)
    assert isinstance(create_notifier("http://127.0.0.1:1/hook", SECRET), WebhookNotifier)


async def test_log_notifier_logs_at_info(caplog: pytest.LogCaptureFixture) -> None:
    notifier = LogNotifier()
    await notifier.start()
    with caplog.at_level(logging.INFO, logger="server.notify"):
        notifier.notify(make_notification())
    await notifier.close()
    await notifier.close()
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.args is not None and "call.ringing" in record.args
    assert "bob,carol" in record.getMessage()


# -- webhook delivery ---------------------------------------------------------


async def test_delivers_signed_webhook(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    notifier = notifiers(receiver.url)
    await notifier.start()
    n = make_notification()
    notifier.notify(n)
    await eventually(lambda: counts(notifier).sent == 1)

    [req] = receiver.requests
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Huddle-Event"] == "call.ringing"
    assert abs(int(req.headers["X-Huddle-Timestamp"]) - time.time()) < 60
    assert verify(
        SECRET, req.headers["X-Huddle-Timestamp"], req.body, req.headers["X-Huddle-Signature"]
    )
    assert json.loads(req.body) == n.to_json()
    assert counts(notifier).failed == 0
    assert notifier.circuit_state is CircuitState.CLOSED


@pytest.mark.parametrize("transient", [500, 503, 429])
async def test_transient_errors_are_retried(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier], transient: int
) -> None:
    receiver.statuses.extend([transient, transient, 200])
    notifier = notifiers(receiver.url)
    await notifier.start()
    notifier.notify(make_notification())
    await eventually(lambda: counts(notifier).sent == 1)

    assert len(receiver.requests) == 3
    assert counts(notifier).failed == 0
    # Every attempt is signed afresh and verifies.
    for req in receiver.requests:
        ts, sig = req.headers["X-Huddle-Timestamp"], req.headers["X-Huddle-Signature"]
        assert verify(SECRET, ts, req.body, sig)


async def test_retries_stop_after_max_attempts(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    receiver.statuses.extend([500] * 10)
    notifier = notifiers(receiver.url, max_attempts=3, breaker_threshold=10)
    await notifier.start()
    notifier.notify(make_notification())
    await eventually(lambda: counts(notifier).failed == 1)
    assert len(receiver.requests) == 3
    assert counts(notifier).sent == 0
    assert notifier.circuit_state is CircuitState.CLOSED


async def test_client_error_is_not_retried(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    receiver.statuses.extend([400])
    notifier = notifiers(receiver.url, breaker_threshold=1)
    await notifier.start()
    notifier.notify(make_notification(call_id="rejected"))
    notifier.notify(make_notification(call_id="accepted"))
    # One worker delivers in order: once the second has arrived, the first
    # has had every chance to be retried.
    await eventually(lambda: counts(notifier).sent == 1)

    call_ids = [json.loads(r.body)["call_id"] for r in receiver.requests]
    assert call_ids == ["rejected", "accepted"]
    assert counts(notifier).failed == 1
    # A 4xx shows the receiver is up: it does not trip the breaker.
    assert notifier.circuit_state is CircuitState.CLOSED


async def test_dead_endpoint_opens_breaker_then_trial_closes_it(
    notifiers: Callable[..., WebhookNotifier],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    notifier = notifiers(url, max_attempts=2, breaker_threshold=2, breaker_reset=0.3)
    await notifier.start()

    notifier.notify(make_notification(call_id="a"))
    notifier.notify(make_notification(call_id="b"))
    await eventually(lambda: notifier.circuit_state is CircuitState.OPEN)
    assert counts(notifier).failed == 2

    # While open, notify() drops at once and queues nothing.
    started = time.perf_counter()
    for i in range(50):
        notifier.notify(make_notification(call_id=f"dropped-{i}"))
    assert time.perf_counter() - started < 0.5
    assert notifier.pending == 0
    assert counts(notifier).dropped[DROP_CIRCUIT_OPEN] == 50

    # The endpoint comes back on the same port.
    receiver = Receiver()
    receiver.server = TestServer(make_app(receiver), host="127.0.0.1", port=port)
    await receiver.server.start_server()
    try:
        await eventually(lambda: notifier.circuit_state is CircuitState.HALF_OPEN)
        notifier.notify(make_notification(call_id="trial"))
        await eventually(lambda: counts(notifier).sent == 1)
        assert notifier.circuit_state is CircuitState.CLOSED
        assert [json.loads(r.body)["call_id"] for r in receiver.requests] == ["trial"]

        notifier.notify(make_notification(call_id="after"))
        await eventually(lambda: counts(notifier).sent == 2)
    finally:
        await receiver.server.close()


async def test_failed_trial_reopens_breaker(
    notifiers: Callable[..., WebhookNotifier],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    notifier = notifiers(url, max_attempts=3, breaker_threshold=1, breaker_reset=0.2)
    await notifier.start()
    notifier.notify(make_notification())
    await eventually(lambda: notifier.circuit_state is CircuitState.OPEN)

    await eventually(lambda: notifier.circuit_state is CircuitState.HALF_OPEN)
    notifier.notify(make_notification(call_id="trial"))
    await eventually(lambda: counts(notifier).failed == 2)
    assert notifier.circuit_state is CircuitState.OPEN
    notifier.notify(make_notification(call_id="dropped"))
    assert counts(notifier).dropped[DROP_CIRCUIT_OPEN] == 1


async def test_queue_overflow_drops_and_counts(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    notifier = notifiers(receiver.url, queue_size=2)
    # Not started yet: nothing drains the queue.
    for i in range(5):
        notifier.notify(make_notification(call_id=str(i)))
    assert notifier.pending == 2
    assert counts(notifier).dropped[DROP_QUEUE_FULL] == 3

    await notifier.start()
    await eventually(lambda: counts(notifier).sent == 2)
    assert [json.loads(r.body)["call_id"] for r in receiver.requests] == ["0", "1"]


async def test_close_drains_queue(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    notifier = notifiers(receiver.url)
    await notifier.start()
    for i in range(5):
        notifier.notify(make_notification(call_id=str(i)))
    await asyncio.wait_for(notifier.close(), 5)
    assert counts(notifier).sent == 5
    assert len(receiver.requests) == 5


async def test_close_is_idempotent_and_bounded(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    receiver.hold = asyncio.Event()  # the endpoint accepts and never answers
    notifier = notifiers(receiver.url, timeout=30.0, close_timeout=0.2)
    await notifier.start()
    notifier.notify(make_notification(call_id="in-flight"))
    notifier.notify(make_notification(call_id="queued"))
    await eventually(lambda: len(receiver.requests) == 1)

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(notifier.close(), notifier.close()), 5)
    assert time.monotonic() - started < 3
    await asyncio.wait_for(notifier.close(), 1)
    assert counts(notifier).dropped[DROP_SHUTDOWN] == 2
    assert counts(notifier).sent == 0

    notifier.notify(make_notification(call_id="late"))
    assert counts(notifier).dropped[DROP_CLOSED] == 1
    with pytest.raises(RuntimeError):
        await notifier.start()


async def test_close_without_start_drops_queued(
    notifiers: Callable[..., WebhookNotifier],
) -> None:
    notifier = notifiers("http://127.0.0.1:9/hook")
    notifier.notify(make_notification())
    await asyncio.wait_for(notifier.close(), 1)
    assert counts(notifier).dropped[DROP_SHUTDOWN] == 1


async def test_bad_data_counts_as_failed_and_worker_survives(
    receiver: Receiver, notifiers: Callable[..., WebhookNotifier]
) -> None:
    notifier = notifiers(receiver.url)
    await notifier.start()
    bad = Notification("call.ended", "c", "v", ("u",), datetime.now(UTC), {"x": object()})
    notifier.notify(bad)
    notifier.notify(make_notification())
    await eventually(lambda: counts(notifier).sent == 1)
    assert counts(notifier).failed == 1
    assert len(receiver.requests) == 1


async def test_prometheus_metrics_in_own_registry(receiver: Receiver) -> None:
    registry = CollectorRegistry()
    metrics = notification_metrics(registry)
    # A second registry gets its own counters: nothing global is touched.
    notification_metrics(CollectorRegistry())
    assert REGISTRY.get_sample_value("video_notification_sent_total") is None

    receiver.statuses.extend([400])
    notifier = WebhookNotifier(receiver.url, SECRET, metrics=metrics, queue_size=1, **FAST)
    try:
        notifier.notify(make_notification())
        notifier.notify(make_notification())  # queue full
        await notifier.start()
        await eventually(
            lambda: registry.get_sample_value("video_notification_failed_total") == 1.0
        )
        notifier.notify(make_notification())
        await eventually(lambda: registry.get_sample_value("video_notification_sent_total") == 1.0)
    finally:
        await notifier.close()

    def dropped(reason: str) -> float | None:
        return registry.get_sample_value("video_notification_dropped_total", {"reason": reason})

    assert dropped(DROP_QUEUE_FULL) == 1.0
    assert dropped(DROP_CIRCUIT_OPEN) == 0.0
