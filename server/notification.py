"""Call notifications: what they say, and the webhook wire format (body, signature).

Domain code builds a :class:`Notification`. Two ways out:

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

Webhook wire format
-------------------
``POST <url>`` with body ``encode_body(notification, notification_id)`` --
``notification.to_json()`` plus ``"notification_id"``, as compact JSON with
sorted keys, UTF-8 -- and these headers:

* ``Content-Type: application/json``
* ``X-Huddle-Event: <event>``
* ``X-Huddle-Notification-Id: <uuid>`` -- the idempotency id: the same on every
  attempt of one notification (also inside the signed body). Delivery is at
  least once, so a receiver that must not act twice records the ids it has
  handled and ignores repeats.
* ``X-Huddle-Timestamp: <unix seconds, integer>``
* ``X-Huddle-Signature: sha256=<hex>``, where ``<hex>`` is the lowercase hex
  HMAC-SHA256, keyed with the shared secret (UTF-8), of the bytes
  ``<timestamp> + "." + <body>`` -- the decimal timestamp exactly as sent in
  ``X-Huddle-Timestamp``, one ASCII dot, then the raw request body.

Receivers check it with :func:`verify` (or the same three lines in any
language) and reject timestamps older than a few minutes to stop replays. The
timestamp and signature are made afresh for every attempt, so a retried
delivery is not rejected as stale. A 2xx answer means delivered; 429 and 5xx
(or no answer) are retried; any other status is final (the row is kept as dead,
``dead_at`` set, for an operator to inspect or requeue).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Final, Protocol

from server.models import OutboxMessage

#: :class:`LogNotifier`'s lines keep the logger of :mod:`server.notify`, where it lived.
logger = logging.getLogger("server.notify")

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


def encode_body(n: Notification, notification_id: str) -> bytes:
    """The exact bytes POSTed (and signed) for ``n`` under its idempotency id."""
    payload = {**n.to_json(), "notification_id": notification_id}
    return json.dumps(
        payload, separators=(",", ":"), sort_keys=True, default=_json_default
    ).encode()


def outbox_message(n: Notification, now: datetime | None = None) -> OutboxMessage:
    """``n`` as an outbox row with a fresh idempotency id (the body is fixed here)."""
    message_id = str(uuid.uuid4())
    return OutboxMessage(
        message_id=message_id,
        event=n.event,
        call_id=n.call_id,
        body=encode_body(n, message_id).decode(),
        created_at=now or datetime.now(UTC),
    )


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


class Notifier(Protocol):
    """Where the call lifecycle sends notifications it does not store (logs)."""

    def notify(self, n: Notification) -> None:
        """Hand over ``n``; returns at once and never raises for delivery problems."""


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
