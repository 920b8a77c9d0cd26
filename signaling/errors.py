"""The WebSocket edge's errors: one base, one mapper to an ``error`` message or a close.

Everything that goes wrong while a socket is up ends as one of two things:

- an ``error`` message (``code`` + ``message``, the offending ``id`` echoed);
  the socket stays up: :class:`SignalError`;
- a close with a code from :class:`CloseCode`: :class:`ProtocolViolation`.

:func:`edge_error` maps whatever was raised (these, the domain's
:class:`~server.errors.HuddleError`, the SFU's :class:`~media.seam.MediaError`,
:class:`~signaling.bus.BusUnavailable`, or a bug) to one of the two, and
:func:`error_message` builds the one ``error`` shape; ``docs/protocol.md``
lists every code.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from media.seam import MediaError
from server.errors import HuddleError
from server.ids import SERVER_ID
from server.models import iso, utcnow
from signaling.bus import BusUnavailable

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (docs/protocol.md, "Close codes")."""

    NORMAL = 1000  # left the call, or the call ended
    GOING_AWAY = 1001  # server shutting down: reconnect (to another node)
    MESSAGE_TOO_BIG = 1009  # a frame over the size limit
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # node draining: reconnect (to another node), seat kept
    REPLACED = 4001  # the same participant connected again (here or on another node)
    HEARTBEAT_TIMEOUT = 4008  # silent for longer than drop_after_s
    RATE_LIMITED = 4029  # message flood
    TOO_MANY_ERRORS = 4030  # repeated invalid messages
    TOO_SLOW = 4031  # fell behind: send queue full or a write timed out


class ErrorCode:
    """``code`` of ``error`` messages the signaling layer itself produces.

    Errors from the call service and the SFU keep their own codes
    (``not_joined``, ``call_ended``, ``participant_limit``…).
    """

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    INVALID_TARGET = "invalid_target"
    INVALID_SDP = "invalid_sdp"
    INVALID_CANDIDATE = "invalid_candidate"
    SFU_UNAVAILABLE = "sfu_unavailable"
    SFU_ERROR = "sfu_error"
    SFU_SESSION_LOST = "sfu_session_lost"
    WRONG_MODE = "wrong_mode"
    SIGNALING_DEGRADED = "signaling_degraded"
    INTERNAL_ERROR = "internal_error"


class EdgeError(Exception):
    """Base of what the WebSocket edge answers: an ``error`` message or a close."""


class SignalError(EdgeError):
    """Bad input: answered with an ``error`` message; the connection stays up."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The offending message's ``id``, echoed in the ``error`` reply.
        self.request_id: str | int | None = None


class ProtocolViolation(EdgeError):
    """Abuse: the connection is closed with ``close_code``."""

    def __init__(self, close_code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


def edge_error(
    exc: BaseException, *, about: str = "the message", fallback: str = ErrorCode.INTERNAL_ERROR
) -> SignalError | ProtocolViolation:
    """The one mapping of anything raised while serving a socket to what the client sees;
    ``fallback``: the code of an unexpected exception (``sfu_error`` from the SFU)."""
    if isinstance(exc, SignalError | ProtocolViolation):
        return exc
    if isinstance(exc, HuddleError):
        return SignalError(exc.code, exc.message)
    if isinstance(exc, MediaError):
        return SignalError(exc.code, str(exc) or exc.code)
    if isinstance(exc, BusUnavailable):
        return SignalError(ErrorCode.SIGNALING_DEGRADED, str(exc) or "the message bus is down")
    # A bug, or a dependency failing in a way nothing expected: logged, and
    # answered without details (the socket and the seat stay).
    logger.error("unexpected error handling %s", about, exc_info=exc)
    return SignalError(fallback, f"internal error handling {about}")


def error_message(
    code: str,
    text: str,
    *,
    call_id: str,
    request_id: object = None,
    sender_id: str = SERVER_ID,
) -> Message:
    """The ``error`` message, stamped by the server (``sender_id: "sfu"`` for one the
    SFU sends unasked)."""
    message: Message = {"type": "error", "code": code, "message": text}
    if request_id is not None:
        message["id"] = request_id
    message["sender_id"] = sender_id
    message["call_id"] = call_id
    message["timestamp"] = iso(utcnow())
    return message
