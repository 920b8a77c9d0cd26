"""Turns lifecycle events into notifications for the configured notifier."""

from __future__ import annotations

from collections.abc import Mapping

from server import notify
from server.events import CallEvent
from server.lifecycle import EventKind
from server.models import EndReason, utcnow


class CallNotifications:
    """A :class:`server.events.CallEventListener` feeding a :class:`notify.Notifier`.

    Ringing goes to each callee; missed to the callees who never answered; ended,
    joined and left to everyone invited. ``notify()`` only enqueues, so this never
    slows a transition down.
    """

    def __init__(self, notifier: notify.Notifier) -> None:
        self._notifier = notifier

    async def on_call_event(self, event: CallEvent) -> None:
        call = event.call
        invited = tuple(p.user_id for p in call.participants if p.invited)
        base: dict[str, object] = {
            "caller_id": call.caller_id,
            "call_type": call.call_type.value,
            "mode": call.mode.value,
        }
        if event.kind == EventKind.RINGING:
            self._send(notify.EVENT_CALL_RINGING, event, event.user_ids, base)
        elif event.kind == EventKind.INVITED:
            self._send(
                notify.EVENT_CALL_RINGING,
                event,
                event.user_ids,
                {**base, "invited_by": event.user_id},
            )
        elif event.kind == EventKind.JOINED:
            self._send(
                notify.EVENT_PARTICIPANT_JOINED, event, invited, {**base, "user_id": event.user_id}
            )
        elif event.kind == EventKind.LEFT:
            self._send(
                notify.EVENT_PARTICIPANT_LEFT, event, invited, {**base, "user_id": event.user_id}
            )
        elif event.kind == EventKind.ENDED:
            reason = call.end_reason.value if call.end_reason else None
            if call.end_reason is EndReason.MISSED:
                unanswered = tuple(
                    p.user_id
                    for p in call.participants
                    if p.invited and p.joined_at is None and p.declined_at is None
                )
                self._send(notify.EVENT_CALL_MISSED, event, unanswered, base)
            self._send(
                notify.EVENT_CALL_ENDED,
                event,
                invited,
                {**base, "end_reason": reason, "duration_seconds": call.duration_seconds},
            )

    def _send(
        self, name: str, event: CallEvent, recipients: tuple[str, ...], data: Mapping[str, object]
    ) -> None:
        if not recipients:
            return
        self._notifier.notify(
            notify.Notification(
                event=name,
                call_id=event.call.call_id,
                conversation_id=event.call.conversation_id,
                recipient_ids=recipients,
                occurred_at=event.call.updated_at or utcnow(),
                data=data,
            )
        )
