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
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.turn_settings import MAX_TTL_S as MAX_TTL_S
from server.turn_settings import MIN_TTL_S as MIN_TTL_S
from server.turn_settings import TurnSettings

if TYPE_CHECKING:
    from aiortc import RTCIceServer

logger = logging.getLogger(__name__)


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
