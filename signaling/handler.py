"""``GET /v1/calls/ws/signaling?call_id=…``: admission, then the connection's reader.

Everything that can be refused is refused before the upgrade, as an HTTP error
through the edge middleware: full node (503), bad ``Origin`` (403), no or bad
token (401), unknown call (404), not a joined participant (403), ended call
(410). After the upgrade, :func:`answer_error` and :func:`violation` are the
one place mapping problems to ``error`` messages and close codes.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from server.errors import BadRequest, Forbidden, Gone, HuddleError, Unavailable
from server.http.auth import identify
from server.http.validate import uuid_value
from signaling.bus import BusUnavailable
from signaling.connection import Connection, TokenBucket
from signaling.hub import SignalingHub
from signaling.keys import HUB
from signaling.protocol import (
    MAX_ID_LENGTH,
    RESERVED_IDS,
    CloseCode,
    ErrorCode,
    ProtocolViolation,
    SignalError,
    decode,
    encode,
    error_message,
    validate,
)

logger = logging.getLogger(__name__)

PATH = "/v1/calls/ws/signaling"


async def signaling_ws(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    if not hub.try_acquire():
        hub.metrics.rejected.labels("full").inc()
        raise Unavailable("this node has no room for more connections", code="node_full")
    try:
        try:
            conn = await _admit(request, hub)
        except HuddleError as exc:
            hub.metrics.rejected.labels(exc.code).inc()
            raise
        try:
            await _read(hub, conn)
        finally:
            # Shielded: aiohttp cancels the handler when the peer vanishes, and
            # the seat bookkeeping must still run.
            await asyncio.shield(hub.connection_ended(conn))
        return conn.ws
    finally:
        hub.release()


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


async def _admit(request: web.Request, hub: SignalingHub) -> Connection:
    settings = hub.settings
    check_origin(request, settings.allowed_origins)
    who = identify(request, allow_query=True)
    if "call_id" not in request.query:
        raise BadRequest("call_id is required", code="missing_field")
    call_id = uuid_value(request.query["call_id"], "call_id")
    if who.user_id in RESERVED_IDS:
        raise Forbidden(f"user id {who.user_id!r} is reserved", code="reserved_id")
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
        await hub.register(conn)
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
        except SignalError as exc:
            answer_error(hub, conn, exc.code, exc.message, exc.request_id)
            if not abuse.take():
                violation(hub, conn, CloseCode.TOO_MANY_ERRORS, "too many invalid messages")
        except ProtocolViolation as exc:
            violation(hub, conn, exc.close_code, exc.reason)
        except Exception:
            # A bug, or a dependency failing in a way nothing above expected:
            # answer it on this socket and keep the seat, never let it escape
            # (aiohttp would write a raw HTTP 500 into the upgraded stream).
            logger.exception("%r: unexpected error handling a frame", conn)
            answer_error(hub, conn, ErrorCode.INTERNAL_ERROR, "internal error handling the message")
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
    except SignalError as exc:
        exc.request_id = message.get("id")
        raise
    except HuddleError as exc:
        answer_error(hub, conn, exc.code, exc.message, message.get("id"))
    except BusUnavailable as exc:
        answer_error(hub, conn, ErrorCode.SIGNALING_DEGRADED, str(exc), message.get("id"))


def _frame_error(hub: SignalingHub, conn: Connection, error: object) -> None:
    # aiohttp already closed the socket (1009 for an oversized frame).
    code = getattr(error, "code", CloseCode.INTERNAL_ERROR)
    conn.close_code = int(code)
    hub.metrics.close(int(code))
    logger.info("%r: bad frame, closed with %s: %s", conn, code, error)


def answer_error(
    hub: SignalingHub, conn: Connection, code: str, text: str, request_id: object = None
) -> None:
    hub.metrics.error(code)
    conn.send_text(encode(error_message(code, text, call_id=conn.call_id, request_id=request_id)))


def violation(hub: SignalingHub, conn: Connection, code: CloseCode, reason: str) -> None:
    logger.info("%r: closing with %d: %s", conn, code, reason)
    hub.metrics.close(code)
    conn.close(code, reason)
