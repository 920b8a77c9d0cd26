"""Startup validation of the TURN settings, through load_config as the server runs it."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from server.app import create_app
from server.config import Config, ConfigError, TurnSettings, load_config
from server.keys import METRICS
from server.turn import log_turn_status

SECRET = "huddle-test-secret-0123456789"
TURN_ENV = {"HUDDLE_TURN_URIS": "turn:turn.example.org:3478", "HUDDLE_TURN_SECRET": SECRET}


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ("http://turn.example.org", "is not a valid URI"),
        ("turn:", "is not a valid URI"),
        ("turn://turn.example.org", "is not a valid URI"),
        ("turn:user@turn.example.org", "is not a valid URI"),
        ("turn:turn.example.org:", "is not a valid URI"),
        ("turn:turn.example.org:0", "out of range 1-65535"),
        ("turn:turn.example.org:65536", "out of range 1-65535"),
        ("turn:turn.example.org:34a", "is not a valid URI"),
        ("turn:turn.example.org?transport=sctp", "is not a valid URI"),
        ("turn:turn.example.org?transport=udp&x=1", "is not a valid URI"),
        ("turn:turn.example.org?transport=", "is not a valid URI"),
        ("turn:999.1.2.3", "is not an IPv4 address"),
        ("turn:1.2.3", "is not an IPv4 address"),
        ("turn:[2001:db8::zz]", "is not a valid URI"),
        ("turn:[2001:db8:::1]", "is not an IPv6 address"),
        ("turn:2001:db8::1", "is not a valid URI"),
        ("turn:-bad.example.org", "is not a valid URI"),
        ("turn:bad-.example.org", "is not a valid host name"),
        ("turn:bad..example.org", "is not a valid host name"),
        ("stun:turn.example.org", "must use one of turn:, turns:"),
        ("turns:turn.example.org?transport=udp", "use ?transport=tcp"),
        ("turn:turn.example.org:3478,turn:other.example.org:99999", "out of range"),
    ],
)
def test_malformed_turn_uri_stops_startup(uris: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({**TURN_ENV, "HUDDLE_TURN_URIS": uris})
    message = str(raised.value)
    assert message.startswith("HUDDLE_TURN_URIS: ")
    assert reason in message


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ("stun:stun.example.org?transport=udp", "take no transport parameter"),
        ("turn:stun.example.org", "must use one of stun:"),
        ("stuns:stun.example.org", "must use one of stun:"),
        ("stun:stun.example.org:70000", "out of range 1-65535"),
        ("stun:", "is not a valid URI"),
        ("stun.example.org:3478", "is not a valid URI"),
    ],
)
def test_malformed_stun_uri_stops_startup(uris: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"HUDDLE_STUN_URIS": uris})
    message = str(raised.value)
    assert message.startswith("HUDDLE_STUN_URIS: ")
    assert reason in message


def test_well_formed_uris_are_accepted() -> None:
    config = load_config(
        {
            **TURN_ENV,
            "HUDDLE_TURN_URIS": (
                "turn:turn.example.org:3478?transport=udp, "
                "turn:turn.example.org:3478?transport=tcp,"
                "turns:turn.example.org:5349?transport=tcp,turns:turn.example.org:443,"
                "turn:203.0.113.5,turn:[2001:db8::1]:3478,turn:localhost"
            ),
            "HUDDLE_STUN_URIS": "stun:stun.example.org,stun:[2001:db8::2]:3478",
        }
    )
    assert len(config.turn.uris) == 7
    assert config.turn.uris[1] == "turn:turn.example.org:3478?transport=tcp"
    assert config.turn.stun_uris == ("stun:stun.example.org", "stun:[2001:db8::2]:3478")


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (None, "HUDDLE_TURN_SECRET is required when HUDDLE_TURN_URIS is set"),
        ("", "HUDDLE_TURN_SECRET is required when HUDDLE_TURN_URIS is set"),
        ("   ", "HUDDLE_TURN_SECRET is required when HUDDLE_TURN_URIS is set"),
        ("short", "HUDDLE_TURN_SECRET must be at least 16 characters"),
        ("x" * 15, "HUDDLE_TURN_SECRET must be at least 16 characters"),
        ("has a space in the middle", "HUDDLE_TURN_SECRET must be printable ASCII"),
        ("has#a-comment-sign-in-it", "HUDDLE_TURN_SECRET must be printable ASCII"),
        ('has"a-quote-in-it-123456', "HUDDLE_TURN_SECRET must be printable ASCII"),
        ("non-ascii-sécret-0123456", "HUDDLE_TURN_SECRET must be printable ASCII"),
    ],
)
def test_missing_or_weak_secret_stops_startup(secret: str | None, reason: str) -> None:
    env = {"HUDDLE_TURN_URIS": "turn:turn.example.org:3478"}
    if secret is not None:
        env["HUDDLE_TURN_SECRET"] = secret
    with pytest.raises(ConfigError, match="HUDDLE_TURN_SECRET") as raised:
        load_config(env)
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    ("ttl", "reason"),
    [
        ("0", "HUDDLE_TURN_TTL=0 is out of range [60, 604800] seconds"),
        ("-1", "HUDDLE_TURN_TTL=-1 is out of range [60, 604800] seconds"),
        ("59", "HUDDLE_TURN_TTL=59 is out of range"),
        ("604801", "HUDDLE_TURN_TTL=604801 is out of range"),
        ("4h", "HUDDLE_TURN_TTL='4h' is not an integer"),
        ("3.5", "HUDDLE_TURN_TTL='3.5' is not an integer"),
    ],
)
def test_ttl_out_of_range_stops_startup(ttl: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({**TURN_ENV, "HUDDLE_TURN_TTL": ttl})
    assert reason in str(raised.value)


def test_ttl_is_checked_without_turn_too() -> None:
    # A bad TTL is a typo worth stopping for even before TURN is switched on.
    with pytest.raises(ConfigError, match="HUDDLE_TURN_TTL=0"):
        load_config({"HUDDLE_TURN_TTL": "0"})


def test_no_turn_is_valid() -> None:
    turn = load_config({}).turn
    assert turn == TurnSettings()


def test_no_turn_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="server.turn"):
        log_turn_status(TurnSettings())
    records = [r for r in caplog.records if r.name == "server.turn"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "TURN not configured" in records[0].getMessage()
    assert "HUDDLE_TURN_URIS" in records[0].getMessage()


def test_secret_without_uris_is_mentioned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="server.turn"):
        log_turn_status(TurnSettings(secret=SECRET))
    assert "HUDDLE_TURN_SECRET is set but unused" in caplog.text
    assert SECRET not in caplog.text


def test_configured_turn_is_logged_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    turn = load_config(TURN_ENV).turn
    with caplog.at_level(logging.INFO, logger="server.turn"):
        log_turn_status(turn)
    records = [r for r in caplog.records if r.name == "server.turn"]
    assert [r.levelno for r in records] == [logging.INFO]
    assert "turn:turn.example.org:3478" in records[0].getMessage()
    assert SECRET not in caplog.text


def _gauge(app: web.Application) -> float | None:
    return app[METRICS].registry.get_sample_value("video_turn_config_valid")


def test_create_app_warns_once_and_sets_the_gauge(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="server.turn"):
        app = create_app(Config(database_url="sqlite:///unused.db"))
    warnings = [r for r in caplog.records if r.name == "server.turn"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert _gauge(app) == 0

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="server.turn"):
        app = create_app(
            Config(database_url="sqlite:///unused.db", turn=load_config(TURN_ENV).turn)
        )
    assert [r.levelno for r in caplog.records if r.name == "server.turn"] == [logging.INFO]
    assert _gauge(app) == 1
