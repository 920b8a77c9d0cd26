"""TURN REST credentials (draft-uberti-behave-turn-rest-00) and their validation.

coturn runs with ``use-auth-secret`` and the same ``static-auth-secret``; Huddle
hands each user a short-lived credential derived from it:

* ``username = "<expiry unix time>:<user id>"``
* ``password = base64(HMAC-SHA1(secret, username))``
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from server.config import ConfigError, TurnSettings

MIN_SECRET_LENGTH = 16
MIN_TTL_S = 60
MAX_TTL_S = 7 * 86_400

# RFC 7064/7065: stun:host[:port], turn(s):host[:port][?transport=udp|tcp]
_URI = re.compile(
    r"^(?P<scheme>stuns?|turns?):"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


@dataclass(frozen=True)
class TurnCredentials:
    username: str
    password: str
    ttl: int
    uris: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "username": self.username,
            "password": self.password,
            "ttl": self.ttl,
            "uris": list(self.uris),
        }


def check_uri(uri: str, *, allowed: tuple[str, ...]) -> None:
    """Raise ValueError with a reason when ``uri`` is not a well-formed ICE server URI."""
    match = _URI.match(uri)
    if match is None:
        raise ValueError(
            f"{uri!r} is not a valid URI (expected scheme:host[:port][?transport=udp|tcp])"
        )
    if match["scheme"] not in allowed:
        raise ValueError(f"{uri!r} must use one of {', '.join(s + ':' for s in allowed)}")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"{uri!r} has port {match['port']} out of range 1-65535")
    if match["transport"] is not None and match["scheme"].startswith("stun"):
        raise ValueError(f"{uri!r}: stun: URIs take no transport parameter")


def validate_turn_settings(turn: TurnSettings) -> None:
    """Raise ConfigError naming the variable when the TURN settings can't work."""
    for uri in turn.uris:
        try:
            check_uri(uri, allowed=("turn", "turns"))
        except ValueError as exc:
            raise ConfigError(f"HUDDLE_TURN_URIS: {exc}") from None
    for uri in turn.stun_uris:
        try:
            check_uri(uri, allowed=("stun", "stuns"))
        except ValueError as exc:
            raise ConfigError(f"HUDDLE_STUN_URIS: {exc}") from None
    if turn.uris:
        if turn.secret is None:
            raise ConfigError("HUDDLE_TURN_SECRET is required when HUDDLE_TURN_URIS is set")
        if len(turn.secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"HUDDLE_TURN_SECRET must be at least {MIN_SECRET_LENGTH} characters")
    if not MIN_TTL_S <= turn.ttl_s <= MAX_TTL_S:
        raise ConfigError(
            f"HUDDLE_TURN_TTL={turn.ttl_s} is out of range [{MIN_TTL_S}, {MAX_TTL_S}] seconds"
        )


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def issue_credentials(turn: TurnSettings, user_id: str, now: float) -> TurnCredentials | None:
    """Credentials valid for ``turn.ttl_s`` from ``now`` (unix time), or None without TURN."""
    if not turn.uris or turn.secret is None:
        return None
    expiry = int(now) + turn.ttl_s
    username = f"{expiry}:{user_id}"
    return TurnCredentials(
        username=username,
        password=turn_password(turn.secret, username),
        ttl=turn.ttl_s,
        uris=turn.uris,
    )


def ice_servers(turn: TurnSettings, user_id: str, now: float) -> list[dict[str, object]]:
    """The ``iceServers`` list for a browser's RTCConfiguration (join response)."""
    servers: list[dict[str, object]] = []
    if turn.stun_uris:
        servers.append({"urls": list(turn.stun_uris)})
    credentials = issue_credentials(turn, user_id, now)
    if credentials is not None:
        servers.append(
            {
                "urls": list(credentials.uris),
                "username": credentials.username,
                "credential": credentials.password,
            }
        )
    return servers
