"""Every Prometheus metric of the call service, on a registry of the app's own.

Domain code calls the helper methods, never the metric objects. Labels are
bounded (route templates, reasons, operations): never a call or user id.
Names follow the old Go service where one existed.
"""

from __future__ import annotations

import asyncio

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CALL_DURATION_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


def _asyncio_task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the event loop (no running loop)
        return 0.0


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.call_created = Counter("video_call_created_total", "Calls initiated", registry=r)
        self.call_joined = Counter("video_call_joined_total", "Successful joins", registry=r)
        self.call_left = Counter("video_call_left_total", "Participants who left", registry=r)
        self.call_declined = Counter(
            "video_call_declined_total", "Invitations declined", registry=r
        )
        self.call_ended = Counter("video_call_ended_total", "Calls ended", ["reason"], registry=r)
        self.call_duration = Histogram(
            "video_call_duration_seconds",
            "Duration of answered calls",
            buckets=_CALL_DURATION_BUCKETS,
            registry=r,
        )
        self.active_calls = Gauge("video_active_calls", "Calls ringing or active", registry=r)
        self.duplicate_join = Counter(
            "video_call_duplicate_join_attempt_total", "Joins refused as duplicates", registry=r
        )
        self.participant_limit = Counter(
            "video_call_participant_limit_exceeded_total",
            "Joins refused: call full",
            registry=r,
        )
        self.initiate_rate_limited = Counter(
            "video_call_initiate_rate_limit_exceeded_total",
            "Initiations refused: rate limit",
            registry=r,
        )
        self.unauthorized_join = Counter(
            "video_call_unauthorized_join_attempt_total",
            "Joins refused: not invited",
            registry=r,
        )
        self.expired_join = Counter(
            "video_call_expired_join_attempt_total",
            "Joins refused: call ended or expired",
            registry=r,
        )
        self.auto_terminated = Counter(
            "video_call_auto_terminated_total",
            "Calls ended by a worker",
            ["reason"],
            registry=r,
        )
        self.stale_cleaned = Counter(
            "video_cleanup_stale_calls_total", "Stale calls cleaned", registry=r
        )
        self.db_duration = Histogram(
            "db_query_duration_seconds",
            "Database transaction latency",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.db_timeouts = Counter(
            "db_query_timeout_total",
            "Database transactions that timed out",
            ["operation"],
            registry=r,
        )
        self.db_retries = Counter(
            "db_transaction_retry_total",
            "Database transactions run again after a serialization failure (SQLSTATE 40001)",
            ["operation"],
            registry=r,
        )
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_config_valid = Gauge(
            "video_turn_config_valid", "1 when TURN is configured and valid, else 0", registry=r
        )
        # Read at scrape time (the soak watches it for leaked tasks).
        self.asyncio_tasks = Gauge(
            "huddle_asyncio_tasks", "Tasks alive in the server's event loop", registry=r
        )
        self.asyncio_tasks.set_function(_asyncio_task_count)

    # -- helpers called by domain code ---------------------------------------

    def db_query(self, operation: str, seconds: float) -> None:
        self.db_duration.labels(operation).observe(seconds)

    def db_timeout(self, operation: str) -> None:
        self.db_timeouts.labels(operation).inc()

    def db_retry(self, operation: str) -> None:
        self.db_retries.labels(operation).inc()

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def refused_join(self, code: str) -> None:
        counter = {
            "already_joined": self.duplicate_join,
            "participant_limit_reached": self.participant_limit,
            "not_invited": self.unauthorized_join,
            "call_ended": self.expired_join,
            "ringing_expired": self.expired_join,
        }.get(code)
        if counter is not None:
            counter.inc()

    def call_finished(self, reason: str, duration_s: float | None, *, by_worker: bool) -> None:
        self.call_ended.labels(reason).inc()
        if duration_s is not None:
            self.call_duration.observe(duration_s)
        if by_worker:
            self.auto_terminated.labels(reason).inc()
            if reason == "cleaned":
                self.stale_cleaned.inc()
