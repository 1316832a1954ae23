-- The SQLite schema, version 1: orgs, limits, keys, usage counters, reservations, batches.

CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    upstream TEXT,
    suspended INTEGER NOT NULL DEFAULT 0,
    suspension_reason TEXT,
    payment_status TEXT NOT NULL DEFAULT 'ok'
        CHECK (payment_status IN ('ok', 'past_due', 'blocked')),
    shadow INTEGER NOT NULL DEFAULT 0,
    created_at TEXT,
    updated_at TEXT
);

-- An absent row means unlimited.
CREATE TABLE IF NOT EXISTS org_limits (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL
        CHECK (name IN ('requests', 'bytes', 'items', 'rate_requests', 'rate_bytes')),
    value INTEGER NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE IF NOT EXISTS ingest_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    key_hash BLOB UNIQUE NOT NULL,
    created_at TEXT,
    revoked_at TEXT
);

CREATE INDEX IF NOT EXISTS ingest_keys_org_id ON ingest_keys (org_id);

-- No foreign key to orgs: like MemoryStore, usage of an unknown org is still counted.
CREATE TABLE IF NOT EXISTS usage_counters (
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    meter TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (org_id, period_start, meter)
);

CREATE TABLE IF NOT EXISTS quota_reservations (
    holder TEXT NOT NULL,
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    meter TEXT NOT NULL,
    amount INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (holder, org_id, period_start, meter)
);

-- reserve() sums every holder's rows of one counter.
CREATE INDEX IF NOT EXISTS quota_reservations_counter
    ON quota_reservations (org_id, period_start, meter);

CREATE TABLE IF NOT EXISTS applied_batches (
    batch_id TEXT PRIMARY KEY,
    applied_at REAL
);
