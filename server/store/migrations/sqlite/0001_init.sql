-- Huddle schema v1 (SQLite; times are ISO 8601 UTC text, which sorts).
CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY,
    title           TEXT,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL
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
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    started_at      TEXT,
    ended_at        TEXT,
    duration_seconds REAL
);

CREATE INDEX calls_by_conversation ON calls (conversation_id, created_at DESC);
CREATE INDEX calls_live ON calls (status, updated_at) WHERE status <> 'ended';

CREATE TABLE call_participants (
    call_id     TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    name        TEXT,
    invited     INTEGER NOT NULL,
    invited_at  TEXT,
    joined_at   TEXT,
    left_at     TEXT,
    declined_at TEXT,
    muted       INTEGER NOT NULL DEFAULT 0,
    video       INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (call_id, user_id)
);
