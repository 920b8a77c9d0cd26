"""The pure lifecycle rules, without a store or a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server import lifecycle
from server.config import Limits
from server.errors import Conflict, Forbidden, Gone
from server.lifecycle import EventKind
from server.models import Call, CallMode, CallStatus, CallType, EndReason, Participant

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits()


def make_call(*callees: str, mode: CallMode | None = None) -> Call:
    invited = 1 + len(callees)
    return Call(
        call_id="c",
        conversation_id="v",
        caller_id="ana",
        call_type=CallType.VIDEO,
        status=CallStatus.RINGING,
        mode=mode or lifecycle.mode_for(invited),
        created_at=T0,
        updated_at=T0,
        participants=[
            Participant("ana", joined_at=T0),
            *(Participant(user_id) for user_id in callees),
        ],
    )


def kinds(transition: lifecycle.Transition) -> list[str]:
    return [event.kind for event in transition.events]


def test_first_callee_join_activates() -> None:
    call = make_call("bob")
    out = lifecycle.join(call, "bob", "Bob", T0 + timedelta(seconds=3), LIMITS)
    assert call.status is CallStatus.ACTIVE
    assert call.started_at == T0 + timedelta(seconds=3)
    assert kinds(out) == [EventKind.JOINED]
    assert call.participant("bob").name == "Bob"  # type: ignore[union-attr]


def test_rejoin_is_flagged_and_clears_left_at() -> None:
    call = make_call("bob", "cid")
    lifecycle.join(call, "bob", None, T0, LIMITS)
    lifecycle.leave(call, "bob", T0)
    out = lifecycle.join(call, "bob", None, T0, LIMITS)
    assert out.rejoined
    assert call.participant("bob").is_joined  # type: ignore[union-attr]


def test_join_refusals() -> None:
    call = make_call("bob")
    with pytest.raises(Forbidden):
        lifecycle.join(call, "eve", None, T0, LIMITS)
    with pytest.raises(Conflict) as dup:
        lifecycle.join(call, "ana", None, T0, LIMITS)
    assert dup.value.code == "already_joined"
    late = T0 + timedelta(seconds=LIMITS.ringing_timeout_s + 1)
    with pytest.raises(Gone) as gone:
        lifecycle.join(call, "bob", None, late, LIMITS)
    assert gone.value.code == "ringing_expired"


def test_limit_counts_joined_participants_only() -> None:
    call = make_call("b", "c", "d")
    limits = Limits(max_participants=2)
    lifecycle.join(call, "b", None, T0, limits)
    with pytest.raises(Conflict) as full:
        lifecycle.join(call, "c", None, T0, limits)
    assert full.value.code == "participant_limit_reached"


def test_third_join_switches_p2p_to_sfu_once() -> None:
    call = make_call("bob")
    lifecycle.join(call, "bob", None, T0, LIMITS)
    lifecycle.invite(call, "bob", ["cid"], {"ana", "bob", "cid"}, T0, LIMITS)
    assert call.mode is CallMode.P2P
    out = lifecycle.join(call, "cid", None, T0, LIMITS)
    assert call.mode is CallMode.SFU
    assert kinds(out) == [EventKind.JOINED, EventKind.MODE]


def test_decline_by_every_callee_ends_as_declined() -> None:
    call = make_call("bob", "cid")
    assert kinds(lifecycle.decline(call, "bob", T0)) == [EventKind.DECLINED]
    out = lifecycle.decline(call, "cid", T0)
    assert kinds(out) == [EventKind.DECLINED, EventKind.ENDED]
    assert call.end_reason is EndReason.DECLINED
    assert call.participant("ana").left_at == T0  # type: ignore[union-attr]


def test_last_one_out_completes_an_answered_call() -> None:
    call = make_call("bob")
    lifecycle.join(call, "bob", None, T0, LIMITS)
    lifecycle.leave(call, "ana", T0)
    assert call.status is CallStatus.ACTIVE
    out = lifecycle.leave(call, "bob", T0 + timedelta(seconds=60))
    assert kinds(out) == [EventKind.LEFT, EventKind.ENDED]
    assert call.end_reason is EndReason.COMPLETED
    assert call.duration_seconds == 60


@pytest.mark.parametrize(
    ("elapsed", "joined", "reason"),
    [
        (LIMITS.ringing_timeout_s, False, EndReason.MISSED),
        (LIMITS.max_duration_s, True, EndReason.EXPIRED),
        (LIMITS.ringing_timeout_s - 1, False, None),
    ],
)
def test_expire(elapsed: float, joined: bool, reason: EndReason | None) -> None:
    call = make_call("bob")
    if joined:
        lifecycle.join(call, "bob", None, T0, LIMITS)
    lifecycle.expire(call, T0 + timedelta(seconds=elapsed), LIMITS)
    assert call.end_reason is reason


def test_stale_cleanup_uses_last_change() -> None:
    call = make_call("bob")
    limits = Limits(max_duration_s=10 * 86_400)
    lifecycle.join(call, "bob", None, T0, limits)
    lifecycle.expire(call, T0 + timedelta(seconds=limits.stale_after_s - 1), limits)
    assert not call.is_ended
    lifecycle.expire(call, T0 + timedelta(seconds=limits.stale_after_s), limits)
    assert call.end_reason is EndReason.CLEANED


def test_expire_is_idempotent_on_ended_calls() -> None:
    call = make_call("bob")
    lifecycle.expire(call, T0 + timedelta(days=2), LIMITS)
    assert lifecycle.expire(call, T0 + timedelta(days=3), LIMITS).events == []


def test_the_sfu_serves_no_call_in_p2p_mode() -> None:
    assert not lifecycle.sfu_may_serve(make_call("bob", mode=CallMode.P2P))
    assert lifecycle.sfu_may_serve(make_call("bob", "cyd", mode=CallMode.SFU))
    assert lifecycle.sfu_may_serve(None)  # unknown here: the SFU refuses it itself
