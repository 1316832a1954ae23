-- The notifications outbox: one row per event, claimed once (claim is unique across
-- replicas), delivered at least once (attempts, next_attempt_at) until delivered or failed.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    claim TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    type TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    failed_at REAL,
    last_error TEXT
);
CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX notifications_org ON notifications (org_id, created_at);
