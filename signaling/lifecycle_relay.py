"""Lifecycle events → messages: announced once, acted on by every node of the call.

:meth:`LifecycleRelay.on_call_event` runs on the node where the transition
happened and publishes one ``lifecycle`` envelope on ``call:{call_id}``:
``{event, participant_id, message}``, where ``event`` is the
:class:`~server.lifecycle.EventKind` and ``message`` the stamped client
message. Every node serving the call then sends ``message`` to its sockets
(``join`` through the roster batcher; a ``leave`` not to the one who left)
and acts on the typed event: a participant who left loses its socket and its
media, an ended call loses everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from server.events import CallEvent
from server.lifecycle import EventKind
from signaling.bus import BusUnavailable, Envelope
from signaling.connection import Connection
from signaling.errors import CloseCode
from signaling.grace import DisconnectGrace
from signaling.presence import Presence
from signaling.registry import SocketRegistry
from signaling.sfu_relay import SfuRelay

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallNotice:
    """A lifecycle event as it travels between nodes: what happened, to whom."""

    call_id: str
    kind: str
    participant_id: str | None

    @classmethod
    def from_envelope(cls, call_id: str, envelope: Envelope) -> CallNotice | None:
        kind, pid = envelope.get("event"), envelope.get("participant_id")
        if not isinstance(kind, str) or not (pid is None or isinstance(pid, str)):
            return None
        return cls(call_id, kind, pid)


class LifecycleRelay:
    def __init__(
        self,
        registry: SocketRegistry,
        presence: Presence,
        grace: DisconnectGrace,
        relay: SfuRelay,
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._grace = grace
        self._relay = relay

    async def on_call_event(self, event: CallEvent) -> None:
        """Runs on the node where the transition happened: publish it once."""
        message = _event_message(event)
        if message is None:
            return
        call_id = event.call.call_id
        envelope: Envelope = {
            "kind": "lifecycle",
            "event": event.kind,
            "participant_id": event.user_id,
            "message": self._registry.server_message(call_id, message),
        }
        try:
            await self._registry.publish(call_id, envelope)
        except BusUnavailable as exc:
            logger.warning("Call(%s) %s not announced: %s", call_id, event.kind, exc)

    async def on_lifecycle(self, call_id: str, envelope: Envelope) -> None:
        notice = CallNotice.from_envelope(call_id, envelope)
        message = envelope.get("message")
        if notice is None or not isinstance(message, dict):
            return
        batcher = self._presence.batcher
        pid = notice.participant_id
        if notice.kind == EventKind.JOINED and pid is not None:
            batcher.post(call_id, pid, message)
        else:
            # Held roster updates first, so none arrives after (and undoes) this one.
            await batcher.flush(call_id)
            exclude = pid if notice.kind == EventKind.LEFT else None
            self._registry.send_local(call_id, message, exclude=exclude)
        await self.act(notice)

    async def act(self, notice: CallNotice) -> None:
        """What this node does about a lifecycle event, besides telling its sockets."""
        call_id, pid = notice.call_id, notice.participant_id
        if notice.kind == EventKind.LEFT and pid is not None:
            self._grace.cancel(call_id, pid)
            conn: Connection | None = self._registry.local(call_id).get(pid)
            if conn is not None:
                conn.close(CloseCode.NORMAL, "left the call")
            await self._relay.participant_left(call_id, pid)
        elif notice.kind == EventKind.ENDED:
            self._grace.cancel_all(call_id)
            self._presence.batcher.drop(call_id)
            for other in list(self._registry.local(call_id).values()):
                other.close(CloseCode.NORMAL, "call ended")
            await self._relay.close_room(call_id)
            await self._registry.maybe_unsubscribe(call_id)


def _event_message(event: CallEvent) -> dict[str, Any] | None:
    """The signaling message announcing a lifecycle event (None: nothing to say)."""
    call, user_id = event.call, event.user_id
    if event.kind == EventKind.JOINED and user_id is not None:
        participant = call.participant(user_id)
        return {
            "type": "join",
            "participant_id": user_id,
            "name": participant.name if participant else None,
        }
    if event.kind == EventKind.LEFT:
        return {"type": "leave", "participant_id": user_id}
    if event.kind == EventKind.DECLINED:
        return {"type": "declined", "participant_id": user_id}
    if event.kind == EventKind.INVITED:
        return {"type": "invited", "participant_id": user_id, "invited_ids": list(event.user_ids)}
    if event.kind == EventKind.MEDIA and user_id is not None:
        participant = call.participant(user_id)
        if participant is None:
            return None
        return {
            "type": "mute",
            "participant_id": user_id,
            "muted": participant.muted,
            "video": participant.video,
        }
    if event.kind == EventKind.MODE:
        return {"type": "mode", "mode": call.mode.value}
    if event.kind == EventKind.ENDED:
        reason = call.end_reason.value if call.end_reason else None
        return {"type": "call_ended", "reason": reason, "by_worker": event.by_worker}
    return None
