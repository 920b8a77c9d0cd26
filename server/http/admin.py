"""The admin API: ``POST /v1/admin/drain`` with ``Authorization: Bearer $HUDDLE_ADMIN_TOKEN``.

Always routed; without ``HUDDLE_ADMIN_TOKEN`` every call is refused with 403
``admin_disabled`` (so an operator sees why, instead of a 404 that looks like
a wrong URL). No or a malformed header: 401; a wrong token: 403.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from server.errors import Forbidden, Unauthorized
from server.keys import CONFIG
from server.wiring.drain import DRAIN

routes = web.RouteTableDef()


def _check_admin(request: web.Request) -> None:
    expected = request.app[CONFIG].admin_token
    if expected is None:
        raise Forbidden(
            "the admin API is off: HUDDLE_ADMIN_TOKEN is not set", code="admin_disabled"
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the admin API needs Authorization: Bearer <HUDDLE_ADMIN_TOKEN>")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Forbidden("wrong admin token")


@routes.post("/v1/admin/drain")
async def drain(request: web.Request) -> web.Response:
    """Drain this node (as SIGTERM does): no new rooms, not ready; its rooms run on
    until they empty or ``HUDDLE_DRAIN_TIMEOUT``; then participants are told to
    reconnect and the process stops. Idempotent."""
    _check_admin(request)
    control = request.app[DRAIN]
    started = control.begin()
    body = {
        "status": "draining",
        "node_id": request.app[CONFIG].node_id,
        "started": started,
        "timeout_s": control.timeout_s,
        "live_rooms": control.live_rooms(),
    }
    return web.json_response(body, status=202)
