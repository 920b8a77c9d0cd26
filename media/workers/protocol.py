"""The front ↔ media worker channel: length-prefixed JSON frames (docs/workers.md).

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON
holding one object with a string ``kind``. Front → worker:

- ``signal {id, call_id, participant_id, message}``: a client message for the SFU;
- ``left {id, call_id, participant_id}`` / ``ended {id, call_id}``: the
  :data:`~media.seam.RoomEvent` values;
- ``span {id, call_id, state}``: another node's span state for a room of the
  worker (rooms across nodes, :mod:`media.span`);
- ``close {}``: close every room and exit.

Worker → front:

- ``done {id, error?: {code, message}}``: the request ``id`` finished (``error``:
  the :class:`~media.errors.MediaError` it raised);
- ``send_to {call_id, participant_id, message}`` and
  ``send_error {call_id, participant_id, code, message}``: the
  :class:`~media.seam.SignalingPort` calls;
- ``announce {call_id, state}``: a room's span state, for the call's other nodes
  (the :class:`~media.seam.SpanPort` call);
- ``rooms {rooms: {call_id: [participant ids]}}``: who is in which open room,
  sent when a request changed it;
- ``load {rooms, packets, cpu_s, metrics}`` every
  :data:`LOAD_INTERVAL_S`: open rooms, RTP packets forwarded and CPU seconds
  since the worker started, its Prometheus samples (text format).

:class:`FrameParser` takes any bytes without raising: a frame that is not a JSON
object with a string ``kind`` is skipped (counted); a length over
:data:`MAX_FRAME_BYTES` breaks the stream (``broken``), and the owner closes it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from media.config import MediaConfig
from media.errors import MediaError
from media.relay import RelayConfig

Frame = dict[str, Any]

#: Longest frame either side sends or takes (a frame carries one SDP or one metrics page).
MAX_FRAME_BYTES = 8 * 1024 * 1024
#: How often a worker reports its ``load``.
LOAD_INTERVAL_S = 1.0

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class WorkerSpec:
    """What the front hands a worker at start (pickled on its stdin): its index and
    the front's resolved media settings, so every worker uses the same ICE hosts,
    public IP and TURN servers."""

    index: int
    media: MediaConfig
    log_level: int
    #: Rooms across nodes: this worker's relay socket (None: rooms stay on one node)
    #: and the node's id, which its span states carry.
    relay: RelayConfig | None = None
    node_id: str = ""


class WorkerError(MediaError):
    """A :class:`MediaError` a worker raised, carried across by its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode(frame: Frame) -> bytes:
    """One frame on the wire. Raises ``ValueError`` if it is over :data:`MAX_FRAME_BYTES`."""
    body = json.dumps(frame, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"a {frame.get('kind')} frame of {len(body)} bytes is too long")
    return _LENGTH.pack(len(body)) + body


class FrameParser:
    """Incremental decoder of a byte stream into frames; never raises."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame
        self._buffer = bytearray()
        #: Why the stream cannot be read on (then every byte is ignored), or None.
        self.broken: str | None = None
        #: Frames skipped: not JSON, not an object, or without a string ``kind``.
        self.skipped = 0

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``, in order."""
        if self.broken is not None:
            return []
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self._max:
                self.broken = f"a frame of {length} bytes (limit {self._max})"
                self._buffer.clear()
                break
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            frame = _decode(body)
            if frame is None:
                self.skipped += 1
            else:
                frames.append(frame)
        return frames


def _decode(body: bytes) -> Frame | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        return None
    return value


def error_frame(error: MediaError) -> dict[str, str]:
    """The ``error`` member of a ``done`` frame, or a ``send_error``'s code and message."""
    return {"code": error.code, "message": str(error) or error.code}


def error_from(value: object) -> WorkerError | None:
    """The error a ``done`` frame's ``error`` member names, if it is well formed."""
    if not isinstance(value, dict):
        return None
    code, message = value.get("code"), value.get("message")
    if not isinstance(code, str) or not code:
        return None
    return WorkerError(code, message if isinstance(message, str) else code)
