"""Huddle's configuration: one frozen, typed tree read from ``HUDDLE_*`` variables.

Every value has a default that runs a single node with no external services
(SQLite file, in-process bus, dev mode on loopback). :func:`load_config` validates the whole
tree at startup and raises :class:`ConfigError` naming the offending variable,
so a typo stops the server with one clear line instead of a late surprise.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from server.errors import ConfigError as ConfigError
from server.http_settings import HttpSettings as HttpSettings
from server.http_settings import parse_frame_ancestors
from server.span_settings import SpanConfig as SpanConfig
from server.span_settings import validate_span_settings
from server.turn_settings import TurnSettings as TurnSettings
from server.turn_settings import validate_turn_settings

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Rules the call lifecycle enforces (DESIGN.md, "Rules the lifecycle must enforce")."""

    max_participants: int = 10
    max_callees: int = 50
    initiate_per_minute: int = 10
    ringing_timeout_s: float = 300.0
    max_duration_s: float = 86_400.0
    stale_after_s: float = 86_400.0
    disconnect_grace_s: float = 10.0
    db_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    # SIGTERM or POST /v1/admin/drain: rooms here run on for up to this long.
    drain_timeout_s: float = 0.0
    sweep_interval_s: float = 5.0
    max_body_bytes: int = 64 * 1024


@dataclass(frozen=True)
class DatabaseRetry:
    """Startup retry policy for the database: exponential backoff, then give up."""

    attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 30.0


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None = None
    secret: str | None = None


@dataclass(frozen=True)
class MembershipSettings:
    """``HUDDLE_MEMBERSHIP_URL``: the service that approves conversation members."""

    url: str | None = None
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 2.0


@dataclass(frozen=True)
class SignalingSettings:
    allowed_origins: tuple[str, ...] = ()  # empty: same origin only
    max_connections: int = 2_000
    max_message_bytes: int = 64 * 1024
    messages_per_second: float = 50.0
    message_burst: int = 100
    send_queue_size: int = 256
    ping_after_s: float = 20.0
    drop_after_s: float = 45.0
    # With Redis: a node whose heartbeat is this old is dead; its seats are freed.
    node_ttl_s: float = 15.0
    # A joined participant who never opens a signaling socket leaves after this.
    connect_timeout_s: float = 60.0
    # A leave the server starts itself (grace period, dead node, connect timeout)
    # that fails (database away) is tried again, backing off up to this interval.
    leave_retry_s: float = 2.0


@dataclass(frozen=True)
class MediaSettings:
    ice_hosts: tuple[str, ...] = ()  # empty: every non-loopback interface (aioice default)
    ice_ports: tuple[int, int] | None = None  # None: any ephemeral port
    public_ip: str | None = None
    pli_min_interval_s: float = 0.5
    udp_gso: bool = True
    max_publish_bitrate: int = 2_500_000
    transport_cc: bool = True


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite:///var/huddle.db"
    redis_url: str | None = None
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    dev_mode: bool = True
    node_id: str = field(default_factory=lambda: secrets.token_hex(4))
    workers: int = 1  # SFU processes (docs/workers.md); 1: the SFU runs in this one
    # With workers == 1: False runs that one SFU in a worker process as with more
    # (the workers benchmark compares one worker process with two).
    sfu_in_process: bool = True
    # Bearer token of the admin API (POST /v1/admin/drain); None: admin API off.
    admin_token: str | None = field(default=None, repr=False)
    static_dir: str | None = None
    limits: Limits = field(default_factory=Limits)
    db_retry: DatabaseRetry = field(default_factory=DatabaseRetry)
    turn: TurnSettings = field(default_factory=TurnSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    membership: MembershipSettings = field(default_factory=MembershipSettings)
    signaling: SignalingSettings = field(default_factory=SignalingSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    span: SpanConfig = field(default_factory=SpanConfig)
    http: HttpSettings = field(default_factory=HttpSettings)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))


class _Env:
    """Typed getters over an environment mapping that name the variable on error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T, parse: Callable[[str], T], what: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not {what}") from None

    def string(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        result = self._parse(name, default, int, "an integer")
        if not low <= result <= high:
            raise ConfigError(f"{name}={result} is out of range [{low}, {high}]")
        return result

    def seconds(self, name: str, default: float, *, low: float, high: float) -> float:
        result = self._parse(name, default, float, "a number of seconds")
        if not low <= result <= high:
            raise ConfigError(f"{name}={result:g} is out of range [{low:g}, {high:g}] seconds")
        return result

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={value!r} is not a boolean (use 1/0, true/false)")

    def port_range(self, name: str) -> tuple[int, int] | None:
        if (value := self.raw(name)) is None:
            return None
        low, sep, high = value.partition("-")
        if not (sep and low.strip().isdigit() and high.strip().isdigit()):
            raise ConfigError(f"{name}={value!r} is not a port range like 40000-40999")
        if not 1024 <= (ports := (int(low), int(high)))[0] <= ports[1] <= 65535:
            raise ConfigError(f"{name}={value!r} must lie within 1024-65535, low port first")
        return ports

    def csv(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        return tuple(part.strip() for part in value.split(",") if part.strip())


def _check_database_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not parts.path or parts.path == "/":
            raise ConfigError(f"HUDDLE_DATABASE_URL={url!r} names no SQLite file")
        return url
    if parts.scheme in {"postgresql", "postgres"}:
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise ConfigError(f"HUDDLE_DATABASE_URL={url!r} names no Postgres host")
        return url
    raise ConfigError(f"HUDDLE_DATABASE_URL={url!r} must start with sqlite:/// or postgresql://")


def _check_redis_url(url: str | None) -> str | None:
    if url is None:
        return None
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"HUDDLE_REDIS_URL={url!r} must start with redis://, rediss://")
    return url


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only listens on loopback (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _dev_mode(env: _Env, host: str, jwt_secret: str | None) -> bool:
    """Dev mode (``/v1/dev/token`` mints tokens for anyone) is never a silent
    default off loopback: on any other address it needs ``HUDDLE_DEV=1``."""
    explicit = env.raw("HUDDLE_DEV")
    if explicit is not None:
        return env.boolean("HUDDLE_DEV", default=False)
    if jwt_secret is not None:
        return False
    if not is_loopback_host(host):
        raise ConfigError(
            f"HUDDLE_JWT_SECRET is required when serving on HUDDLE_HOST={host!r} "
            "(not loopback); set HUDDLE_DEV=1 to run dev mode there on purpose "
            "(anyone who reaches it can mint tokens)"
        )
    return True


def load_config(environ: Mapping[str, str]) -> Config:
    """Build and validate the configuration from ``environ`` (usually ``os.environ``)."""
    env = _Env(environ)
    host = env.string("HUDDLE_HOST", "127.0.0.1")
    jwt_secret = env.raw("HUDDLE_JWT_SECRET")
    dev_mode = _dev_mode(env, host, jwt_secret)
    if jwt_secret is None:
        if not dev_mode:
            raise ConfigError("HUDDLE_JWT_SECRET is required when HUDDLE_DEV=0")
        jwt_secret = secrets.token_urlsafe(32)
    elif len(jwt_secret) < 32:
        raise ConfigError("HUDDLE_JWT_SECRET must be at least 32 characters")

    limits = Limits(
        max_participants=env.integer("HUDDLE_MAX_PARTICIPANTS", 10, low=2, high=1000),
        max_callees=env.integer("HUDDLE_MAX_CALLEES", 50, low=1, high=1000),
        initiate_per_minute=env.integer("HUDDLE_INITIATE_PER_MINUTE", 10, low=1, high=100_000),
        ringing_timeout_s=env.seconds("HUDDLE_RINGING_TIMEOUT", 300, low=1, high=3600),
        max_duration_s=env.seconds("HUDDLE_MAX_CALL_DURATION", 86_400, low=60, high=7 * 86_400),
        stale_after_s=env.seconds("HUDDLE_STALE_AFTER", 86_400, low=60, high=30 * 86_400),
        disconnect_grace_s=env.seconds("HUDDLE_DISCONNECT_GRACE", 10, low=0, high=600),
        db_timeout_s=env.seconds("HUDDLE_DB_TIMEOUT", 5, low=0.1, high=120),
        request_timeout_s=env.seconds("HUDDLE_REQUEST_TIMEOUT", 30, low=1, high=600),
        shutdown_timeout_s=env.seconds("HUDDLE_SHUTDOWN_TIMEOUT", 10, low=1, high=600),
        drain_timeout_s=env.seconds("HUDDLE_DRAIN_TIMEOUT", 0, low=0, high=86_400),
        sweep_interval_s=env.seconds("HUDDLE_SWEEP_INTERVAL", 5, low=0.05, high=3600),
    )
    turn = TurnSettings(
        uris=env.csv("HUDDLE_TURN_URIS"),
        stun_uris=env.csv("HUDDLE_STUN_URIS"),
        secret=env.raw("HUDDLE_TURN_SECRET"),
        ttl_s=env.integer("HUDDLE_TURN_TTL", 14_400, low=-(2**31), high=2**31),
    )
    signaling = SignalingSettings(
        allowed_origins=env.csv("HUDDLE_ALLOWED_ORIGINS"),
        max_connections=env.integer("HUDDLE_MAX_CONNECTIONS", 2_000, low=1, high=1_000_000),
        max_message_bytes=env.integer(
            "HUDDLE_MAX_MESSAGE_BYTES", 64 * 1024, low=1024, high=1024 * 1024
        ),
        messages_per_second=env.seconds("HUDDLE_MESSAGES_PER_SECOND", 50, low=1, high=10_000),
        ping_after_s=env.seconds("HUDDLE_PING_AFTER", 20, low=0.1, high=3600),
        drop_after_s=env.seconds("HUDDLE_DROP_AFTER", 45, low=0.2, high=3600),
        node_ttl_s=env.seconds("HUDDLE_NODE_TTL", 15, low=1, high=300),
        connect_timeout_s=env.seconds("HUDDLE_CONNECT_TIMEOUT", 60, low=1, high=86_400),
        leave_retry_s=env.seconds("HUDDLE_LEAVE_RETRY", 2, low=0.05, high=60),
    )
    if signaling.drop_after_s <= signaling.ping_after_s:
        raise ConfigError("HUDDLE_DROP_AFTER must be longer than HUDDLE_PING_AFTER")
    media = MediaSettings(
        ice_hosts=env.csv("HUDDLE_ICE_HOSTS"),
        ice_ports=env.port_range("HUDDLE_ICE_PORTS"),
        public_ip=env.raw("HUDDLE_PUBLIC_IP"),
        pli_min_interval_s=env.seconds("HUDDLE_PLI_MIN_INTERVAL", 0.5, low=0.05, high=10),
        udp_gso=env.boolean("HUDDLE_UDP_GSO", True),
        max_publish_bitrate=env.integer(
            "HUDDLE_MAX_PUBLISH_BITRATE", 2_500_000, low=30_000, high=100_000_000
        ),
        transport_cc=env.boolean("HUDDLE_TRANSPORT_CC", True),
    )
    webhook_url = env.raw("HUDDLE_WEBHOOK_URL")
    webhook_secret = env.raw("HUDDLE_WEBHOOK_SECRET")
    if webhook_url is not None:
        if urlsplit(webhook_url).scheme not in {"http", "https"}:
            raise ConfigError(f"HUDDLE_WEBHOOK_URL={webhook_url!r} must be http(s)://")
        if webhook_secret is None:
            raise ConfigError("HUDDLE_WEBHOOK_SECRET is required when HUDDLE_WEBHOOK_URL is set")

    membership_url = env.raw("HUDDLE_MEMBERSHIP_URL")
    membership_secret = env.raw("HUDDLE_MEMBERSHIP_SECRET")
    if membership_url is not None:
        if urlsplit(membership_url).scheme not in {"http", "https"}:
            raise ConfigError(f"HUDDLE_MEMBERSHIP_URL={membership_url!r} must be http(s)://")
        if membership_secret is None:
            raise ConfigError(
                "HUDDLE_MEMBERSHIP_SECRET is required when HUDDLE_MEMBERSHIP_URL is set"
            )
    membership = MembershipSettings(
        url=membership_url,
        secret=membership_secret,
        timeout_s=env.seconds("HUDDLE_MEMBERSHIP_TIMEOUT", 2.0, low=0.1, high=30),
    )

    db_retry = DatabaseRetry(
        attempts=env.integer("HUDDLE_DB_CONNECT_ATTEMPTS", 5, low=1, high=100),
        base_s=env.seconds("HUDDLE_DB_RETRY_BASE", 1.0, low=0.01, high=60),
        cap_s=env.seconds("HUDDLE_DB_RETRY_CAP", 30.0, low=0.01, high=600),
    )
    http = HttpSettings(
        frame_ancestors=parse_frame_ancestors(env.raw("HUDDLE_FRAME_ANCESTORS")),
        max_pending_per_ip=env.integer("HUDDLE_MAX_PENDING_PER_IP", 32, low=1, high=100_000),
        header_timeout_s=env.seconds("HUDDLE_HEADER_TIMEOUT", 10, low=0.5, high=600),
    )
    config = Config(
        host=host,
        port=env.integer("HUDDLE_PORT", 8080, low=0, high=65535),
        database_url=_check_database_url(
            env.string("HUDDLE_DATABASE_URL", "sqlite:///var/huddle.db")
        ),
        redis_url=_check_redis_url(env.raw("HUDDLE_REDIS_URL")),
        jwt_secret=jwt_secret,
        dev_mode=dev_mode,
        node_id=env.string("HUDDLE_NODE_ID", secrets.token_hex(4)),
        admin_token=_admin_token(env),
        workers=env.integer("HUDDLE_WORKERS", len(os.sched_getaffinity(0)), low=1, high=256),
        sfu_in_process=env.boolean("HUDDLE_SFU_IN_PROCESS", True),
        static_dir=env.raw("HUDDLE_STATIC_DIR"),
        limits=limits,
        db_retry=db_retry,
        turn=turn,
        webhook=WebhookSettings(url=webhook_url, secret=webhook_secret),
        membership=membership,
        signaling=signaling,
        media=media,
        span=_span(env),
        http=http,
    )
    validate_turn_settings(config.turn)
    validate_span_settings(
        config.span, ice_hosts=config.media.ice_hosts, clustered=config.redis_url is not None
    )
    return config


def _span(env: _Env) -> SpanConfig:
    span = SpanConfig(
        node_limit=env.integer("HUDDLE_ROOM_NODE_LIMIT", 0, low=0, high=100_000),
        policy=env.string("HUDDLE_ROOM_SPAN", "owner").lower(),
        relay_host=env.raw("HUDDLE_RELAY_HOST"),
        relay_port=env.integer("HUDDLE_RELAY_PORT", 0, low=0, high=65535),
        relay_secret=env.raw("HUDDLE_RELAY_SECRET"),
    )
    return span


def _admin_token(env: _Env) -> str | None:
    token = env.raw("HUDDLE_ADMIN_TOKEN")
    if token is not None and len(token) < 32:
        raise ConfigError("HUDDLE_ADMIN_TOKEN must be at least 32 characters")
    return token
