"""Huddle's error hierarchy: each error carries its HTTP status and a stable code.

Handlers and domain code raise these; one middleware (server.http.middleware)
turns them into ``{"error": {"code", "message"}}`` responses, and the signaling
hub turns them into ``error`` messages or WebSocket close codes.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


class HuddleError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(HuddleError):
    status = 400
    code = "bad_request"


class Unauthorized(HuddleError):
    status = 401
    code = "unauthorized"


class Forbidden(HuddleError):
    status = 403
    code = "forbidden"


class NotFound(HuddleError):
    status = 404
    code = "not_found"


class Conflict(HuddleError):
    status = 409
    code = "conflict"


class Gone(HuddleError):
    status = 410
    code = "gone"


class PayloadTooLarge(HuddleError):
    status = 413
    code = "payload_too_large"


class RateLimited(HuddleError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(HuddleError):
    """A dependency (database, Redis) is down or too slow; retrying later may work."""

    status = 503
    code = "unavailable"
