"""Who is asking: the bearer token (or, for WebSockets, ``access_token``)."""

from __future__ import annotations

from aiohttp import web

from server import auth
from server.auth import Identity
from server.keys import TOKENS


def identify(request: web.Request, *, allow_query: bool = False) -> Identity:
    query_token = request.query.get("access_token") if allow_query else None
    return auth.identify(request.app[TOKENS], request.headers.get("Authorization"), query_token)
