"""The call service: the lifecycle API that HTTP handlers, signaling and workers call.

Each operation checks who is asking, runs the pure rule from
:mod:`server.lifecycle` inside :meth:`Store.mutate_call` (atomic, under a row
lock), and only then announces the resulting events and counts metrics.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from server import lifecycle
from server.auth import Identity
from server.config import Limits
from server.errors import Forbidden, HuddleError, NotFound, RateLimited
from server.events import CallEvent, EventFanout, Outbox
from server.lifecycle import Event, EventKind, Transition
from server.membership import Membership, OpenMembership
from server.metrics import Metrics
from server.models import (
    Call,
    CallStatus,
    CallType,
    Conversation,
    OutboxMessage,
    Participant,
    utcnow,
)
from server.ratelimit import RateLimiter
from server.store import Store

logger = logging.getLogger(__name__)

Rule = Callable[[Call], Transition]


class CallService:
    def __init__(
        self,
        store: Store,
        limits: Limits,
        metrics: Metrics,
        rate_limiter: RateLimiter,
        events: EventFanout,
        clock: Callable[[], datetime] = utcnow,
        *,
        outbox: Outbox | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.membership: Membership = membership or OpenMembership()
        self.limits = limits
        self.events = events
        self._metrics = metrics
        self._rate_limiter = rate_limiter
        self._clock = clock

    # -- conversations -------------------------------------------------------

    async def create_conversation(
        self, who: Identity, member_ids: list[str], title: str | None
    ) -> Conversation:
        members = list(dict.fromkeys([who.user_id, *member_ids]))
        await self.membership.check(who.user_id, members)
        conversation = Conversation(
            conversation_id=str(uuid.uuid4()),
            title=title,
            member_ids=members,
            created_by=who.user_id,
            created_at=self._clock(),
        )
        await self.store.create_conversation(conversation)
        return conversation

    async def get_conversation(self, who: Identity, conversation_id: str) -> Conversation:
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None:
            raise NotFound(f"no conversation {conversation_id}", code="conversation_not_found")
        if who.user_id not in conversation.member_ids:
            raise Forbidden("you are not a member of this conversation", code="not_a_member")
        return conversation

    # -- calls -----------------------------------------------------------------

    async def initiate(
        self, who: Identity, conversation_id: str, call_type: CallType, callee_ids: list[str]
    ) -> Call:
        retry_after = await self._rate_limiter.hit(
            "initiate", who.user_id, self.limits.initiate_per_minute, 60.0
        )
        if retry_after is not None:
            self._metrics.initiate_rate_limited.inc()
            raise RateLimited(
                f"at most {self.limits.initiate_per_minute} calls per minute",
                retry_after_s=max(1, round(retry_after + 0.5)),
                code="rate_limited",
            )
        conversation = await self.get_conversation(who, conversation_id)
        callees = lifecycle.validate_new_call(
            who.user_id, callee_ids, set(conversation.member_ids), self.limits
        )
        now = self._clock()
        call = Call(
            call_id=str(uuid.uuid4()),
            conversation_id=conversation_id,
            caller_id=who.user_id,
            call_type=call_type,
            status=CallStatus.RINGING,
            mode=lifecycle.mode_for(1 + len(callees)),
            created_at=now,
            updated_at=now,
            participants=[
                Participant(user_id=who.user_id, name=who.name, invited_at=now, joined_at=now),
                *(Participant(user_id=user_id, invited_at=now) for user_id in callees),
            ],
        )
        ringing = CallEvent(EventKind.RINGING, call, who.user_id, tuple(callees))
        await self.store.create_call(
            call, self.outbox.messages(ringing) if self.outbox is not None else ()
        )
        self._metrics.call_created.inc()
        logger.info("Call(%s) ringing: %s calls %d", call.call_id, who.user_id, len(callees))
        if self.outbox is not None:
            self.outbox.wake()
        await self.events.publish(ringing)
        return call

    async def get_call(self, who: Identity, call_id: str) -> Call:
        """A call's status: for the people invited to it only (docs/api.md,
        "Authorization rules"); other conversation members get 403."""
        call = await self.store.get_call(call_id)
        if call is None:
            raise NotFound(f"no call {call_id}", code="call_not_found")
        me = call.participant(who.user_id)
        if me is None or not me.invited:
            raise Forbidden("you are not invited to this call", code="not_invited")
        return call

    async def history(
        self, who: Identity, conversation_id: str, *, limit: int, before: datetime | None
    ) -> list[Call]:
        """A member's view of a conversation's calls: those they were invited to."""
        await self.get_conversation(who, conversation_id)
        return await self.store.list_calls(
            conversation_id, limit=limit, before=before, invited=who.user_id
        )

    async def ringing_for(self, who: Identity, *, limit: int) -> list[Call]:
        """Live calls ringing for ``who``: invited, neither joined nor declined yet."""
        return await self.store.ringing_for(who.user_id, limit=limit)

    async def join(self, who: Identity, call_id: str) -> Call:
        try:
            call = await self._apply(
                call_id,
                lambda c: lifecycle.join(c, who.user_id, who.name, self._clock(), self.limits),
            )
        except HuddleError as exc:
            self._metrics.refused_join(exc.code)
            raise
        self._metrics.call_joined.inc()
        return call

    async def invite(self, who: Identity, call_id: str, user_ids: list[str]) -> Call:
        call = await self.store.get_call(call_id)
        if call is None:
            raise NotFound(f"no call {call_id}", code="call_not_found")
        conversation = await self.store.get_conversation(call.conversation_id)
        members = set(conversation.member_ids) if conversation else set()
        return await self._apply(
            call_id,
            lambda c: lifecycle.invite(
                c, who.user_id, user_ids, members, self._clock(), self.limits
            ),
        )

    async def decline(self, who: Identity, call_id: str) -> Call:
        call = await self._apply(
            call_id, lambda c: lifecycle.decline(c, who.user_id, self._clock())
        )
        self._metrics.call_declined.inc()
        return call

    async def leave(self, who: Identity, call_id: str) -> Call:
        call = await self._apply(call_id, lambda c: lifecycle.leave(c, who.user_id, self._clock()))
        self._metrics.call_left.inc()
        return call

    async def end(self, who: Identity, call_id: str) -> Call:
        return await self._apply(call_id, lambda c: lifecycle.end(c, who.user_id, self._clock()))

    async def set_media(
        self, user_id: str, call_id: str, *, muted: bool | None, video: bool | None
    ) -> Call:
        return await self._apply(
            call_id, lambda c: lifecycle.set_media(c, user_id, muted, video, self._clock())
        )

    # -- workers -----------------------------------------------------------------

    async def expire_due(self, *, batch: int = 100) -> int:
        """End every call past a ringing, duration or staleness limit; returns how many."""
        now = self._clock()
        limits = self.limits
        due = await self.store.due_call_ids(
            ringing_before=now - timedelta(seconds=limits.ringing_timeout_s),
            started_before=now - timedelta(seconds=limits.max_duration_s),
            idle_before=now - timedelta(seconds=limits.stale_after_s),
            limit=batch,
        )
        ended = 0
        for call_id in due:
            try:
                call = await self._apply(
                    call_id, lambda c: lifecycle.expire(c, self._clock(), limits), by_worker=True
                )
            except NotFound:
                continue
            if call.is_ended and call.ended_at is not None and call.ended_at >= now:
                ended += 1
        return ended

    async def refresh_gauges(self) -> None:
        self._metrics.active_calls.set(await self.store.count_live_calls())

    # -- internals ---------------------------------------------------------------

    async def _apply(self, call_id: str, rule: Rule, *, by_worker: bool = False) -> Call:
        outbox = self.outbox

        def messages(call: Call, transition: Transition) -> list[OutboxMessage]:
            # Runs inside the transaction: the rows commit with the transition.
            assert outbox is not None
            return [
                message
                for event in transition.events
                for message in outbox.messages(_call_event(event, call, by_worker))
            ]

        call, transition = await self.store.mutate_call(
            call_id, rule, messages if outbox is not None else None
        )
        if outbox is not None and transition.events:
            outbox.wake()
        for event in transition.events:
            if event.kind == EventKind.ENDED and call.end_reason is not None:
                self._metrics.call_finished(
                    call.end_reason.value, call.duration_seconds, by_worker=by_worker
                )
                logger.info("Call(%s) ended: %s", call.call_id, call.end_reason.value)
            await self.events.publish(_call_event(event, call, by_worker))
        return call


def _call_event(event: Event, call: Call, by_worker: bool) -> CallEvent:
    return CallEvent(event.kind, call, event.user_id, event.user_ids, by_worker)
