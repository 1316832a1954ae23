-- The gateway's tables. Names mirror the SQLite store where both have a table.

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    upstream TEXT,
    suspended BOOLEAN NOT NULL DEFAULT false,
    suspension_reason TEXT,
    payment_status TEXT NOT NULL DEFAULT 'ok'
        CHECK (payment_status IN ('ok', 'past_due', 'blocked')),
    shadow BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- An absent row means unlimited.
CREATE TABLE org_limits (
    org_id TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT NOT NULL
        CHECK (name IN ('requests', 'bytes', 'items', 'rate_requests', 'rate_bytes')),
    value BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE ingest_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    key_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
CREATE INDEX ingest_keys_org_id ON ingest_keys (org_id);

-- No foreign key to orgs: like MemoryStore, usage of an unknown org is still counted.
-- used IS NULL marks a row that exists only so that reserve_quota() can lock it;
-- usage() does not report it.
CREATE TABLE usage_counters (
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    meter TEXT NOT NULL,
    used BIGINT,
    PRIMARY KEY (org_id, period_start, meter)
);

CREATE TABLE quota_reservations (
    holder TEXT NOT NULL,
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    meter TEXT NOT NULL,
    amount BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (holder, org_id, period_start, meter)
);
-- reserve_quota() sums every holder's rows of one counter.
CREATE INDEX quota_reservations_counter ON quota_reservations (org_id, period_start, meter);

CREATE TABLE applied_batches (
    batch_id TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The newest period claimed per org. Compared bytewise (COLLATE "C") like the other
-- stores compare strings, whatever the database's collation.
CREATE TABLE org_periods (
    org_id TEXT PRIMARY KEY,
    period_start TEXT COLLATE "C" NOT NULL
);

-- Billing, for the payment-provider work to come.
CREATE TABLE billing_state (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    payment_status TEXT NOT NULL DEFAULT 'ok'
        CHECK (payment_status IN ('ok', 'past_due', 'blocked')),
    plan TEXT,
    period_start TIMESTAMPTZ,
    period_end TIMESTAMPTZ,
    subscription_id TEXT,
    never_paid BOOLEAN NOT NULL DEFAULT true,
    cancel_at_period_end BOOLEAN NOT NULL DEFAULT false,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Provider events name the subscription, not the org.
CREATE INDEX billing_state_subscription_id ON billing_state (subscription_id);

CREATE TABLE billing_suspensions (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    overdue_since TIMESTAMPTZ,
    suspended_at TIMESTAMPTZ,
    reason TEXT,
    invoice_id TEXT
);

-- A webhook event is claimed once, in the transaction that applies its effects.
CREATE TABLE webhook_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    type TEXT,
    org_id TEXT,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX webhook_events_org_id ON webhook_events (org_id, received_at);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    field TEXT,
    old_value TEXT,
    new_value TEXT,
    reason TEXT,
    actor TEXT
);
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id, at);
