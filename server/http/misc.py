"""Health, readiness, metrics, TURN credentials and the dev-mode token endpoint."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import clean_name, storable_text_problem
from server.errors import BadRequest, NotFound
from server.http import validate
from server.http.auth import identify
from server.keys import CONFIG, METRICS, READINESS, TOKENS
from server.turn import issue_credentials

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node_id": request.app[CONFIG].node_id})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    ok, checks = await readiness.report()
    body = {
        "status": "ready" if ok else "not_ready",
        "shutting_down": readiness.shutting_down,
        "draining": readiness.draining,
        "checks": checks,
    }
    return web.json_response(body, status=200 if ok else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[METRICS].registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/v1/turn/credentials")
async def turn_credentials(request: web.Request) -> web.Response:
    who = identify(request)
    credentials = issue_credentials(request.app[CONFIG].turn, who.user_id, time.time())
    if credentials is None:
        raise NotFound("this server has no TURN server configured", code="turn_not_configured")
    return web.json_response(credentials.to_json())


@routes.post("/v1/dev/token")
async def dev_token(request: web.Request) -> web.Response:
    if not request.app[CONFIG].dev_mode:
        raise NotFound("dev tokens are only issued in dev mode", code="not_found")
    body = await validate.json_body(request)
    if "name" not in body:
        raise BadRequest("name is required", code="missing_field")
    raw = body["name"]
    name = clean_name(raw)
    if name is None or not isinstance(raw, str) or len(raw) > 64:
        raise BadRequest(
            "name must be a non-empty string of at most 64 characters", code="invalid_field"
        )
    # json_body refuses these already; the token must never carry a name that
    # every later join would fail to store.
    problem = storable_text_problem(name)
    if problem is not None:
        raise BadRequest(f"name {problem}", code="invalid_field")
    user_id, token = request.app[TOKENS].new_user(name)
    return web.json_response({"token": token, "user_id": user_id, "name": name}, status=201)
