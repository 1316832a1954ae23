-- An org's own limit may be NULL: an override to unlimited, whatever its plan's limit.
-- SQLite cannot drop a NOT NULL in place: the table is rebuilt with its rows.
CREATE TABLE org_limits_new (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL CHECK (name IN (
        'requests', 'bytes', 'items', 'rate_requests', 'rate_bytes',
        'traces.requests', 'traces.bytes', 'traces.items',
        'logs.requests', 'logs.bytes', 'logs.items',
        'metrics.requests', 'metrics.bytes', 'metrics.items',
        'logpush.requests', 'logpush.bytes', 'logpush.items'
    )),
    value INTEGER,
    PRIMARY KEY (org_id, name)
);
INSERT INTO org_limits_new (org_id, name, value) SELECT org_id, name, value FROM org_limits;
DROP TABLE org_limits;
ALTER TABLE org_limits_new RENAME TO org_limits;
