"""Call notifications: incoming, missed and ended calls, joins and leaves.

Domain code builds a :class:`Notification` and hands it to a :class:`Notifier`.
``notify()`` never waits on the network: it only enqueues (or drops and
counts), so a slow or dead receiver can never slow a call down.

Two implementations:

* :class:`LogNotifier` (default): one INFO log line per notification.
* :class:`WebhookNotifier`: a signed HTTP POST per notification, delivered by
  one owned worker task from a bounded queue, with retries (exponential
  backoff and jitter) and a circuit breaker.

Webhook wire format
-------------------
``POST <url>`` with body ``json.dumps(notification.to_json())`` (UTF-8, compact
separators, sorted keys) and these headers:

* ``Content-Type: application/json``
* ``X-Huddle-Event: <event>``
* ``X-Huddle-Timestamp: <unix seconds, integer>``
* ``X-Huddle-Signature: sha256=<hex>``, where ``<hex>`` is the lowercase hex
  HMAC-SHA256, keyed with the shared secret (UTF-8), of the bytes
  ``<timestamp> + "." + <body>`` -- the decimal timestamp exactly as sent in
  ``X-Huddle-Timestamp``, one ASCII dot, then the raw request body.

Receivers check it with :func:`verify` (or the same three lines in any
language) and reject timestamps older than a few minutes to stop replays. The
timestamp and signature are made afresh for every attempt, so a retried
delivery is not rejected as stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import Counter as TallyCounter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Final, Protocol
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter

logger = logging.getLogger(__name__)

EVENT_CALL_RINGING: Final = "call.ringing"
EVENT_CALL_MISSED: Final = "call.missed"
EVENT_CALL_ENDED: Final = "call.ended"
EVENT_PARTICIPANT_JOINED: Final = "call.participant_joined"
EVENT_PARTICIPANT_LEFT: Final = "call.participant_left"
EVENTS: Final = frozenset(
    {
        EVENT_CALL_RINGING,
        EVENT_CALL_MISSED,
        EVENT_CALL_ENDED,
        EVENT_PARTICIPANT_JOINED,
        EVENT_PARTICIPANT_LEFT,
    }
)

# Reasons a notification is dropped without a delivery attempt: the only
# values of the ``reason`` label, so the label stays bounded.
DROP_QUEUE_FULL: Final = "queue_full"
DROP_CIRCUIT_OPEN: Final = "circuit_open"
DROP_CLOSED: Final = "closed"
DROP_SHUTDOWN: Final = "shutdown"
DROP_REASONS: Final = (DROP_QUEUE_FULL, DROP_CIRCUIT_OPEN, DROP_CLOSED, DROP_SHUTDOWN)

SIGNATURE_PREFIX: Final = "sha256="


def _iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Notification:
    """Something happened to a call that users outside it should hear about.

    ``recipient_ids`` are the users to tell (each callee for ``call.ringing``,
    the callees who never answered for ``call.missed``, ...). ``data`` carries
    event details such as ``caller_id``, ``call_type``, ``end_reason`` or
    ``user_id``; its values must be JSON-serialisable (datetimes and UUIDs are
    converted).
    """

    event: str
    call_id: str
    conversation_id: str
    recipient_ids: tuple[str, ...]
    occurred_at: datetime
    data: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown notification event {self.event!r}")
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")
        # Frozen means frozen: normalise to UTC and keep private copies, so a
        # caller mutating its list or dict later cannot change what is sent.
        object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))
        object.__setattr__(self, "recipient_ids", tuple(self.recipient_ids))
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    def to_json(self) -> dict[str, object]:
        """The JSON-ready payload (the webhook body)."""
        return {
            "event": self.event,
            "call_id": self.call_id,
            "conversation_id": self.conversation_id,
            "recipient_ids": list(self.recipient_ids),
            "occurred_at": _iso_utc(self.occurred_at),
            "data": dict(self.data),
        }


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime in notification data")
        return _iso_utc(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_body(n: Notification) -> bytes:
    """The exact bytes POSTed (and signed) for ``n``."""
    return json.dumps(
        n.to_json(), separators=(",", ":"), sort_keys=True, default=_json_default
    ).encode()


# -- signatures ---------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """``"sha256=" + hex(HMAC-SHA256(secret, f"{timestamp}." + body))``."""
    message = str(timestamp).encode("ascii") + b"." + body
    return SIGNATURE_PREFIX + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """Whether ``signature`` is :func:`sign` of these inputs and fresh.

    ``timestamp`` is the ``X-Huddle-Timestamp`` header (unix seconds); it must
    be within ``tolerance_s`` of ``now`` (default: the current time) either
    way. The comparison is constant-time.
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    # compare_digest on str requires ASCII; a forged header may not be.
    try:
        return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))
    except UnicodeEncodeError:
        return False


# -- metrics ------------------------------------------------------------------


class NotifierMetrics(Protocol):
    """Counters a notifier reports to (see :func:`notification_metrics`)."""

    def record_sent(self) -> None:
        """A notification was delivered (2xx)."""

    def record_failed(self) -> None:
        """A delivery was attempted and finally failed (retries exhausted or 4xx)."""

    def record_dropped(self, reason: str) -> None:
        """A notification was discarded without (finishing) a delivery; ``reason``
        is one of :data:`DROP_REASONS`."""


@dataclass
class CountingMetrics:
    """In-memory counters; the default, and handy in tests."""

    sent: int = 0
    failed: int = 0
    dropped: TallyCounter[str] = field(default_factory=TallyCounter)

    def record_sent(self) -> None:
        self.sent += 1

    def record_failed(self) -> None:
        self.failed += 1

    def record_dropped(self, reason: str) -> None:
        self.dropped[reason] += 1


@dataclass(frozen=True)
class NotificationMetrics:
    """Prometheus counters for notifications; implements :class:`NotifierMetrics`."""

    sent: Counter
    failed: Counter
    dropped: Counter

    def record_sent(self) -> None:
        self.sent.inc()

    def record_failed(self) -> None:
        self.failed.inc()

    def record_dropped(self, reason: str) -> None:
        self.dropped.labels(reason=reason).inc()


def notification_metrics(registry: CollectorRegistry) -> NotificationMetrics:
    """Create the notification counters in ``registry`` (never the global one).

    Exposed as ``video_notification_sent_total``,
    ``video_notification_failed_total`` and
    ``video_notification_dropped_total{reason}``.
    """
    metrics = NotificationMetrics(
        sent=Counter(
            "video_notification_sent",
            "Notifications delivered to the webhook (2xx).",
            registry=registry,
        ),
        failed=Counter(
            "video_notification_failed",
            "Notification deliveries that failed after all retries, or were rejected (4xx).",
            registry=registry,
        ),
        dropped=Counter(
            "video_notification_dropped",
            "Notifications discarded without delivery, by reason.",
            ["reason"],
            registry=registry,
        ),
    )
    for reason in DROP_REASONS:
        metrics.dropped.labels(reason=reason)  # export zeros from the start
    return metrics


# -- notifiers ----------------------------------------------------------------


class Notifier(Protocol):
    """Where the call lifecycle sends notifications."""

    def notify(self, n: Notification) -> None:
        """Hand over ``n``; returns at once and never raises for delivery problems.

        Must be called from the event loop thread.
        """

    async def start(self) -> None:
        """Acquire resources and start delivering."""

    async def close(self) -> None:
        """Deliver what is queued within a bounded time, then stop. Idempotent."""


class LogNotifier:
    """Logs each notification at INFO; the default when no webhook is configured."""

    def notify(self, n: Notification) -> None:
        logger.info(
            "notification %s call=%s conversation=%s recipients=%s at=%s data=%s",
            n.event,
            n.call_id,
            n.conversation_id,
            ",".join(n.recipient_ids),
            _iso_utc(n.occurred_at),
            dict(n.data),
        )

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _Outcome(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # the receiver answered 4xx: it is up, but won't take it
    FAILED = "failed"  # unreachable, timed out, or kept answering 5xx/429


_RETRY_STATUSES: Final = frozenset({429})


class WebhookNotifier:
    """POSTs signed notifications to ``url`` (see the module docstring).

    Delivery: one worker task takes notifications from a queue of at most
    ``queue_size``; a full queue drops the new notification (reason
    ``queue_full``). Each delivery is tried up to ``max_attempts`` times, each
    attempt bounded by ``timeout`` seconds; network errors, timeouts, 5xx and
    429 are retried after ``min(backoff_cap, backoff_base * 2**(attempt-1))``
    seconds with equal jitter (half fixed, half random), or after a numeric
    ``Retry-After`` (capped the same way). Any other non-2xx is not retried
    and counts as failed.

    Circuit breaker: ``breaker_threshold`` consecutive failed deliveries
    (retries exhausted -- a 4xx shows the receiver is up and does not count)
    open the circuit. While open, ``notify()`` drops at once (reason
    ``circuit_open``) and the worker drops what was already queued. After
    ``breaker_reset`` seconds it is half-open: the next notification is a
    single-attempt trial; success closes the circuit, failure opens it again.

    The HTTP session comes from ``session_factory`` (called in :meth:`start`;
    default ``aiohttp.ClientSession()``) and is owned and closed by this
    notifier. :meth:`close` waits up to ``close_timeout`` seconds for the
    queue to drain, then cancels the worker; whatever is left is dropped
    (reason ``shutdown``).
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        queue_size: int = 1000,
        timeout: float = 5.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        breaker_threshold: int = 5,
        breaker_reset: float = 30.0,
        close_timeout: float = 5.0,
        metrics: NotifierMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be an absolute http(s) URL")
        if not secret:
            raise ValueError("webhook secret must not be empty")
        if queue_size < 1 or max_attempts < 1 or breaker_threshold < 1:
            raise ValueError("queue_size, max_attempts and breaker_threshold must be >= 1")
        if min(timeout, backoff_base, backoff_cap, breaker_reset, close_timeout) < 0:
            raise ValueError("timings must not be negative")
        self._url = url
        # For logs: never the path or query, which may carry a token.
        self._target = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self._secret = _key(secret)
        self._session_factory = session_factory or aiohttp.ClientSession
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._breaker_threshold = breaker_threshold
        self._breaker_reset = breaker_reset
        self._close_timeout = close_timeout
        self.metrics: NotifierMetrics = metrics if metrics is not None else CountingMetrics()
        self._clock = clock

        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()

        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0

    # -- public ---------------------------------------------------------------

    @property
    def circuit_state(self) -> CircuitState:
        """``closed``, ``open``, or ``half_open`` once the reset time has passed."""
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self._breaker_reset
        ):
            self._state = CircuitState.HALF_OPEN
            logger.info("Webhook(%s) circuit half-open: next notification is a trial", self._target)
        return self._state

    @property
    def pending(self) -> int:
        """Notifications queued and not yet taken by the worker."""
        return self._queue.qsize()

    def notify(self, n: Notification) -> None:
        if self._closing:
            self.metrics.record_dropped(DROP_CLOSED)
            return
        if self.circuit_state is CircuitState.OPEN:
            self.metrics.record_dropped(DROP_CIRCUIT_OPEN)
            return
        try:
            self._queue.put_nowait(n)
        except asyncio.QueueFull:
            self.metrics.record_dropped(DROP_QUEUE_FULL)
            logger.warning(
                "Webhook(%s) queue full, dropping %s for call %s",
                self._target,
                n.event,
                n.call_id,
            )

    async def start(self) -> None:
        """Open the HTTP session and start the worker. Notifications queued
        before this are delivered once started."""
        if self._closing:
            raise RuntimeError("WebhookNotifier is closed")
        if self._worker is not None:
            return
        self._session = self._session_factory()
        self._worker = asyncio.create_task(self._run(), name="webhook-notifier")

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            worker = self._worker
            if worker is not None and not worker.done():
                try:
                    await asyncio.wait_for(self._queue.join(), self._close_timeout)
                except TimeoutError:
                    logger.warning(
                        "Webhook(%s) close: about %d notification(s) undelivered after %.1fs",
                        self._target,
                        self._queue.qsize() + 1,
                        self._close_timeout,
                    )
                worker.cancel()
                # wait() does not raise the worker's CancelledError, but a
                # cancellation of close() itself still propagates.
                await asyncio.wait([worker])
            while not self._queue.empty():
                self._queue.get_nowait()
                self._queue.task_done()
                self.metrics.record_dropped(DROP_SHUTDOWN)
            if self._session is not None:
                await self._session.close()
                self._session = None
        finally:
            self._closed.set()

    # -- worker ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            n = await self._queue.get()
            try:
                await self._handle(n)
            except asyncio.CancelledError:
                self.metrics.record_dropped(DROP_SHUTDOWN)
                raise
            except Exception:
                # A bug (e.g. unserialisable data) must not kill the worker.
                self.metrics.record_failed()
                logger.exception(
                    "Webhook(%s) could not deliver %s for call %s",
                    self._target,
                    n.event,
                    n.call_id,
                )
            finally:
                self._queue.task_done()

    async def _handle(self, n: Notification) -> None:
        state = self.circuit_state
        if state is CircuitState.OPEN:
            self.metrics.record_dropped(DROP_CIRCUIT_OPEN)
            return
        trial = state is CircuitState.HALF_OPEN
        body = encode_body(n)
        outcome = await self._deliver(n, body, 1 if trial else self._max_attempts)
        if outcome is _Outcome.DELIVERED:
            self.metrics.record_sent()
        else:
            self.metrics.record_failed()
        if outcome is _Outcome.FAILED:
            self._on_failure(trial)
        else:
            self._on_success()

    async def _deliver(self, n: Notification, body: bytes, attempts: int) -> _Outcome:
        assert self._session is not None
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "huddle-webhook",
                "X-Huddle-Event": n.event,
                "X-Huddle-Timestamp": timestamp,
                "X-Huddle-Signature": sign(self._secret, timestamp, body),
            }
            try:
                async with self._session.post(
                    self._url, data=body, headers=headers, timeout=self._timeout
                ) as resp:
                    status = resp.status
                    if status in _RETRY_STATUSES:
                        retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if 200 <= status < 300:
                    return _Outcome.DELIVERED
                if status < 500 and status not in _RETRY_STATUSES:
                    logger.warning(
                        "Webhook(%s) rejected %s for call %s with HTTP %d; not retrying",
                        self._target,
                        n.event,
                        n.call_id,
                        status,
                    )
                    return _Outcome.REJECTED
                problem = f"HTTP {status}"
            if attempt == attempts:
                logger.warning(
                    "Webhook(%s) gave up on %s for call %s after %d attempt(s): %s",
                    self._target,
                    n.event,
                    n.call_id,
                    attempts,
                    problem,
                )
                break
            delay = self._backoff(attempt, retry_after)
            logger.info(
                "Webhook(%s) attempt %d/%d for %s failed (%s); retrying in %.2fs",
                self._target,
                attempt,
                attempts,
                n.event,
                problem,
                delay,
            )
            await asyncio.sleep(delay)
        return _Outcome.FAILED

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self._backoff_cap, retry_after)
        delay = min(self._backoff_cap, self._backoff_base * 2.0 ** (attempt - 1))
        # Equal jitter: keeps a floor so retries still back off, spreads the rest.
        return delay / 2 + random.uniform(0, delay / 2)

    # -- circuit breaker ------------------------------------------------------

    def _on_success(self) -> None:
        if self._state is not CircuitState.CLOSED:
            logger.info("Webhook(%s) circuit closed: trial delivery succeeded", self._target)
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0

    def _on_failure(self, trial: bool) -> None:
        self._consecutive_failures += 1
        if trial or self._consecutive_failures >= self._breaker_threshold:
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()
            logger.warning(
                "Webhook(%s) circuit open after %d consecutive failed deliveries; "
                "dropping notifications for %.1fs",
                self._target,
                self._consecutive_failures,
                self._breaker_reset,
            )


def _parse_retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP date falls back to our own backoff.
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def create_notifier(
    webhook_url: str | None,
    webhook_secret: str | None,
    *,
    metrics: NotifierMetrics | None = None,
) -> Notifier:
    """The notifier the configuration asks for: a webhook when
    ``HUDDLE_WEBHOOK_URL`` is set (its secret is then required), else logs."""
    if not webhook_url:
        return LogNotifier()
    if not webhook_secret:
        raise ValueError("HUDDLE_WEBHOOK_SECRET is required when HUDDLE_WEBHOOK_URL is set")
    return WebhookNotifier(webhook_url, webhook_secret, metrics=metrics)
