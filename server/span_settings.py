"""Settings of rooms across nodes (docs/deploy.md, "Rooms across nodes"); off by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

from server.errors import ConfigError

SPAN_POLICIES = ("owner", "local")


@dataclass(frozen=True)
class SpanConfig:
    """Rooms across nodes (docs/deploy.md, "Rooms across nodes"); off by default."""

    #: A room's media participants per node before it spills onto another (0: never).
    node_limit: int = 0
    #: ``owner`` (the owner until the limit) or ``local`` (always the socket's node).
    policy: str = "owner"
    #: The relay socket's address: one the other nodes reach (None: the first ICE host,
    #: required then on a cluster); port 0: any free one.
    relay_host: str | None = None
    relay_port: int = 0
    #: Authenticates relay datagrams (None: derived from the JWT secret all nodes share).
    relay_secret: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.policy == "local" or self.node_limit > 0


def validate_span_settings(
    span: SpanConfig, *, ice_hosts: tuple[str, ...] = (), clustered: bool = False
) -> None:
    """Raise :class:`ConfigError` naming the variable that is wrong. Rooms that may span
    the nodes of a cluster need a relay address the other nodes reach: one given, or
    the first ICE host (never a guess at loopback on a real cluster)."""
    if span.enabled and clustered and span.relay_host is None and not ice_hosts:
        raise ConfigError(
            "rooms may span nodes (HUDDLE_ROOM_NODE_LIMIT or HUDDLE_ROOM_SPAN): set "
            "HUDDLE_RELAY_HOST (or HUDDLE_ICE_HOSTS) to an address the other nodes reach"
        )
    if span.policy not in SPAN_POLICIES:
        raise ConfigError(f"HUDDLE_ROOM_SPAN={span.policy!r} is not owner or local")
    if span.relay_host is not None:
        try:
            address = ip_address(span.relay_host)
        except ValueError:
            raise ConfigError(f"HUDDLE_RELAY_HOST={span.relay_host!r} is no IP address") from None
        if address.is_unspecified:
            raise ConfigError("HUDDLE_RELAY_HOST must be an address other nodes reach, not any")
    if span.relay_secret is not None and len(span.relay_secret) < 32:
        raise ConfigError("HUDDLE_RELAY_SECRET must be at least 32 characters")
