-- Durable notification outbox: written in the transaction of the transition
-- that caused it, delivered at least once by server.outbox, deleted once delivered.
CREATE TABLE notification_outbox (
    message_id      TEXT PRIMARY KEY,
    event           TEXT NOT NULL,
    call_id         TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    dead_at         TEXT
);

CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at) WHERE dead_at IS NULL;
