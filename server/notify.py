"""Call notifications out: a log line, or signed webhooks from a durable outbox.

* :class:`LogNotifier` (default, no webhook configured): one INFO log line per
  notification, after the transition is committed.
* :class:`WebhookNotifier` (``HUDDLE_WEBHOOK_URL``): a signed HTTP POST per
  notification, delivered **at least once** from a durable outbox -- the
  ``notification_outbox`` table, written in the same database transaction as
  the call transition that caused it (:func:`outbox_message`). A worker claims
  due rows (with a lease, so several nodes share the work and a crashed node's
  claims come back), posts them, deletes what was delivered and reschedules
  failures with exponential backoff and jitter; a circuit breaker pauses
  delivery while the receiver is down (the rows wait; nothing is dropped). A
  notification survives a restart of the server or of the receiver.

What a notification says and its wire format: :mod:`server.notification`;
the counters: :mod:`server.notify_metrics`. Both are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Final, Protocol
from urllib.parse import urlsplit

import aiohttp

from server.errors import Unavailable
from server.models import OutboxMessage
from server.notification import EVENT_CALL_ENDED as EVENT_CALL_ENDED
from server.notification import EVENT_CALL_MISSED as EVENT_CALL_MISSED
from server.notification import EVENT_CALL_RINGING as EVENT_CALL_RINGING
from server.notification import EVENT_PARTICIPANT_JOINED as EVENT_PARTICIPANT_JOINED
from server.notification import EVENT_PARTICIPANT_LEFT as EVENT_PARTICIPANT_LEFT
from server.notification import EVENTS as EVENTS
from server.notification import LogNotifier as LogNotifier
from server.notification import Notification as Notification
from server.notification import Notifier as Notifier
from server.notification import _key
from server.notification import encode_body as encode_body
from server.notification import outbox_message as outbox_message
from server.notification import sign as sign
from server.notification import verify as verify
from server.notify_metrics import CountingMetrics as CountingMetrics
from server.notify_metrics import NotificationMetrics as NotificationMetrics
from server.notify_metrics import NotifierMetrics as NotifierMetrics
from server.notify_metrics import notification_metrics as notification_metrics

logger = logging.getLogger(__name__)


class OutboxStore(Protocol):
    """The part of :class:`server.store.base.Store` the webhook worker uses."""

    async def claim_outbox(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]: ...

    async def outbox_delivered(self, message_id: str) -> None: ...

    async def outbox_failed(
        self, message_id: str, *, attempts: int, error: str, retry_at: datetime | None
    ) -> None: ...

    async def purge_outbox(self, *, dead_before: datetime) -> int: ...


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _Outcome(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # the receiver answered 4xx: it is up, but won't take it
    FAILED = "failed"  # unreachable, timed out, or answered 5xx/429


_RETRY_STATUSES: Final = frozenset({429})


class WebhookNotifier:
    """Delivers the outbox to ``url`` as signed POSTs (see the module docstring).

    One worker task claims up to ``batch`` due rows at a time, each for
    ``lease`` seconds (longer than one attempt; a node that dies mid-delivery
    leaves its rows to be retried after it). Each attempt is bounded by
    ``timeout`` seconds. A failed attempt (network error, timeout, 5xx, 429) is
    due again after ``min(backoff_cap, backoff_base * 2**(attempts-1))`` seconds
    with equal jitter, or after a numeric ``Retry-After`` (capped the same way);
    after ``max_attempts`` attempts, or at once on any other non-2xx, the row is
    kept as dead. :meth:`wake` (called after a transition wrote rows) starts a
    pass at once; otherwise the outbox is polled every ``poll_interval`` s.

    Circuit breaker: ``breaker_threshold`` consecutive failed attempts open the
    circuit; while open nothing is attempted (rows wait, their attempts are not
    used up). After ``breaker_reset`` seconds it is half-open: one row is a
    trial; success closes the circuit, failure opens it again.

    Dead rows are kept ``keep_dead`` seconds (7 days) for an operator, then
    deleted, checked every ``purge_interval`` seconds.

    The HTTP session comes from ``session_factory`` (default
    ``aiohttp.ClientSession()``), is opened in :meth:`start` and closed by
    :meth:`close`, which also hands back rows claimed but not yet attempted.
    """

    def __init__(
        self,
        store: OutboxStore,
        url: str,
        secret: str | bytes,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        timeout: float = 5.0,
        max_attempts: int = 10,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        breaker_threshold: int = 5,
        breaker_reset: float = 30.0,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        batch: int = 50,
        keep_dead: float = 7 * 86_400.0,
        purge_interval: float = 3_600.0,
        metrics: NotifierMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be an absolute http(s) URL")
        if not secret:
            raise ValueError("webhook secret must not be empty")
        if max_attempts < 1 or breaker_threshold < 1 or batch < 1:
            raise ValueError("max_attempts, breaker_threshold and batch must be >= 1")
        if min(timeout, backoff_base, backoff_cap, breaker_reset, poll_interval) < 0:
            raise ValueError("timings must not be negative")
        if lease <= timeout:
            raise ValueError("lease must be longer than one attempt's timeout")
        self._store = store
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
        self._lease = timedelta(seconds=lease)
        self._poll_interval = poll_interval
        self._batch = batch
        self._keep_dead = timedelta(seconds=keep_dead)
        self._purge_interval = purge_interval
        self._purged_at: float | None = None
        self.metrics: NotifierMetrics = metrics if metrics is not None else CountingMetrics()
        self._clock = clock

        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._store_down = False

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

    def wake(self) -> None:
        """New rows were committed: deliver now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._session = self._session_factory()
        self._worker = asyncio.create_task(self._run(), name="webhook-notifier")

    async def close(self) -> None:
        """Stop delivering; undelivered rows stay in the outbox. Idempotent."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.wait([worker])
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- worker ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._drain()
                await self._purge()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                if not self._store_down:
                    logger.warning("Webhook(%s) outbox unreachable: %s", self._target, exc)
                self._store_down = True
            except Exception:
                logger.exception("Webhook(%s) outbox pass failed", self._target)
            else:
                if self._store_down:
                    logger.info("Webhook(%s) outbox reachable again", self._target)
                self._store_down = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()

    async def _drain(self) -> None:
        while True:
            state = self.circuit_state
            if state is CircuitState.OPEN:
                return
            now = datetime.now(UTC)
            claimed = await self._store.claim_outbox(
                now=now,
                lease_until=now + self._lease,
                limit=1 if state is CircuitState.HALF_OPEN else self._batch,
            )
            if not claimed:
                return
            remaining = list(claimed)
            try:
                while remaining:
                    message = remaining[0]
                    if self.circuit_state is CircuitState.OPEN:
                        break
                    await self._handle(message, trial=state is CircuitState.HALF_OPEN)
                    remaining.pop(0)
            finally:
                # Shutting down or circuit open: hand back what was not attempted
                # (best effort; the lease expires anyway).
                if remaining:
                    await asyncio.shield(self._release(remaining))

    async def _purge(self) -> None:
        now = self._clock()
        if self._purged_at is not None and now - self._purged_at < self._purge_interval:
            return
        self._purged_at = now
        purged = await self._store.purge_outbox(dead_before=datetime.now(UTC) - self._keep_dead)
        if purged:
            logger.info("Webhook(%s) purged %d dead notification(s)", self._target, purged)

    async def _release(self, messages: list[OutboxMessage]) -> None:
        now = datetime.now(UTC)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                for m in messages:
                    await self._store.outbox_failed(
                        m.message_id, attempts=m.attempts, error="released", retry_at=now
                    )

    async def _handle(self, message: OutboxMessage, *, trial: bool) -> None:
        outcome, problem, retry_after = await self._attempt(message)
        attempts = message.attempts + 1
        if outcome is _Outcome.DELIVERED:
            await self._store.outbox_delivered(message.message_id)
            self.metrics.record_sent()
            self._on_success()
            return
        if outcome is _Outcome.REJECTED:
            self._on_success()  # the receiver is up
            final = True
        else:
            self._on_failure(trial)
            final = attempts >= self._max_attempts
        if final:
            self.metrics.record_failed()
            logger.warning(
                "Webhook(%s) gave up on %s %s for call %s after %d attempt(s): %s",
                self._target,
                message.event,
                message.message_id,
                message.call_id,
                attempts,
                problem,
            )
            retry_at = None
        else:
            self.metrics.record_retry()
            delay = self._backoff(attempts, retry_after)
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            logger.info(
                "Webhook(%s) attempt %d/%d for %s %s failed (%s); retrying in %.2fs",
                self._target,
                attempts,
                self._max_attempts,
                message.event,
                message.message_id,
                problem,
                delay,
            )
        await self._store.outbox_failed(
            message.message_id, attempts=attempts, error=problem, retry_at=retry_at
        )

    async def _attempt(self, message: OutboxMessage) -> tuple[_Outcome, str, float | None]:
        assert self._session is not None
        body = message.body.encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "huddle-webhook",
            "X-Huddle-Event": message.event,
            "X-Huddle-Notification-Id": message.message_id,
            "X-Huddle-Timestamp": timestamp,
            "X-Huddle-Signature": sign(self._secret, timestamp, body),
        }
        retry_after: float | None = None
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                status = resp.status
                if status in _RETRY_STATUSES:
                    retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _Outcome.FAILED, problem, None
        if 200 <= status < 300:
            return _Outcome.DELIVERED, "", None
        if status < 500 and status not in _RETRY_STATUSES:
            return _Outcome.REJECTED, f"HTTP {status} (not retried)", None
        return _Outcome.FAILED, f"HTTP {status}", retry_after

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
            if self._state is not CircuitState.OPEN:
                logger.warning(
                    "Webhook(%s) circuit open after %d consecutive failed attempts; "
                    "pausing delivery for %.1fs",
                    self._target,
                    self._consecutive_failures,
                    self._breaker_reset,
                )
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()


def _parse_retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP date falls back to our own backoff.
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
