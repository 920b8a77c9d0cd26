"""Domain records: conversations, calls and their participants.

Plain mutable dataclasses: the store loads a call under a lock, the pure rules
in :mod:`server.lifecycle` change it, and the store writes it back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime


class CallType(enum.StrEnum):
    AUDIO = "audio"
    VIDEO = "video"


class CallStatus(enum.StrEnum):
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    DECLINED = "declined"
    MISSED = "missed"
    EXPIRED = "expired"
    CLEANED = "cleaned"


class CallMode(enum.StrEnum):
    P2P = "p2p"
    SFU = "sfu"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Conversation:
    conversation_id: str
    title: str | None
    member_ids: list[str]
    created_by: str
    created_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "conversation_id": self.conversation_id,
            "title": self.title,
            "member_ids": list(self.member_ids),
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
        }


@dataclass
class Participant:
    user_id: str
    name: str | None = None
    invited: bool = True
    invited_at: datetime | None = None
    joined_at: datetime | None = None
    left_at: datetime | None = None
    declined_at: datetime | None = None
    muted: bool = False
    video: bool = True

    @property
    def is_joined(self) -> bool:
        """Joined and not left since (a rejoin clears ``left_at``)."""
        return self.joined_at is not None and self.left_at is None

    def to_json(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "name": self.name,
            "invited": self.invited,
            "joined_at": iso(self.joined_at),
            "left_at": iso(self.left_at),
            "declined_at": iso(self.declined_at),
            "muted": self.muted,
            "video": self.video,
        }


@dataclass
class Call:
    call_id: str
    conversation_id: str
    caller_id: str
    call_type: CallType
    status: CallStatus
    mode: CallMode
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    participants: list[Participant] = field(default_factory=list)

    def participant(self, user_id: str) -> Participant | None:
        for participant in self.participants:
            if participant.user_id == user_id:
                return participant
        return None

    @property
    def joined(self) -> list[Participant]:
        return [p for p in self.participants if p.is_joined]

    @property
    def is_ended(self) -> bool:
        return self.status is CallStatus.ENDED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        return round(max(0.0, (end - self.started_at).total_seconds()), 3)

    def to_json(self) -> dict[str, object]:
        return {
            "call_id": self.call_id,
            "conversation_id": self.conversation_id,
            "caller_id": self.caller_id,
            "call_type": self.call_type.value,
            "status": self.status.value,
            "end_reason": self.end_reason.value if self.end_reason else None,
            "mode": self.mode.value,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration_seconds": self.duration_seconds,
            "participants": [p.to_json() for p in self.participants],
        }


@dataclass(frozen=True)
class OutboxMessage:
    """A notification waiting in the durable outbox (table ``notification_outbox``).

    ``body`` is the exact webhook body, written once, so that every attempt
    sends (and signs) the same bytes; ``message_id`` is its idempotency id.
    """

    message_id: str
    event: str
    call_id: str
    body: str
    created_at: datetime
    attempts: int = 0
