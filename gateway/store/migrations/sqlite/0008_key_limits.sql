-- Ingest keys get a name and limits of their own, on top of their org's (meters only).
ALTER TABLE ingest_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
CREATE TABLE key_limits (
    key_id TEXT NOT NULL REFERENCES ingest_keys(id) ON DELETE CASCADE,
    name TEXT NOT NULL CHECK (name IN (
        'requests', 'bytes', 'items',
        'traces.requests', 'traces.bytes', 'traces.items',
        'logs.requests', 'logs.bytes', 'logs.items',
        'metrics.requests', 'metrics.bytes', 'metrics.items',
        'logpush.requests', 'logpush.bytes', 'logpush.items'
    )),
    value INTEGER NOT NULL,
    PRIMARY KEY (key_id, name)
);
