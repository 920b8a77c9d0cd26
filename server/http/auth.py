"""Who is asking: the bearer token (or, for WebSockets, ``access_token``)."""

from __future__ import annotations

from aiohttp import web

from server.auth import Identity, bearer_token
from server.keys import TOKENS


def identify(request: web.Request, *, allow_query: bool = False) -> Identity:
    header = request.headers.get("Authorization")
    if header is None and allow_query and "access_token" in request.query:
        return request.app[TOKENS].verify(request.query["access_token"])
    return request.app[TOKENS].verify(bearer_token(header))
