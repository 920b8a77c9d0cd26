"""The one seam between signaling and the SFU, owned by the media plane.

Light on purpose (no aiortc import): the signaling layer imports it to talk to
whatever SFU the app factory plugs in.

- Signaling → SFU: :class:`SfuEndpoint`, called only on the node that owns
  the call's room: client messages with ``target_id: "sfu"``
  (:meth:`SfuEndpoint.handle_signal`, raising :class:`MediaError` for what it
  refuses) and lifecycle events as typed :data:`RoomEvent` values
  (:meth:`SfuEndpoint.on_event`).
- SFU → signaling: :class:`SignalingPort`, delivering to one participant on
  whichever node holds its socket either a message or, typed, a
  :class:`MediaError` the SFU raises unasked (signaling's one error mapper
  turns it into the ``error`` message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from media.errors import MediaError

__all__ = [
    "PUBLISH",
    "SUBSCRIBE",
    "TRACK_SOURCES",
    "MediaError",
    "Message",
    "ParticipantLeft",
    "RoomEnded",
    "RoomEvent",
    "SfuEndpoint",
    "SignalingPort",
    "SpanEndpoint",
    "SpanPort",
]

Message = dict[str, Any]

#: The two SFU connections of a participant, as ``pc`` names them: the client
#: offers on ``publish``, the SFU on ``subscribe`` (docs/protocol.md).
PUBLISH = "publish"
SUBSCRIBE = "subscribe"

#: What a published track carries, as an ``offer``'s ``sources`` (mid → source)
#: says and the SFU's ``tracks`` entries repeat (docs/protocol.md): the
#: allocator serves screen shares before cameras.
TRACK_SOURCES = ("camera", "screen", "microphone")


@dataclass(frozen=True)
class ParticipantLeft:
    """The participant left the call (not merely dropped its socket): free its media."""

    call_id: str
    participant_id: str


@dataclass(frozen=True)
class RoomEnded:
    """The call ended, or this node lost the room: release everything of it."""

    call_id: str


RoomEvent = ParticipantLeft | RoomEnded


class SignalingPort(Protocol):
    """What the SFU may call on signaling."""

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        """Deliver a server → client message (signaling stamps ``sender_id: "sfu"``,
        ``call_id`` and ``timestamp``); lost, and logged, while the bus is down."""

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        """Tell a participant, unasked, what the SFU cannot do for it (its session was
        dropped, its subscribe answer was bad): an ``error`` message with
        ``error.code``, built and counted by signaling like every other."""


class SfuEndpoint(Protocol):
    """The SFU as signaling sees it (implemented by :class:`media.sfu.Sfu`)."""

    def has_room(self, call_id: str) -> bool:
        """Whether this node holds a room for the call."""

    def members(self) -> dict[str, frozenset[str]]:
        """The participants of each open room of this node, by call id (load, drain)."""

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        """A validated ``offer``/``answer``/``ice_candidate``/``subscribe``/``track_settings`` and
        the server-stamped ``sender_id``/``call_id``/``timestamp``. Raises
        :class:`MediaError` (its ``code`` answers the sender) for what it refuses."""

    async def on_event(self, event: RoomEvent) -> None:
        """A lifecycle event for a room of this node."""


class SpanPort(Protocol):
    """How a room that spans nodes tells the call's other nodes what it has
    (media/span.py: its relay address, subscribers and published tracks)."""

    async def announce(self, call_id: str, state: Message) -> None:
        """Send ``state`` to every other node with media participants of the call."""


class SpanEndpoint(Protocol):
    """The SFU's side of spanning: another node's state for a room of this node."""

    async def on_span(self, call_id: str, state: Message) -> None: ...
