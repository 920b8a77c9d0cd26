"""Signaling metrics, registered on the app's own registry (``Metrics.registry``).

The hub calls the helpers; labels are bounded (message types from the
allow-list, error codes and close reasons from :mod:`signaling.protocol`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from signaling.protocol import CLIENT_TYPES


class SignalingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.connections = Gauge(
            "video_signaling_connections", "Open signaling WebSockets on this node", registry=r
        )
        self.rejected = Counter(
            "video_signaling_connections_rejected_total",
            "Signaling upgrades refused",
            ["reason"],
            registry=r,
        )
        self.messages = Counter(
            "video_signaling_messages_total",
            "Valid client messages received",
            ["type"],
            registry=r,
        )
        self.errors = Counter(
            "video_signaling_errors_total", "error messages sent to clients", ["code"], registry=r
        )
        self.closed = Counter(
            "video_signaling_closed_total", "Connections closed by the server", ["code"], registry=r
        )
        self.ice_valid = Counter(
            "video_ice_candidate_valid_total", "ICE candidates accepted", registry=r
        )
        self.ice_invalid = Counter(
            "video_ice_candidate_invalid_total", "ICE candidates refused", registry=r
        )
        self.cleanup_on_disconnect = Counter(
            "video_call_cleanup_on_disconnect_total",
            "Participants left for them after a dropped socket's grace period",
            registry=r,
        )
        self.cleanup_failed = Counter(
            "video_call_cleanup_failed_total",
            "Attempts at a server-started leave that failed (each is retried until it lands)",
            registry=r,
        )
        self.connect_timeouts = Counter(
            "video_call_connect_timeout_total",
            "Joined participants released for never opening a signaling socket",
            registry=r,
        )
        self.seats_rebuilt = Counter(
            "video_signaling_seats_rebuilt_total",
            "Seat records written again after Redis lost them",
            registry=r,
        )
        self.redis_subscribe_failed = Counter(
            "video_redis_subscribe_failed_total", "Redis (re)subscriptions that failed", registry=r
        )
        self.redis_pubsub_error = Counter(
            "video_redis_pubsub_error_total", "Redis pub/sub connections lost", registry=r
        )
        self.bus_publish_failed = Counter(
            "video_signaling_bus_publish_failed_total", "Bus publishes that failed", registry=r
        )
        self.draining = Gauge(
            "video_signaling_draining", "1 while this node drains (takes no new rooms)", registry=r
        )
        self.rooms_moved = Counter(
            "video_signaling_drain_rooms_moved_total",
            "SFU rooms a drain released for another node, with participants told to reconnect",
            registry=r,
        )

        self.rooms_lost = Counter(
            "video_signaling_rooms_lost_total",
            "SFU rooms whose node died, found by this node, with participants told to start over",
            registry=r,
        )

    def message(self, kind: str) -> None:
        self.messages.labels(kind if kind in CLIENT_TYPES else "other").inc()

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def close(self, code: int) -> None:
        self.closed.labels(str(code)).inc()

    def candidate(self, *, valid: bool) -> None:
        (self.ice_valid if valid else self.ice_invalid).inc()
