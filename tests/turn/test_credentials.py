"""TURN REST credentials: the published scheme byte for byte, never expired."""

from __future__ import annotations

import base64

import pytest
from aiortc import RTCIceServer

from server.config import TurnSettings, load_config
from server.turn import (
    MAX_TTL_S,
    MIN_TTL_S,
    ice_servers,
    issue_credentials,
    node_ice_servers,
    turn_password,
)

SECRET = "huddle-test-secret-0123456789"
# Computed once, independently of Huddle, with:
#   printf '%s' "1700014400:user-42" | openssl dgst -sha1 -hmac \
#     "huddle-test-secret-0123456789" -binary | base64
EXPECTED_PASSWORD = "KIT5GCuqGZLsW5pThsja9xpeeDk="
#   printf '%s' "1700003600:8f14e45f-ceea-467f-a0e6-7f3c2a1b9d10" | openssl dgst ...
EXPECTED_UUID_PASSWORD = "CbAJsyV8R39Ku/hlooc6yD01PNM="

TURN = TurnSettings(
    uris=("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"),
    stun_uris=("stun:stun.example.org:3478",),
    secret=SECRET,
    ttl_s=14_400,
)


def test_password_matches_openssl_hmac_sha1() -> None:
    assert turn_password(SECRET, "1700014400:user-42") == EXPECTED_PASSWORD
    assert (
        turn_password(SECRET, "1700003600:8f14e45f-ceea-467f-a0e6-7f3c2a1b9d10")
        == EXPECTED_UUID_PASSWORD
    )


def test_issued_credential_follows_turn_rest_scheme() -> None:
    credentials = issue_credentials(TURN, "user-42", now=1_700_000_000.9)
    assert credentials is not None
    assert credentials.username == "1700014400:user-42"
    assert credentials.password == EXPECTED_PASSWORD
    assert len(base64.b64decode(credentials.password)) == 20  # an SHA-1 digest
    assert credentials.to_json() == {
        "username": "1700014400:user-42",
        "password": EXPECTED_PASSWORD,
        "ttl": 14_400,
        "uris": list(TURN.uris),
    }


def test_ttl_is_configurable_and_defaults_to_four_hours() -> None:
    env = {"HUDDLE_TURN_URIS": "turn:127.0.0.1:3478", "HUDDLE_TURN_SECRET": SECRET}
    assert load_config(env).turn.ttl_s == 4 * 3600
    turn = load_config({**env, "HUDDLE_TURN_TTL": "3600"}).turn
    credentials = issue_credentials(turn, "8f14e45f-ceea-467f-a0e6-7f3c2a1b9d10", 1_700_000_000)
    assert credentials is not None
    assert credentials.username == "1700003600:8f14e45f-ceea-467f-a0e6-7f3c2a1b9d10"
    assert credentials.password == EXPECTED_UUID_PASSWORD
    assert credentials.ttl == 3600


@pytest.mark.parametrize("ttl", [MIN_TTL_S, 61, 14_400, MAX_TTL_S])
@pytest.mark.parametrize("now", [0.0, 1_700_000_000.0, 1_700_000_000.999999, 4_000_000_000.5])
def test_issued_expiry_is_always_in_the_future(ttl: int, now: float) -> None:
    turn = TurnSettings(uris=("turn:127.0.0.1",), secret=SECRET, ttl_s=ttl)
    credentials = issue_credentials(turn, "u", now)
    assert credentials is not None
    expiry = int(credentials.username.split(":", 1)[0])
    assert expiry > now
    assert expiry >= now + ttl - 1


@pytest.mark.parametrize("ttl", [0, -1, -14_400])
def test_expired_credentials_are_never_issued(ttl: int) -> None:
    # load_config refuses such a TTL (see test_validation); a hand-built Config
    # that skipped validation still can't mint an already expired credential.
    turn = TurnSettings(uris=("turn:127.0.0.1",), secret=SECRET, ttl_s=ttl)
    with pytest.raises(ValueError, match="TTL must be positive"):
        issue_credentials(turn, "u", 1_700_000_000)
    with pytest.raises(ValueError, match="TTL must be positive"):
        issue_credentials(TURN, "u", 1_700_000_000, ttl_s=ttl)


def test_no_turn_configured_issues_nothing() -> None:
    assert issue_credentials(TurnSettings(), "u", 1_700_000_000) is None
    assert ice_servers(TurnSettings(), "u", 1_700_000_000) == []
    stun_only = TurnSettings(stun_uris=("stun:stun.example.org",))
    assert ice_servers(stun_only, "u", 1_700_000_000) == [{"urls": ["stun:stun.example.org"]}]


def test_browser_ice_servers() -> None:
    assert ice_servers(TURN, "user-42", 1_700_000_000) == [
        {"urls": ["stun:stun.example.org:3478"]},
        {
            "urls": list(TURN.uris),
            "username": "1700014400:user-42",
            "credential": EXPECTED_PASSWORD,
        },
    ]


def test_node_ice_servers_for_the_sfu() -> None:
    turn = TurnSettings(
        uris=(
            "turns:turn.example.org:5349?transport=tcp",
            "turn:turn.example.org:3478?transport=tcp",
            "turn:turn.example.org:3478?transport=udp",
        ),
        stun_uris=("stun:stun.example.org",),
        secret=SECRET,
        ttl_s=600,
    )
    first = node_ice_servers(turn, "node-a", 1_700_000_000)
    second = node_ice_servers(turn, "node-a", 1_700_000_000, ttl_s=86_400)
    assert all(isinstance(server, RTCIceServer) for server in first + second)
    stun, relay = first
    assert stun.urls == ["stun:stun.example.org"] and stun.username is None
    # aiortc uses only the first TURN URI it supports: UDP first.
    assert relay.urls == [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
        "turns:turn.example.org:5349?transport=tcp",
    ]
    assert relay.username is not None and relay.credential is not None
    expiry, user = relay.username.split(":", 1)
    assert int(expiry) == 1_700_000_600
    assert user.startswith("node.node-a.")
    assert relay.credential == turn_password(SECRET, relay.username)
    # A fresh username per peer connection: coturn's user-quota counts per credential.
    assert second[1].username is not None
    assert second[1].username.startswith("1700086400:node.node-a.")
    assert second[1].username.split(":", 1)[1] != user


def test_node_ice_servers_without_turn_is_an_empty_list_not_none() -> None:
    # RTCConfiguration(iceServers=None) would make aiortc contact Google's STUN.
    assert node_ice_servers(TurnSettings(), "node-a", 1_700_000_000) == []
