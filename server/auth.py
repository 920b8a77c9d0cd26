"""HS256 JWT bearer tokens: ``sub`` is the user id, ``name`` optional, ``exp`` required."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import Unauthorized

ALGORITHM = "HS256"
DEFAULT_TTL_S = 24 * 3600
#: User ids are opaque to Huddle (they come from the operator's login), but bounded.
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_NAME_LENGTH = 64


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
        if not isinstance(sub, str) or not USER_ID_PATTERN.match(sub):
            raise Unauthorized("the token's sub is not a valid user id", code="token_invalid")
        return Identity(user_id=sub, name=clean_name(claims.get("name")))


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization: Bearer token", code="token_missing")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'", code="token_missing"
        )
    return token.strip()
