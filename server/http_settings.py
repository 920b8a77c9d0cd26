"""Settings of the HTTP edge and their validation, apart from :mod:`server.config`
(which re-exports :class:`HttpSettings`), as :mod:`server.turn_settings` is."""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.errors import ConfigError


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP edge: framing of the client page and slow-client limits."""

    # CSP frame-ancestors sources for the client page ("'self'": same-origin
    # embedding only; add the embedding app's origin to allow its iframe).
    frame_ancestors: tuple[str, ...] = ("'self'",)
    # Connections per client address that have not yet sent a full request
    # head (slowloris); more are closed at once.
    max_pending_per_ip: int = 32
    # Seconds a new connection gets to send its request line and headers.
    header_timeout_s: float = 10.0


_FRAME_SOURCE = re.compile(
    r"^(?:'self'|'none'|\*|https?:|(?:https?://)?(?:\*\.)?[A-Za-z0-9.-]+(?::(?:[0-9]{1,5}|\*))?)$"
)


def parse_frame_ancestors(value: str | None) -> tuple[str, ...]:
    """``HUDDLE_FRAME_ANCESTORS`` (raw, None when unset) as CSP sources."""
    if value is None:
        return ("'self'",)
    # Unquoted self/none are a common slip; CSP needs the quotes.
    sources = tuple(
        f"'{part}'" if part in {"self", "none"} else part
        for part in re.split(r"[\s,]+", value)
        if part
    )
    for source in sources:
        if not _FRAME_SOURCE.match(source):
            raise ConfigError(
                f"HUDDLE_FRAME_ANCESTORS: {source!r} is not a CSP source "
                "('self', 'none', https://app.example, *.example.org)"
            )
    if "'none'" in sources and len(sources) > 1:
        raise ConfigError("HUDDLE_FRAME_ANCESTORS: 'none' cannot be combined with other sources")
    return sources
