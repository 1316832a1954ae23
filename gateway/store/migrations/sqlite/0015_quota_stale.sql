-- An (org, period) whose Redis counters missed a write (see the PostgreSQL 0016).
CREATE TABLE quota_stale (
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (org_id, period_start)
);
