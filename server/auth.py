"""HS256 JWT bearer tokens: ``sub`` is the user id, ``name`` optional, ``exp`` required."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import Unauthorized
from server.ids import RESERVED_USER_IDS

ALGORITHM = "HS256"
DEFAULT_TTL_S = 24 * 3600
#: User ids are opaque to Huddle (they come from the operator's login), but bounded.
#: ``\Z``, not ``$``: ``$`` would also accept a trailing newline.
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z")
MAX_NAME_LENGTH = 64
_SURROGATES = re.compile("[\ud800-\udfff]")


def is_valid_user_id(value: str) -> bool:
    return USER_ID_PATTERN.match(value) is not None


def is_reserved_user_id(value: str) -> bool:
    return value.lower() in RESERVED_USER_IDS


def storable_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (SQLite and Postgres), or None.

    A lone surrogate is not encodable as UTF-8 at all; Postgres ``text``
    refuses NUL. Both are refused at the edge rather than failing in the store.
    """
    if "\x00" in value:
        return "holds a NUL character"
    if _SURROGATES.search(value) is not None:
        return "holds a lone surrogate (not valid Unicode text)"
    return None


@dataclass(frozen=True)
class Identity:
    user_id: str
    name: str | None


def clean_name(name: object) -> str | None:
    if not isinstance(name, str):
        return None
    name = " ".join(name.split())
    return name[:MAX_NAME_LENGTH] or None


class TokenService:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def issue(
        self,
        user_id: str,
        name: str | None = None,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        now: float | None = None,
    ) -> str:
        if not is_valid_user_id(user_id) or is_reserved_user_id(user_id):
            raise ValueError(f"not a valid, unreserved user id: {user_id!r}")
        if name is not None and (problem := storable_text_problem(name)):
            raise ValueError(f"the name {problem}")
        issued = int(now if now is not None else time.time())
        claims: dict[str, object] = {"sub": user_id, "iat": issued, "exp": issued + ttl_s}
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def new_user(self, name: str, *, ttl_s: int = DEFAULT_TTL_S) -> tuple[str, str]:
        """A token for a fresh user id (dev mode, CLI): returns (user_id, token)."""
        user_id = str(uuid.uuid4())
        return user_id, self.issue(user_id, name, ttl_s=ttl_s)

    def verify(self, token: str) -> Identity:
        if not token.isascii():
            # A JWT is base64url and dots. aiohttp hands over undecodable header
            # bytes as surrogate escapes, which PyJWT cannot even encode.
            raise Unauthorized("the token is invalid: not ASCII", code="token_invalid")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", code="token_expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature is invalid", code="token_invalid") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is invalid: {exc}", code="token_invalid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not is_valid_user_id(sub):
            raise Unauthorized("the token's sub is not a valid user id", code="token_invalid")
        if is_reserved_user_id(sub):
            raise Unauthorized(f"the token's sub {sub!r} is a reserved id", code="token_invalid")
        raw_name = claims.get("name")
        if isinstance(raw_name, str) and (problem := storable_text_problem(raw_name)):
            # It would be stored as the participant's name on join: refuse it
            # here (401) rather than fail in the store (500) on every join.
            raise Unauthorized(f"the token's name claim {problem}", code="token_invalid")
        return Identity(user_id=sub, name=clean_name(raw_name))


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization: Bearer token", code="token_missing")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'", code="token_missing"
        )
    return token.strip()


def identify(tokens: TokenService, header: str | None, query_token: str | None = None) -> Identity:
    """Who is asking: the ``Authorization: Bearer`` header, else (WebSockets only)
    the ``access_token`` query parameter given as ``query_token``."""
    if header is None and query_token is not None:
        return tokens.verify(query_token)
    return tokens.verify(bearer_token(header))
