"""What the webhook notifier counts: a Prometheus implementation and a counting one for tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter


class NotifierMetrics(Protocol):
    """Counters a notifier reports to (see :func:`notification_metrics`)."""

    def record_sent(self) -> None:
        """A notification was delivered (2xx)."""

    def record_retry(self) -> None:
        """An attempt failed and the notification is scheduled again."""

    def record_failed(self) -> None:
        """A notification was given up on (rejected with 4xx, or out of attempts)."""


@dataclass
class CountingMetrics:
    """In-memory counters; the default, and handy in tests."""

    sent: int = 0
    retried: int = 0
    failed: int = 0

    def record_sent(self) -> None:
        self.sent += 1

    def record_retry(self) -> None:
        self.retried += 1

    def record_failed(self) -> None:
        self.failed += 1


@dataclass(frozen=True)
class NotificationMetrics:
    """Prometheus counters for notifications; implements :class:`NotifierMetrics`."""

    sent: Counter
    retried: Counter
    failed: Counter

    def record_sent(self) -> None:
        self.sent.inc()

    def record_retry(self) -> None:
        self.retried.inc()

    def record_failed(self) -> None:
        self.failed.inc()


def notification_metrics(registry: CollectorRegistry) -> NotificationMetrics:
    """Create the notification counters in ``registry`` (never the global one).

    Exposed as ``video_notification_sent_total``,
    ``video_notification_retried_total`` and ``video_notification_failed_total``.
    """
    return NotificationMetrics(
        sent=Counter(
            "video_notification_sent",
            "Notifications delivered to the webhook (2xx).",
            registry=registry,
        ),
        retried=Counter(
            "video_notification_retried",
            "Webhook attempts that failed and were scheduled again.",
            registry=registry,
        ),
        failed=Counter(
            "video_notification_failed",
            "Notifications given up on: rejected (4xx) or out of attempts.",
            registry=registry,
        ),
    )


# -- notifiers ----------------------------------------------------------------
