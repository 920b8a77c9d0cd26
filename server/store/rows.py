"""Rows of the SQL store ↔ domain records (:mod:`server.models`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.models import Call, CallMode, CallStatus, CallType, EndReason, Participant
from server.store.base import Backend


def call_row(backend: Backend, call: Call) -> tuple[object, ...]:
    t = backend.to_db_time
    return (
        call.call_id,
        call.conversation_id,
        call.caller_id,
        call.call_type.value,
        call.status.value,
        call.mode.value,
        call.end_reason.value if call.end_reason else None,
        t(call.created_at),
        t(call.updated_at),
        t(call.started_at),
        t(call.ended_at),
        call.duration_seconds if call.ended_at else None,
    )


def call_from_row(
    backend: Backend, row: Mapping[str, Any], participants: list[Participant]
) -> Call:
    f = backend.from_db_time
    created_at, updated_at = f(row["created_at"]), f(row["updated_at"])
    assert created_at is not None and updated_at is not None
    return Call(
        call_id=row["call_id"],
        conversation_id=row["conversation_id"],
        caller_id=row["caller_id"],
        call_type=CallType(row["call_type"]),
        status=CallStatus(row["status"]),
        mode=CallMode(row["mode"]),
        end_reason=EndReason(row["end_reason"]) if row["end_reason"] else None,
        created_at=created_at,
        updated_at=updated_at,
        started_at=f(row["started_at"]),
        ended_at=f(row["ended_at"]),
        participants=participants,
    )


def participant_from_row(backend: Backend, row: Mapping[str, Any]) -> Participant:
    f = backend.from_db_time
    return Participant(
        user_id=row["user_id"],
        name=row["name"],
        invited=bool(row["invited"]),
        invited_at=f(row["invited_at"]),
        joined_at=f(row["joined_at"]),
        left_at=f(row["left_at"]),
        declined_at=f(row["declined_at"]),
        muted=bool(row["muted"]),
        video=bool(row["video"]),
    )
