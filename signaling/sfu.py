"""The seam between signaling and the SFU (``media/``).

The hub hands every client message with ``target_id: "sfu"`` to the
:class:`SfuEndpoint` of the node that owns the call's room, and the SFU answers
through :class:`SfuSender` (the hub), which stamps ``sender_id: "sfu"`` and
delivers on whichever node holds the participant's socket.
"""

from __future__ import annotations

from typing import Any, Protocol

Message = dict[str, Any]


class SfuEndpoint(Protocol):
    """Implemented by the media room manager; called only on the room's owner node."""

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        """A validated ``offer``/``answer``/``ice_candidate`` with ``pc`` and the
        server-stamped ``sender_id``/``call_id``/``timestamp``. Raising an exception
        with a ``code`` attribute answers the sender with that ``error`` code."""

    async def participant_gone(self, call_id: str, participant_id: str) -> None:
        """The participant left the call (not merely dropped its socket): free its media."""

    async def close_room(self, call_id: str) -> None:
        """The call ended, or this node lost the room: release everything of it."""


class SfuSender(Protocol):
    """What the SFU may call on the hub (media's ``SfuSignaling`` is the same shape)."""

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None: ...

    async def send(self, call_id: str, participant_id: str, message: Message) -> None: ...
