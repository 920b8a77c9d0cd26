"""TURN settings and their validation, apart from the credentials (:mod:`server.turn`),
so that configuration loading (:mod:`server.config`) and TURN need not import each other."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from server.errors import ConfigError

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
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# coturn reads the secret from its config file or command line: no spaces, no
# quotes, no '#' (a comment there), only printable ASCII.
_SECRET = re.compile(r"^[!$-&(-~]+$")


@dataclass(frozen=True)
class TurnSettings:
    """TURN REST (draft-uberti-behave-turn-rest-00) settings; see :func:`validate_turn_settings`."""

    uris: tuple[str, ...] = ()
    stun_uris: tuple[str, ...] = ()
    secret: str | None = None
    ttl_s: int = 14_400


def _check_host(uri: str, host: str) -> None:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{uri!r}: {host} is not an IPv6 address") from None
        return
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{uri!r}: {host} is not an IPv4 address") from None
        return
    if not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"{uri!r}: {host!r} is not a valid host name")


def check_uri(uri: str, *, allowed: tuple[str, ...]) -> None:
    """Raise ValueError with a reason when ``uri`` is not a well-formed ICE server URI."""
    match = _URI.match(uri)
    if match is None:
        raise ValueError(
            f"{uri!r} is not a valid URI (expected scheme:host[:port][?transport=udp|tcp])"
        )
    scheme = match["scheme"]
    if scheme not in allowed:
        raise ValueError(f"{uri!r} must use one of {', '.join(s + ':' for s in allowed)}")
    _check_host(uri, match["host"])
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"{uri!r} has port {match['port']} out of range 1-65535")
    if match["transport"] is not None and scheme.startswith("stun"):
        raise ValueError(f"{uri!r}: stun: URIs take no transport parameter")
    if scheme == "turns" and match["transport"] == "udp":
        # TURN over DTLS: neither browsers nor aiortc speak it.
        raise ValueError(f"{uri!r}: turns: is TURN over TLS, use ?transport=tcp or none")


def validate_turn_settings(turn: TurnSettings) -> None:
    """Raise ConfigError naming the variable when the TURN settings can't work."""
    for uri in turn.uris:
        try:
            check_uri(uri, allowed=("turn", "turns"))
        except ValueError as exc:
            raise ConfigError(f"HUDDLE_TURN_URIS: {exc}") from None
    for uri in turn.stun_uris:
        try:
            # stuns: is in RFC 7064 but no browser or aiortc implements it.
            check_uri(uri, allowed=("stun",))
        except ValueError as exc:
            raise ConfigError(f"HUDDLE_STUN_URIS: {exc}") from None
    if turn.uris:
        if turn.secret is None:
            raise ConfigError("HUDDLE_TURN_SECRET is required when HUDDLE_TURN_URIS is set")
        if len(turn.secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"HUDDLE_TURN_SECRET must be at least {MIN_SECRET_LENGTH} characters")
    if turn.secret is not None and not _SECRET.match(turn.secret):
        raise ConfigError(
            "HUDDLE_TURN_SECRET must be printable ASCII without spaces, quotes or '#' "
            "(coturn reads the same value from its config file)"
        )
    if not MIN_TTL_S <= turn.ttl_s <= MAX_TTL_S:
        raise ConfigError(
            f"HUDDLE_TURN_TTL={turn.ttl_s} is out of range [{MIN_TTL_S}, {MAX_TTL_S}] seconds"
        )
