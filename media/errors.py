"""Errors the media plane raises towards its caller (the signaling edge)."""

from __future__ import annotations


class MediaError(Exception):
    """Base class; ``code`` is the snake_case code for an ``error`` message."""

    code = "media_error"


class BadSignal(MediaError):
    """A signaling message the SFU cannot act on (shape, state or SDP)."""

    code = "bad_request"


class UnknownParticipant(MediaError):
    code = "unknown_participant"


class RoomFull(MediaError):
    code = "participant_limit"


class RoomClosed(MediaError):
    code = "room_closed"


class NegotiationTimeout(MediaError):
    """A subscriber did not answer a subscribe offer in time; its session is dropped."""

    code = "negotiation_timeout"


class SessionLost(MediaError):
    """The SFU holds no session for the participant any more (the node or worker that
    served it went away, or the room was placed anew): start the session over."""

    code = "sfu_session_lost"


class SessionFailed(MediaError):
    """A participant's server-side connection failed; its session is dropped."""

    code = "sfu_session_failed"
