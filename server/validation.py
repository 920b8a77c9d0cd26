"""Input validation helpers every edge shares (HTTP and WebSocket)."""

from __future__ import annotations

import uuid

from server.errors import BadRequest


def uuid_value(value: object, field: str) -> str:
    """``value`` as a canonical UUID string, else :class:`BadRequest` (``invalid_id``)."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a UUID string", code="invalid_id")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"{field} is not a valid UUID: {value!r}", code="invalid_id") from None
