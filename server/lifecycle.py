"""The call lifecycle rules as pure functions over a :class:`Call`.

Each function checks one transition's rules against the call as loaded (under
the store's row lock), mutates it, and returns the events the transition
produced. Nothing here does I/O, so the same rules hold for every backend and
are unit-testable without one; atomicity is the store's job
(:meth:`server.store.base.Store.mutate_call`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from server.config import Limits
from server.errors import BadRequest, Conflict, Forbidden, Gone
from server.models import Call, CallMode, CallStatus, EndReason, Participant


class EventKind:
    """Names of lifecycle events; the signaling hub and notifier key on these."""

    RINGING = "call.ringing"
    JOINED = "participant.joined"
    LEFT = "participant.left"
    DECLINED = "participant.declined"
    INVITED = "participant.invited"
    MEDIA = "participant.media"
    MODE = "call.mode"
    ENDED = "call.ended"


@dataclass(frozen=True)
class Event:
    kind: str
    user_id: str | None = None
    user_ids: tuple[str, ...] = ()


@dataclass
class Transition:
    """What a rule did: events to announce once the change is persisted."""

    events: list[Event] = field(default_factory=list)
    rejoined: bool = False


def mode_for(invited_count: int) -> CallMode:
    return CallMode.P2P if invited_count <= 2 else CallMode.SFU


def sfu_may_serve(call: Call | None) -> bool:
    """Whether the SFU may take a call's media: not a call in P2P mode, whose media
    flows between the two browsers (an unknown call is left to the SFU to refuse)."""
    return call is None or call.mode is not CallMode.P2P


def _invited(call: Call) -> list[Participant]:
    return [p for p in call.participants if p.invited]


def _end(call: Call, reason: EndReason, now: datetime, out: Transition) -> None:
    for participant in call.participants:
        if participant.is_joined:
            participant.left_at = now
    call.status = CallStatus.ENDED
    call.end_reason = reason
    call.ended_at = now
    call.updated_at = now
    out.events.append(Event(EventKind.ENDED))


def _require_live(call: Call) -> None:
    if call.is_ended:
        reason = call.end_reason.value if call.end_reason else "ended"
        raise Gone(f"call {call.call_id} has ended ({reason})", code="call_ended")


def join(call: Call, user_id: str, name: str | None, now: datetime, limits: Limits) -> Transition:
    """Join (or rejoin after leaving) an invited participant."""
    out = Transition()
    participant = call.participant(user_id)
    if participant is None or not participant.invited:
        raise Forbidden("you are not invited to this call", code="not_invited")
    _require_live(call)
    if call.status is CallStatus.RINGING and now - call.created_at > timedelta(
        seconds=limits.ringing_timeout_s
    ):
        raise Gone("the call stopped ringing before it was answered", code="ringing_expired")
    if participant.is_joined:
        raise Conflict("you have already joined this call", code="already_joined")
    if len(call.joined) >= limits.max_participants:
        raise Conflict(
            f"the call is full ({limits.max_participants} participants)",
            code="participant_limit_reached",
        )
    out.rejoined = participant.joined_at is not None
    participant.joined_at = now
    participant.left_at = None
    participant.declined_at = None
    if name:
        participant.name = name
    call.updated_at = now
    out.events.append(Event(EventKind.JOINED, user_id))
    if call.status is CallStatus.RINGING and user_id != call.caller_id:
        call.status = CallStatus.ACTIVE
        call.started_at = now
    if call.mode is CallMode.P2P and mode_for(len(_invited(call))) is CallMode.SFU:
        # A third participant actually joining is what moves media to the SFU;
        # an invitation alone (that may be declined) does not.
        call.mode = CallMode.SFU
        out.events.append(Event(EventKind.MODE))
    return out


def invite(
    call: Call,
    inviter_id: str,
    user_ids: list[str],
    members: set[str],
    now: datetime,
    limits: Limits,
) -> Transition:
    """A joined participant invites more conversation members."""
    out = Transition()
    inviter = call.participant(inviter_id)
    if inviter is None or not inviter.invited:
        # Before any state check: someone outside the call learns nothing of it.
        raise Forbidden("you are not a participant of this call", code="not_invited")
    _require_live(call)
    if not inviter.is_joined:
        raise Forbidden("only a joined participant may invite", code="not_joined")
    outsiders = sorted(set(user_ids) - members)
    if outsiders:
        raise Forbidden(
            f"not members of the conversation: {', '.join(outsiders)}", code="not_a_member"
        )
    added: list[str] = []
    for user_id in dict.fromkeys(user_ids):
        existing = call.participant(user_id)
        if existing is not None and existing.invited:
            if existing.declined_at is not None:
                existing.declined_at = None  # invited again after declining
                added.append(user_id)
            continue
        call.participants.append(Participant(user_id=user_id, invited_at=now))
        added.append(user_id)
    if len(_invited(call)) > limits.max_callees + 1:
        raise Conflict(
            f"a call may invite at most {limits.max_callees} callees", code="too_many_invitees"
        )
    if added:
        call.updated_at = now
        out.events.append(Event(EventKind.INVITED, inviter_id, tuple(added)))
    return out


def decline(call: Call, user_id: str, now: datetime) -> Transition:
    """An invitee declines; when every callee has declined, the call ends."""
    out = Transition()
    participant = call.participant(user_id)
    if participant is None or not participant.invited or user_id == call.caller_id:
        raise Forbidden("only an invited callee may decline", code="not_invited")
    _require_live(call)
    if participant.joined_at is not None:  # joined, or joined and left since
        raise Conflict("you have joined this call; leave it instead", code="already_joined")
    if participant.declined_at is not None:
        raise Conflict("you have already declined this call", code="already_declined")
    participant.declined_at = now
    call.updated_at = now
    out.events.append(Event(EventKind.DECLINED, user_id))
    callees = [p for p in _invited(call) if p.user_id != call.caller_id]
    if call.status is CallStatus.RINGING and all(p.declined_at is not None for p in callees):
        _end(call, EndReason.DECLINED, now, out)
    return out


def leave(call: Call, user_id: str, now: datetime) -> Transition:
    """Leave; the last joined participant out ends the call as completed."""
    out = Transition()
    participant = call.participant(user_id)
    if participant is None:
        raise Forbidden("you are not a participant of this call", code="not_invited")
    _require_live(call)
    if not participant.is_joined:
        raise Conflict("you are not in this call", code="not_joined")
    participant.left_at = now
    call.updated_at = now
    out.events.append(Event(EventKind.LEFT, user_id))
    if not call.joined:
        reason = EndReason.COMPLETED if call.started_at is not None else EndReason.MISSED
        if call.status is CallStatus.RINGING and user_id == call.caller_id:
            # The caller hung up before anyone answered: the callees missed it.
            reason = EndReason.MISSED
        _end(call, reason, now, out)
    return out


def end(call: Call, user_id: str, now: datetime) -> Transition:
    """End the call for everyone: any participant joined right now.

    The caller is joined from initiation, so it can cancel a ringing call; once it
    has left it is an ordinary former participant and may not end the call for
    those still in it (docs/api.md, "Authorization rules").
    """
    out = Transition()
    participant = call.participant(user_id)
    if participant is None:
        raise Forbidden("you are not a participant of this call", code="not_invited")
    _require_live(call)
    if not participant.is_joined:
        raise Forbidden("only a joined participant may end the call", code="not_joined")
    reason = EndReason.COMPLETED if call.started_at is not None else EndReason.MISSED
    _end(call, reason, now, out)
    return out


def set_media(
    call: Call, user_id: str, muted: bool | None, video: bool | None, now: datetime
) -> Transition:
    out = Transition()
    participant = call.participant(user_id)
    if participant is None or not participant.is_joined:
        raise Conflict("you are not in this call", code="not_joined")
    _require_live(call)
    if muted is not None:
        participant.muted = muted
    if video is not None:
        participant.video = video
    call.updated_at = now
    out.events.append(Event(EventKind.MEDIA, user_id))
    return out


def expire(call: Call, now: datetime, limits: Limits) -> Transition:
    """Worker rule: end a call that overstayed a limit, if it still has.

    Re-checked under the lock so that several nodes sweeping at once end it once.
    """
    out = Transition()
    if call.is_ended:
        return out
    if call.status is CallStatus.RINGING and now - call.created_at >= timedelta(
        seconds=limits.ringing_timeout_s
    ):
        _end(call, EndReason.MISSED, now, out)
    elif (
        call.status is CallStatus.ACTIVE
        and call.started_at is not None
        and now - call.started_at >= timedelta(seconds=limits.max_duration_s)
    ):
        _end(call, EndReason.EXPIRED, now, out)
    elif now - call.updated_at >= timedelta(seconds=limits.stale_after_s):
        _end(call, EndReason.CLEANED, now, out)
    return out


def validate_new_call(
    caller_id: str, callee_ids: list[str], members: set[str], limits: Limits
) -> list[str]:
    """Check an initiation against the conversation; returns the de-duplicated callees."""
    callees = list(dict.fromkeys(callee_ids))
    if caller_id not in members:
        raise Forbidden("you are not a member of this conversation", code="not_a_member")
    if caller_id in callees:
        raise BadRequest("callee_ids must not include the caller", code="invalid_callees")
    if len(callees) > limits.max_callees:
        raise BadRequest(f"at most {limits.max_callees} callees", code="invalid_callees")
    outsiders = sorted(set(callees) - members)
    if outsiders:
        raise Forbidden(
            f"not members of the conversation: {', '.join(outsiders)}", code="not_a_member"
        )
    return callees
