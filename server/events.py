"""Lifecycle events, announced after a transition is persisted.

The call service tells each :class:`CallEventListener` (the signaling hub, the
notifier, the SFU) what happened. A listener's failure is logged and never
undoes or blocks the transition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from server.models import Call, OutboxMessage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallEvent:
    #: One of :class:`server.lifecycle.EventKind`'s names.
    kind: str
    #: The call as persisted after the transition; listeners must not mutate it.
    call: Call
    #: Who acted (joined, left, invited…), if anyone.
    user_id: str | None = None
    #: Whom it concerns besides (e.g. the invited).
    user_ids: tuple[str, ...] = ()
    #: True when a background worker (timeouts, cleanup) caused it.
    by_worker: bool = False


class CallEventListener(Protocol):
    async def on_call_event(self, event: CallEvent) -> None: ...


class Outbox(Protocol):
    """Durable side effects of events, written in the transition's own transaction."""

    def messages(self, event: CallEvent) -> list[OutboxMessage]:
        """The outbox rows ``event`` causes (pure: runs inside the transaction)."""

    def wake(self) -> None:
        """Rows were committed: deliver them now."""


class EventFanout:
    """Delivers each event to every listener in registration order."""

    def __init__(self) -> None:
        self._listeners: list[CallEventListener] = []

    def add(self, listener: CallEventListener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: CallEventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def publish(self, event: CallEvent) -> None:
        for listener in list(self._listeners):
            try:
                await listener.on_call_event(event)
            except Exception:
                logger.exception(
                    "Call(%s) listener %r failed on %s", event.call.call_id, listener, event.kind
                )
