"""Signaling protocol v1: message types, error and close codes, validation, stamping.

Everything a client may send is checked here, in one pass, before the hub
routes it; the result holds only the fields the protocol defines, so nothing a
client invents travels further. ``docs/protocol.md`` is the reference; the
constants below are the names it uses.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from media.seam import PUBLISH, SUBSCRIBE, TRACK_SOURCES
from server.auth import USER_ID_PATTERN
from server.ids import SERVER_ID, SFU_ID
from server.models import iso, utcnow
from signaling.errors import (
    CloseCode,
    ErrorCode,
    ProtocolViolation,
    SignalError,
    error_message,
)

__all__ = [
    "SERVER_ID",
    "SFU_ID",
    "CloseCode",
    "ErrorCode",
    "ProtocolViolation",
    "SignalError",
    "error_message",
]

PROTOCOL_VERSION = 1

Message = dict[str, Any]


#: What a client may send.
CLIENT_TYPES = frozenset(
    {
        "join",
        "leave",
        "offer",
        "answer",
        "ice_candidate",
        "subscribe",
        "resume",
        "ice_restart",
        "track_settings",
        "mute",
        "ping",
        "pong",
    }
)
#: Relayed to one participant (``target_id``) or to the SFU (``target_id: "sfu"``).
TARGETED_TYPES = frozenset({"offer", "answer", "ice_candidate"})

MAX_ID_LENGTH = 64
#: Most entries of one ``track_settings`` (a subscribe connection's transceivers).
MAX_TRACK_SETTINGS = 64
#: Largest rendered width or height a client may report (pixels).
MAX_RENDER_SIZE = 16384
#: ``sources`` entries per description (one per m-line; a call needs a handful).
MAX_SOURCES = 32
#: An SDP mid (RFC 5888 identification-tag: a token), as browsers and aiortc write them.
_MID = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,64}$")


# -- validation ------------------------------------------------------------------------


def decode(text: str) -> dict[str, Any]:
    """One client text frame as a JSON object (not yet validated)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise SignalError(ErrorCode.INVALID_JSON, "the frame is not valid JSON") from None
    except RecursionError:
        # Deeply nested arrays/objects: the decoder gives up before any limit of ours.
        raise SignalError(ErrorCode.INVALID_JSON, "the frame is nested too deeply") from None
    if not isinstance(raw, dict):
        raise SignalError(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    return raw


def validate(raw: dict[str, Any]) -> Message:
    """Check a decoded client message; returns only the fields the protocol defines."""
    kind = raw.get("type")
    if kind is None:
        raise SignalError(ErrorCode.MISSING_FIELD, "type is required")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        shown = kind if isinstance(kind, str) and len(kind) <= 32 else "?"
        raise SignalError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown!r}")
    message: Message = {"type": kind}
    request_id = raw.get("id")
    if request_id is not None:
        if not isinstance(request_id, str | int) or len(str(request_id)) > MAX_ID_LENGTH:
            raise SignalError(ErrorCode.INVALID_FIELD, "id must be a short string or integer")
        message["id"] = request_id
    if kind in TARGETED_TYPES:
        target = _target(raw)
        message["target_id"] = target
        pc = raw.get("pc")
        if target == SFU_ID:
            if pc not in (PUBLISH, SUBSCRIBE):
                raise SignalError(
                    ErrorCode.INVALID_FIELD if "pc" in raw else ErrorCode.MISSING_FIELD,
                    "messages for the SFU need pc: 'publish' or 'subscribe'",
                )
            message["pc"] = pc
        if kind == "ice_candidate":
            message["candidate"] = validate_candidate(raw)
        else:
            message["sdp"] = validate_sdp(raw)
            if "sources" in raw:
                message["sources"] = validate_sources(raw["sources"])
            if "ice_restart" in raw:
                if kind != "offer" or target != SFU_ID or pc != PUBLISH:
                    raise SignalError(
                        ErrorCode.INVALID_FIELD, "ice_restart goes on a publish offer to the SFU"
                    )
                if not isinstance(raw["ice_restart"], bool):
                    raise SignalError(ErrorCode.INVALID_FIELD, "ice_restart must be true or false")
                message["ice_restart"] = raw["ice_restart"]
    elif kind in ("subscribe", "resume", "ice_restart"):
        # subscribe: a receive-only participant enters the SFU room without a
        # publish offer. resume: after a reconnect, is my SFU session still there?
        # ice_restart: restart ICE on my subscribe connection (a new offer).
        if _target(raw) != SFU_ID:
            raise SignalError(ErrorCode.INVALID_TARGET, f"{kind} goes to target_id 'sfu'")
        message["target_id"] = SFU_ID
    elif kind == "track_settings":
        if _target(raw) != SFU_ID:
            raise SignalError(ErrorCode.INVALID_TARGET, "track_settings goes to target_id 'sfu'")
        message["target_id"] = SFU_ID
        message["tracks"] = validate_track_settings(raw)
    elif kind == "mute":
        for name in ("muted", "video"):
            if name in raw:
                if not isinstance(raw[name], bool):
                    raise SignalError(ErrorCode.INVALID_FIELD, f"{name} must be true or false")
                message[name] = raw[name]
        if "muted" not in message and "video" not in message:
            raise SignalError(ErrorCode.MISSING_FIELD, "mute needs muted and/or video")
    return message


def validate_track_settings(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """``tracks`` of a ``track_settings``: per received mid, the size it is shown at
    and whether it is visible."""
    if "tracks" not in raw:
        raise SignalError(ErrorCode.MISSING_FIELD, "track_settings needs tracks")
    tracks = raw["tracks"]
    if not isinstance(tracks, list) or len(tracks) > MAX_TRACK_SETTINGS:
        raise SignalError(
            ErrorCode.INVALID_FIELD, f"tracks must be a list of at most {MAX_TRACK_SETTINGS}"
        )
    out = []
    for entry in tracks:
        if not isinstance(entry, dict):
            raise SignalError(ErrorCode.INVALID_FIELD, "each track setting must be an object")
        mid = entry.get("mid")
        if not isinstance(mid, str) or not _MID.match(mid):
            raise SignalError(ErrorCode.INVALID_FIELD, "each track setting needs a mid")
        setting: dict[str, Any] = {"mid": mid}
        for name in ("width", "height"):
            value = entry.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise SignalError(ErrorCode.INVALID_FIELD, f"{name} must be an integer")
            if not 0 <= value <= MAX_RENDER_SIZE:
                raise SignalError(
                    ErrorCode.INVALID_FIELD, f"{name} must be within 0..{MAX_RENDER_SIZE}"
                )
            setting[name] = value
        visible = entry.get("visible", True)
        if not isinstance(visible, bool):
            raise SignalError(ErrorCode.INVALID_FIELD, "visible must be true or false")
        setting["visible"] = visible
        out.append(setting)
    return out


def _target(raw: dict[str, Any]) -> str:
    if "target_id" not in raw:
        raise SignalError(ErrorCode.MISSING_FIELD, "target_id is required")
    target = raw["target_id"]
    if not isinstance(target, str) or not (target == SFU_ID or USER_ID_PATTERN.match(target)):
        raise SignalError(ErrorCode.INVALID_TARGET, "target_id must be a participant id or 'sfu'")
    if target == SERVER_ID:
        raise SignalError(ErrorCode.INVALID_TARGET, "the server is not a target")
    return target


def validate_sources(value: Any) -> dict[str, str]:
    """An offer's or answer's ``sources``: its own m-lines' mid → what each sends."""
    if not isinstance(value, dict):
        raise SignalError(ErrorCode.INVALID_FIELD, "sources must be an object of mid: source")
    if len(value) > MAX_SOURCES:
        raise SignalError(ErrorCode.INVALID_FIELD, f"sources has more than {MAX_SOURCES} entries")
    for mid, source in value.items():
        if not _MID.match(mid):
            raise SignalError(ErrorCode.INVALID_FIELD, "sources keys must be SDP mids")
        if source not in TRACK_SOURCES:
            raise SignalError(
                ErrorCode.INVALID_FIELD,
                f"sources values must be one of {', '.join(TRACK_SOURCES)}",
            )
    return dict(value)


_SDP_LINE = re.compile(r"^[a-z]=[^\r\n]*$")


def validate_sdp(raw: dict[str, Any]) -> str:
    """A session description: starts ``v=0``, has ``o=`` and ``s=``, only ``x=`` lines."""
    if "sdp" not in raw:
        raise SignalError(ErrorCode.MISSING_FIELD, f"{raw['type']} needs sdp")
    sdp = raw["sdp"]
    if not isinstance(sdp, str):
        raise SignalError(ErrorCode.INVALID_SDP, "sdp must be a string")
    lines = [line for line in re.split(r"\r?\n", sdp) if line]
    if not lines or lines[0] != "v=0":
        raise SignalError(ErrorCode.INVALID_SDP, "sdp must start with v=0")
    if not any(line.startswith("o=") for line in lines[:3]) or not any(
        line.startswith("s=") for line in lines[:4]
    ):
        raise SignalError(ErrorCode.INVALID_SDP, "sdp needs o= and s= lines after v=0")
    for number, line in enumerate(lines, 1):
        if not _SDP_LINE.match(line):
            raise SignalError(ErrorCode.INVALID_SDP, f"sdp line {number} is not <type>=<value>")
    return sdp


# RFC 8839 section 5.1: foundation component transport priority address port typ type ...
_ICE_CHAR = r"[A-Za-z0-9+/]"
_CANDIDATE = re.compile(
    rf"^(?:candidate:)?(?P<foundation>{_ICE_CHAR}{{1,32}}) (?P<component>\d{{1,3}}) "
    r"(?P<transport>[A-Za-z][A-Za-z0-9-]{0,15}) (?P<priority>\d{1,10}) "
    r"(?P<address>\S{1,253}) (?P<port>\d{1,5}) typ (?P<type>[A-Za-z0-9-]{1,16})"
    r"(?P<rest>(?: \S{1,256})*)$"
)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9.])*$")
_CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})


def validate_candidate(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The browser's ``RTCIceCandidateInit``; ``None`` (or ``candidate: ""``) ends candidates."""
    if "candidate" not in raw:
        raise SignalError(ErrorCode.MISSING_FIELD, "ice_candidate needs candidate")
    value = raw["candidate"]
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SignalError(ErrorCode.INVALID_CANDIDATE, "candidate must be an object or null")
    for name in ("candidate", "sdpMid", "sdpMLineIndex"):
        if name not in value:
            raise SignalError(ErrorCode.INVALID_CANDIDATE, f"candidate.{name} is required")
    line, mid, index = value["candidate"], value["sdpMid"], value["sdpMLineIndex"]
    if not isinstance(line, str):
        raise SignalError(ErrorCode.INVALID_CANDIDATE, "candidate.candidate must be a string")
    if mid is not None and (not isinstance(mid, str) or len(mid) > MAX_ID_LENGTH):
        raise SignalError(ErrorCode.INVALID_CANDIDATE, "candidate.sdpMid must be a string")
    if index is not None and (
        isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024
    ):
        raise SignalError(
            ErrorCode.INVALID_CANDIDATE, "candidate.sdpMLineIndex must be a small integer"
        )
    if mid is None and index is None:
        raise SignalError(
            ErrorCode.INVALID_CANDIDATE, "candidate needs sdpMid or sdpMLineIndex (not both null)"
        )
    if line:
        check_candidate_line(line)
    result: dict[str, Any] = {"candidate": line, "sdpMid": mid, "sdpMLineIndex": index}
    fragment = value.get("usernameFragment")
    if isinstance(fragment, str) and len(fragment) <= 256:
        result["usernameFragment"] = fragment
    return result


def check_candidate_line(line: str) -> None:
    match = _CANDIDATE.match(line)
    if match is None:
        raise SignalError(ErrorCode.INVALID_CANDIDATE, "malformed candidate line")
    component, port = int(match["component"]), int(match["port"])
    if not 1 <= component <= 256 or port > 65535 or int(match["priority"]) > 2**32 - 1:
        raise SignalError(ErrorCode.INVALID_CANDIDATE, "candidate number out of range")
    if match["type"] not in _CANDIDATE_TYPES:
        raise SignalError(ErrorCode.INVALID_CANDIDATE, f"unknown candidate type {match['type']}")
    address = match["address"]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not _HOSTNAME.match(address):
            raise SignalError(ErrorCode.INVALID_CANDIDATE, "bad candidate address") from None
    if len(match["rest"].split()) % 2:
        raise SignalError(ErrorCode.INVALID_CANDIDATE, "candidate extensions come in pairs")


# -- server-side messages --------------------------------------------------------------


def stamp(message: Message, *, sender_id: str, call_id: str) -> Message:
    """Set the fields only the server may set, overwriting anything a client put there."""
    message["sender_id"] = sender_id
    message["call_id"] = call_id
    message["timestamp"] = iso(utcnow())
    return message


def reconnect_message(call_id: str, *, republish: bool) -> Message:
    """``reconnect``: this node is draining; open the socket again (on another node)
    and, with ``republish``, start the SFU session over (its room moves)."""
    message: Message = {"type": "reconnect", "reason": "draining", "republish": republish}
    return stamp(message, sender_id=SERVER_ID, call_id=call_id)


def encode(message: Message) -> str:
    return json.dumps(message, separators=(",", ":"))
