"""Turns lifecycle events into notifications: logged, or written to the outbox."""

from __future__ import annotations

from collections.abc import Mapping

from server import notify
from server.events import CallEvent
from server.lifecycle import EventKind
from server.models import EndReason, OutboxMessage, utcnow


def notifications_for(event: CallEvent) -> list[notify.Notification]:
    """Ringing goes to each callee; missed to the callees who never answered; ended,
    joined and left to everyone invited."""
    call = event.call
    invited = tuple(p.user_id for p in call.participants if p.invited)
    base: dict[str, object] = {
        "caller_id": call.caller_id,
        "call_type": call.call_type.value,
        "mode": call.mode.value,
    }
    out: list[notify.Notification] = []

    def send(name: str, recipients: tuple[str, ...], data: Mapping[str, object]) -> None:
        if recipients:
            out.append(
                notify.Notification(
                    event=name,
                    call_id=call.call_id,
                    conversation_id=call.conversation_id,
                    recipient_ids=recipients,
                    occurred_at=call.updated_at or utcnow(),
                    data=data,
                )
            )

    if event.kind == EventKind.RINGING:
        send(notify.EVENT_CALL_RINGING, event.user_ids, base)
    elif event.kind == EventKind.INVITED:
        send(notify.EVENT_CALL_RINGING, event.user_ids, {**base, "invited_by": event.user_id})
    elif event.kind == EventKind.JOINED:
        send(notify.EVENT_PARTICIPANT_JOINED, invited, {**base, "user_id": event.user_id})
    elif event.kind == EventKind.LEFT:
        send(notify.EVENT_PARTICIPANT_LEFT, invited, {**base, "user_id": event.user_id})
    elif event.kind == EventKind.ENDED:
        reason = call.end_reason.value if call.end_reason else None
        if call.end_reason is EndReason.MISSED:
            unanswered = tuple(
                p.user_id
                for p in call.participants
                if p.invited and p.joined_at is None and p.declined_at is None
            )
            send(notify.EVENT_CALL_MISSED, unanswered, base)
        send(
            notify.EVENT_CALL_ENDED,
            invited,
            {**base, "end_reason": reason, "duration_seconds": call.duration_seconds},
        )
    return out


class CallNotifications:
    """A :class:`server.events.CallEventListener` handing notifications to a
    :class:`notify.Notifier` after the transition is committed (the log path:
    nothing to deliver, nothing to store)."""

    def __init__(self, notifier: notify.Notifier) -> None:
        self._notifier = notifier

    async def on_call_event(self, event: CallEvent) -> None:
        for notification in notifications_for(event):
            self._notifier.notify(notification)


class DurableNotifications:
    """A :class:`server.events.Outbox`: the call service writes the rows this
    returns in the transaction of the transition; the webhook notifier delivers
    them once committed."""

    def __init__(self, notifier: notify.WebhookNotifier) -> None:
        self._notifier = notifier

    def messages(self, event: CallEvent) -> list[OutboxMessage]:
        return [notify.outbox_message(n) for n in notifications_for(event)]

    def wake(self) -> None:
        self._notifier.wake()
