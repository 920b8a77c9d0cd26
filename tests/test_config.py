"""Configuration: defaults run one node; every bad value names its variable."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_config


def test_defaults_are_the_embedded_single_node() -> None:
    config = load_config({})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.database_url == "sqlite:///var/huddle.db"
    assert config.redis_url is None
    assert config.dev_mode is True
    assert len(config.jwt_secret) >= 32
    limits = config.limits
    assert (limits.max_participants, limits.initiate_per_minute) == (10, 10)
    assert (limits.ringing_timeout_s, limits.max_duration_s, limits.stale_after_s) == (
        300,
        86_400,
        86_400,
    )
    assert (limits.disconnect_grace_s, limits.db_timeout_s) == (10, 5)
    assert (limits.request_timeout_s, limits.shutdown_timeout_s) == (30, 10)
    assert config.turn.ttl_s == 14_400


def test_a_jwt_secret_turns_dev_mode_off() -> None:
    config = load_config({"HUDDLE_JWT_SECRET": "s" * 40})
    assert config.dev_mode is False
    assert config.jwt_secret == "s" * 40


def test_scale_out_settings() -> None:
    config = load_config(
        {
            "HUDDLE_DATABASE_URL": "postgresql://u@db:5432/huddle",
            "HUDDLE_REDIS_URL": "redis://cache:6379/0",
            "HUDDLE_ICE_HOSTS": "10.0.0.5, 127.0.0.1",
            "HUDDLE_ALLOWED_ORIGINS": "https://a.example,https://b.example",
            "HUDDLE_MAX_PUBLISH_BITRATE": "1200000",
            "HUDDLE_ICE_PORTS": "40000-40999",
        }
    )
    assert config.media.ice_ports == (40000, 40999)
    assert config.media.max_publish_bitrate == 1_200_000
    assert config.is_postgres
    assert config.redis_url == "redis://cache:6379/0"
    assert config.media.ice_hosts == ("10.0.0.5", "127.0.0.1")
    assert config.signaling.allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUDDLE_PORT": "http"}, "HUDDLE_PORT='http' is not an integer"),
        ({"HUDDLE_PORT": "70000"}, "HUDDLE_PORT=70000 is out of range"),
        ({"HUDDLE_DEV": "0"}, "HUDDLE_JWT_SECRET is required when HUDDLE_DEV=0"),
        ({"HUDDLE_DEV": "maybe"}, "HUDDLE_DEV='maybe' is not a boolean"),
        ({"HUDDLE_JWT_SECRET": "short"}, "HUDDLE_JWT_SECRET must be at least 32 characters"),
        ({"HUDDLE_DATABASE_URL": "mysql://x"}, "HUDDLE_DATABASE_URL='mysql://x' must start"),
        ({"HUDDLE_DATABASE_URL": "sqlite://"}, "names no SQLite file"),
        ({"HUDDLE_REDIS_URL": "http://x"}, "HUDDLE_REDIS_URL='http://x' must start"),
        ({"HUDDLE_MAX_PARTICIPANTS": "1"}, "HUDDLE_MAX_PARTICIPANTS=1 is out of range"),
        ({"HUDDLE_RINGING_TIMEOUT": "soon"}, "HUDDLE_RINGING_TIMEOUT='soon' is not a number"),
        ({"HUDDLE_DB_TIMEOUT": "0"}, "HUDDLE_DB_TIMEOUT=0 is out of range"),
        ({"HUDDLE_WEBHOOK_URL": "ftp://x"}, "HUDDLE_WEBHOOK_URL='ftp://x' must be http(s)"),
        ({"HUDDLE_WEBHOOK_URL": "https://x"}, "HUDDLE_WEBHOOK_SECRET is required"),
        ({"HUDDLE_MAX_PUBLISH_BITRATE": "100"}, "HUDDLE_MAX_PUBLISH_BITRATE=100 is out of range"),
        ({"HUDDLE_ICE_PORTS": "40000"}, "HUDDLE_ICE_PORTS='40000' is not a port range"),
        ({"HUDDLE_ICE_PORTS": "a-b"}, "HUDDLE_ICE_PORTS='a-b' is not a port range"),
        ({"HUDDLE_ICE_PORTS": "41000-40000"}, "HUDDLE_ICE_PORTS='41000-40000' must lie within"),
        ({"HUDDLE_ICE_PORTS": "80-90"}, "HUDDLE_ICE_PORTS='80-90' must lie within"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert message in str(caught.value)


def test_rooms_across_nodes_are_off_by_default_and_configurable() -> None:
    assert not load_config({}).span.enabled
    cluster = {"HUDDLE_REDIS_URL": "redis://cache:6379/0"}
    span = load_config(
        {
            **cluster,
            "HUDDLE_ROOM_NODE_LIMIT": "25",
            "HUDDLE_RELAY_HOST": "10.0.0.5",
            "HUDDLE_RELAY_PORT": "7882",
            "HUDDLE_RELAY_SECRET": "r" * 32,
        }
    ).span
    assert span.enabled and (span.node_limit, span.policy) == (25, "owner")
    assert (span.relay_host, span.relay_port, span.relay_secret) == ("10.0.0.5", 7882, "r" * 32)
    assert "r" * 32 not in repr(span)
    local = load_config({**cluster, "HUDDLE_ROOM_SPAN": "local", "HUDDLE_ICE_HOSTS": "10.0.0.6"})
    assert local.span.enabled and local.span.relay_host is None  # the ICE host, then


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUDDLE_ROOM_SPAN": "everywhere"}, "HUDDLE_ROOM_SPAN"),
        ({"HUDDLE_ROOM_NODE_LIMIT": "-1"}, "HUDDLE_ROOM_NODE_LIMIT"),
        ({"HUDDLE_RELAY_HOST": "relay.example"}, "HUDDLE_RELAY_HOST"),
        ({"HUDDLE_RELAY_HOST": "0.0.0.0"}, "HUDDLE_RELAY_HOST"),
        ({"HUDDLE_RELAY_PORT": "70000"}, "HUDDLE_RELAY_PORT"),
        ({"HUDDLE_RELAY_SECRET": "short"}, "HUDDLE_RELAY_SECRET"),
        (
            {"HUDDLE_REDIS_URL": "redis://cache:6379/0", "HUDDLE_ROOM_NODE_LIMIT": "5"},
            "HUDDLE_RELAY_HOST",
        ),
    ],
)
def test_bad_span_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env)
