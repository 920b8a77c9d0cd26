"""The SFU's seam to the signaling layer, and the message shapes it uses.

Outbound messages (server → client) go through :class:`RoomSignaling` (a
room's view of :class:`media.seam.SignalingPort`); the signaling layer stamps
``call_id`` and ``timestamp``. Inbound messages reach ``Room.handle_signal`` /
``Sfu.handle_signal`` shaped as in DESIGN.md ("SFU").
"""

from __future__ import annotations

from typing import Any, Protocol

from aiortc import RTCIceCandidate, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from server.ids import SFU_ID as SFU_ID

from .aiortc_compat import parse_sdp
from .errors import BadSignal, MediaError
from .seam import PUBLISH as PUBLISH
from .seam import SUBSCRIBE as SUBSCRIBE
from .seam import TRACK_SOURCES

Message = dict[str, Any]


class RoomSignaling(Protocol):
    """Delivers a server → client message, or an error, to one participant of a room."""

    async def send(self, participant_id: str, message: Message) -> None: ...

    async def send_error(self, participant_id: str, error: MediaError) -> None: ...


def description_message(kind: str, pc: str, sdp: str) -> Message:
    return {"type": kind, "sender_id": SFU_ID, "pc": pc, "sdp": sdp}


def parse_pc(message: Message) -> str:
    pc = message.get("pc")
    if pc not in (PUBLISH, SUBSCRIBE):
        raise BadSignal("'pc' must be 'publish' or 'subscribe'")
    return str(pc)


def parse_description(message: Message, expected_type: str) -> RTCSessionDescription:
    sdp = message.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadSignal(f"{expected_type} needs an 'sdp' string")
    # aiortc's parser raises IndexError, KeyError, AssertionError, ... on
    # malformed input; parsed here first, each is a BadSignal.
    try:
        parse_sdp(sdp)  # once: applying it reuses this parse
    except Exception as exc:
        raise BadSignal(f"malformed SDP: {type(exc).__name__}: {exc}") from exc
    return RTCSessionDescription(sdp=sdp, type=expected_type)


def parse_sources(message: Message) -> dict[str, str]:
    """A publish offer's ``sources`` (mid → ``camera``/``screen``/``microphone``), or ``{}``.

    Signaling validated it already (``invalid_field``); checked again here
    because rooms are driven directly too (tests, the load tester).
    """
    raw = message.get("sources")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(mid, str) and source in TRACK_SOURCES for mid, source in raw.items()
    ):
        raise BadSignal(f"'sources' must map mids to one of {', '.join(TRACK_SOURCES)}")
    return {str(mid): str(source) for mid, source in raw.items()}


def default_source(kind: str) -> str:
    """The source of a track whose publisher did not say: its kind's usual one."""
    return "microphone" if kind == "audio" else "camera"


def parse_candidate(message: Message) -> RTCIceCandidate | None:
    """A browser-shaped candidate object; ``None`` for end-of-candidates."""
    raw = message.get("candidate")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadSignal("'candidate' must be an object")
    text = raw.get("candidate")
    if text in (None, ""):
        return None
    if not isinstance(text, str):
        raise BadSignal("'candidate.candidate' must be a string")
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    try:
        candidate = candidate_from_sdp(text)
    except Exception as exc:  # ValueError, IndexError, AssertionError (short lines), ...
        raise BadSignal(f"malformed ICE candidate: {type(exc).__name__}: {exc}") from exc
    mid = raw.get("sdpMid")
    index = raw.get("sdpMLineIndex")
    candidate.sdpMid = mid if isinstance(mid, str) else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else None
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    return candidate


def announce_ip(sdp: str, announced_ip: str | None) -> str:
    """Write ``announced_ip`` into host candidates (server behind a 1:1 NAT)."""
    if not announced_ip:
        return sdp
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line.split(" ")
            if len(parts) > 4:
                parts[4] = announced_ip
                line = " ".join(parts)
        elif line.startswith("c=IN IP4 ") and ":" not in announced_ip:
            line = f"c=IN IP4 {announced_ip}"
        lines.append(line)
    return "\r\n".join(lines)


def ice_ufrag(sdp: str) -> str | None:
    """The first ``a=ice-ufrag`` of an SDP (one per bundle: the session's ICE username)."""
    return _first_attribute(sdp, "a=ice-ufrag:")


def ice_credentials(sdp: str) -> tuple[str, str] | None:
    """(ufrag, pwd) of an SDP's first ``a=ice-ufrag``/``a=ice-pwd`` (the bundle's)."""
    ufrag, pwd = _first_attribute(sdp, "a=ice-ufrag:"), _first_attribute(sdp, "a=ice-pwd:")
    return (ufrag, pwd) if ufrag and pwd else None


def _first_attribute(sdp: str, prefix: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None
