"""The edge: one place maps errors to JSON, bounds request time, and counts requests."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import HuddleError, RateLimited
from server.keys import CONFIG, METRICS

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await _guarded(request, handler)
        status = response.status
        return response
    finally:
        request.app[METRICS].http_request(
            request.method, _route_label(request), status, time.perf_counter() - started
        )


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    is_websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    timeout_s = None if is_websocket else request.app[CONFIG].limits.request_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await handler(request)
    except RateLimited as exc:
        response = error_response(exc.status, exc.code, exc.message)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except HuddleError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            # RFC 9110 15.5.6: a 405 must list the methods the resource allows.
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TimeoutError:
        return error_response(503, "request_timeout", "the request took too long")
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an unexpected error occurred")
