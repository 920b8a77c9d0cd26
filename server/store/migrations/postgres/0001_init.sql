-- Huddle schema v1 (Postgres; CockroachDB-compatible SQL).
CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY,
    title           TEXT,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    position        INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE calls (
    call_id         TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (conversation_id),
    caller_id       TEXT NOT NULL,
    call_type       TEXT NOT NULL CHECK (call_type IN ('audio', 'video')),
    status          TEXT NOT NULL CHECK (status IN ('ringing', 'active', 'ended')),
    mode            TEXT NOT NULL CHECK (mode IN ('p2p', 'sfu')),
    end_reason      TEXT CHECK (end_reason IN ('completed', 'declined', 'missed', 'expired', 'cleaned')),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    ended_at        TIMESTAMPTZ,
    duration_seconds DOUBLE PRECISION
);

CREATE INDEX calls_by_conversation ON calls (conversation_id, created_at DESC);
CREATE INDEX calls_live ON calls (status, updated_at) WHERE status <> 'ended';

CREATE TABLE call_participants (
    call_id     TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    name        TEXT,
    invited     BOOLEAN NOT NULL,
    invited_at  TIMESTAMPTZ,
    joined_at   TIMESTAMPTZ,
    left_at     TIMESTAMPTZ,
    declined_at TIMESTAMPTZ,
    muted       BOOLEAN NOT NULL DEFAULT FALSE,
    video       BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (call_id, user_id)
);
