"""TURN REST credentials (draft-uberti-behave-turn-rest-00) and their validation.

coturn runs with ``use-auth-secret`` and the same ``static-auth-secret``; Huddle
hands each user a short-lived credential derived from it:

* ``username = "<expiry unix time>:<user id>"``
* ``password = base64(HMAC-SHA1(secret, username))``

coturn recomputes the password from the username and refuses it once the expiry
has passed, so Huddle never stores credentials. See ``turn/README.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.config import ConfigError, TurnSettings

if TYPE_CHECKING:
    from aiortc import RTCIceServer

logger = logging.getLogger(__name__)

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


def log_turn_status(turn: TurnSettings) -> None:
    """Say once at startup whether clients get TURN; no TURN is a warning, not an error."""
    if turn.uris:
        logger.info(
            "TURN: %d URI(s) %s, credentials valid %d s",
            len(turn.uris),
            ", ".join(turn.uris),
            turn.ttl_s,
        )
        return
    unused = " (HUDDLE_TURN_SECRET is set but unused)" if turn.secret else ""
    logger.warning(
        "TURN not configured: HUDDLE_TURN_URIS is unset%s; clients behind symmetric NATs "
        "or UDP-blocking firewalls will fail to connect. See turn/README.md.",
        unused,
    )


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), as coturn's ``use-auth-secret`` computes it."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def issue_credentials(
    turn: TurnSettings, user_id: str, now: float, *, ttl_s: int | None = None
) -> TurnCredentials | None:
    """Credentials valid for ``ttl_s`` (default ``turn.ttl_s``) from ``now`` (unix time).

    None when no TURN server is configured. Raises ValueError for a TTL that would
    issue an already expired credential (``load_config`` refuses one; a Config
    built by hand skips that check).
    """
    if not turn.uris or turn.secret is None:
        return None
    ttl = turn.ttl_s if ttl_s is None else ttl_s
    if ttl <= 0:
        raise ValueError(f"TURN credential TTL must be positive, got {ttl}")
    # int() truncates: the expiry is still at least ttl - 1 s > 0 s ahead of now.
    expiry = int(now) + ttl
    username = f"{expiry}:{user_id}"
    return TurnCredentials(
        username=username,
        password=turn_password(turn.secret, username),
        ttl=ttl,
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


def _aiortc_preference(uri: str) -> int:
    # aiortc uses only the first TURN URI it supports: prefer UDP, then TCP, then TLS.
    if uri.startswith("turns:"):
        return 2
    return 1 if uri.endswith("?transport=tcp") else 0


def node_ice_servers(
    turn: TurnSettings, node_id: str, now: float, *, ttl_s: int | None = None
) -> list[RTCIceServer]:
    """ICE servers for one of this node's own (SFU) peer connections, as aiortc objects.

    Pass the result as ``RTCConfiguration(iceServers=...)`` even when it is empty:
    ``iceServers=None`` makes aiortc contact Google's public STUN server.

    Call it once per peer connection: each call mints a credential with its own
    username ``"<expiry>:node.<node_id>.<random>"``, so coturn's per-user
    allocation quota (``user-quota``) counts per connection, not per node.
    ``ttl_s`` defaults to ``turn.ttl_s``; the credential only needs to be valid
    when the allocation is made (and at each 401 re-authentication), so pass the
    maximum call duration if connections outlive it. Returns the STUN servers
    (if any) and one TURN server whose URIs are ordered UDP, TCP, TLS, because
    aiortc uses only the first TURN URI it supports.
    """
    from aiortc import RTCIceServer

    servers: list[RTCIceServer] = []
    if turn.stun_uris:
        servers.append(RTCIceServer(urls=list(turn.stun_uris)))
    credentials = issue_credentials(
        turn, f"node.{node_id}.{secrets.token_hex(4)}", now, ttl_s=ttl_s
    )
    if credentials is not None:
        servers.append(
            RTCIceServer(
                urls=sorted(credentials.uris, key=_aiortc_preference),
                username=credentials.username,
                credential=credentials.password,
            )
        )
    return servers
