"""``GET /v1/calls/ws/signaling?call_id=…``: admission, then the connection's reader.

Everything that can be refused is refused before the upgrade, as an HTTP error
through the edge middleware: full node (503), bad ``Origin`` (403), no or bad
token (401), unknown call (404), not a joined participant (403), ended call
(410). After the upgrade, whatever is raised goes through
:func:`signaling.errors.edge_error` to :func:`answer` (an ``error`` message)
or :func:`violation` (a close code).

The app factory registers one :class:`SignalingEndpoint` as the route and
hands it the hub once the hub is up.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from aiohttp import WebSocketError, WSMsgType, web

from server.auth import TokenService, identify
from server.errors import BadRequest, Forbidden, Gone, HuddleError, Unavailable
from server.validation import uuid_value
from signaling.bus import BusUnavailable
from signaling.connection import Connection, TokenBucket
from signaling.errors import (
    CloseCode,
    ErrorCode,
    ProtocolViolation,
    SignalError,
    edge_error,
    error_message,
)
from signaling.hub import SignalingHub
from signaling.protocol import MAX_ID_LENGTH, decode, encode, validate

logger = logging.getLogger(__name__)

PATH = "/v1/calls/ws/signaling"


class SignalingEndpoint:
    """``GET /v1/calls/ws/signaling``: the request handler, given its hub at start-up."""

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens
        self.hub: SignalingHub | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        if hub is None:
            raise Unavailable("signaling is not running")
        return await signaling_ws(request, hub, self.tokens)


async def signaling_ws(
    request: web.Request, hub: SignalingHub, tokens: TokenService
) -> web.StreamResponse:
    if not hub.sockets.try_acquire():
        hub.metrics.rejected.labels("full").inc()
        raise Unavailable("this node has no room for more connections", code="node_full")
    try:
        try:
            conn = await _admit(request, hub, tokens)
        except HuddleError as exc:
            hub.metrics.rejected.labels(exc.code).inc()
            raise
        try:
            await _read(hub, conn)
        finally:
            # Shielded: aiohttp cancels the handler when the peer vanishes, and
            # the seat bookkeeping must still run.
            await asyncio.shield(hub.sockets.connection_ended(conn))
        return conn.ws
    finally:
        hub.sockets.release()


def check_origin(request: web.Request, allowed: tuple[str, ...]) -> None:
    """Browsers always send ``Origin``; it must be this host or an allowed origin.
    Non-browser clients send none and are judged by their token alone."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
        return
    if urlsplit(origin).netloc == request.host:
        return
    raise Forbidden(f"origin {origin} is not allowed", code="origin_not_allowed")


async def _admit(request: web.Request, hub: SignalingHub, tokens: TokenService) -> Connection:
    settings = hub.settings
    check_origin(request, settings.allowed_origins)
    who = identify(tokens, request.headers.get("Authorization"), request.query.get("access_token"))
    if "call_id" not in request.query:
        raise BadRequest("call_id is required", code="missing_field")
    call_id = uuid_value(request.query["call_id"], "call_id")
    call = await hub.calls.get_call(who, call_id)
    if call.is_ended:
        raise Gone(f"call {call_id} has ended", code="call_ended")
    participant = call.participant(who.user_id)
    if participant is None or not participant.is_joined:
        raise Forbidden("join the call (POST /v1/calls/{id}/join) first", code="not_joined")
    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, autoping=True)
    await ws.prepare(request)
    conn = Connection(
        ws,
        request,
        call_id=call_id,
        participant_id=who.user_id,
        name=participant.name or who.name,
        queue_size=settings.send_queue_size,
        ping_after_s=settings.ping_after_s,
        drop_after_s=settings.drop_after_s,
        write_timeout_s=hub.options.write_timeout_s,
    )
    conn.start()
    try:
        await hub.sockets.register(conn)
    except Exception:
        logger.exception("%r: registration failed", conn)
        conn.close(CloseCode.INTERNAL_ERROR, "registration failed", flush=False)
    return conn


async def _read(hub: SignalingHub, conn: Connection) -> None:
    settings = hub.settings
    flood = TokenBucket(settings.messages_per_second, settings.message_burst)
    abuse = TokenBucket(hub.options.errors_per_second, hub.options.error_burst)
    async for frame in conn.ws:
        if conn.closing:
            continue  # the writer is closing the socket: ignore the rest
        conn.heard()
        try:
            if not flood.take():
                raise ProtocolViolation(CloseCode.RATE_LIMITED, "too many messages")
            if frame.type is WSMsgType.ERROR:
                _frame_error(hub, conn, frame.data)
                continue
            if frame.type is not WSMsgType.TEXT:
                raise SignalError(ErrorCode.BINARY_NOT_SUPPORTED, "send JSON text frames")
            await _handle_text(hub, conn, frame.data)
        except Exception as exc:
            # Never let anything escape (aiohttp would write a raw HTTP 500 into
            # the upgraded stream): an error message, or a close.
            error = edge_error(exc, about=f"a frame from {conn!r}")
            if isinstance(error, ProtocolViolation):
                violation(hub, conn, error.close_code, error.reason)
                continue
            answer(hub, conn, error)
            if not abuse.take():
                violation(hub, conn, CloseCode.TOO_MANY_ERRORS, "too many invalid messages")


async def _handle_text(hub: SignalingHub, conn: Connection, text: str) -> None:
    raw = decode(text)
    try:
        message = validate(raw)
    except SignalError as exc:
        if raw.get("type") == "ice_candidate":
            hub.metrics.candidate(valid=False)
        request_id = raw.get("id")
        if isinstance(request_id, str | int) and len(str(request_id)) <= MAX_ID_LENGTH:
            exc.request_id = request_id
        raise
    kind = message["type"]
    hub.metrics.message(kind)
    if kind == "ice_candidate":
        hub.metrics.candidate(valid=True)
    try:
        await hub.handle(conn, message)
    except Exception as exc:
        error = edge_error(exc, about=f"a {kind} from {conn!r}")
        if isinstance(error, SignalError):
            error.request_id = message.get("id")
            if isinstance(exc, HuddleError | BusUnavailable):
                # Not the client's fault (the call service, the bus): not counted as abuse.
                answer(hub, conn, error)
                return
        if error is exc:
            raise
        raise error from exc


def _frame_error(hub: SignalingHub, conn: Connection, error: object) -> None:
    # aiohttp already closed the socket (1009 for an oversized frame).
    code = error.code if isinstance(error, WebSocketError) else CloseCode.INTERNAL_ERROR
    conn.close_code = int(code)
    hub.metrics.close(int(code))
    logger.info("%r: bad frame, closed with %s: %s", conn, code, error)


def answer(hub: SignalingHub, conn: Connection, error: SignalError) -> None:
    """The ``error`` message for ``error`` on this socket (counted per code)."""
    hub.metrics.error(error.code)
    message = error_message(
        error.code, error.message, call_id=conn.call_id, request_id=error.request_id
    )
    conn.send_text(encode(message))


def violation(hub: SignalingHub, conn: Connection, code: CloseCode, reason: str) -> None:
    logger.info("%r: closing with %d: %s", conn, code, reason)
    hub.metrics.close(code)
    conn.close(code, reason)
