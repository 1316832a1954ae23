-- Billing. Times are ISO 8601 text in UTC (utc()), so they sort as text.

-- An absent row means free.
CREATE TABLE IF NOT EXISTS org_prices (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id) ON DELETE CASCADE,
    requests INTEGER,
    bytes INTEGER,
    items INTEGER,
    block_over_balance INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS billing_customers (
    provider TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    PRIMARY KEY (provider, customer_id)
);

-- One customer per (org, provider).
CREATE UNIQUE INDEX IF NOT EXISTS billing_customers_org
    ON billing_customers (org_id, provider);

-- balance_minor is the sum of the org's credit_ledger, kept in the same transactions.
CREATE TABLE IF NOT EXISTS billing_state (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id),
    payment_status TEXT NOT NULL DEFAULT 'ok'
        CHECK (payment_status IN ('ok', 'past_due', 'blocked')),
    plan TEXT,
    period_start TEXT,
    period_end TEXT,
    subscription_id TEXT,
    never_paid INTEGER NOT NULL DEFAULT 1,
    cancel_at_period_end INTEGER NOT NULL DEFAULT 0,
    status_at TEXT,
    subscription_at TEXT,
    refunded TEXT NOT NULL DEFAULT '{}',
    balance_minor INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT
);

CREATE TABLE IF NOT EXISTS billing_suspensions (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id),
    overdue_since TEXT,
    suspended_at TEXT,
    reason TEXT,
    invoice_id TEXT
);

CREATE TABLE IF NOT EXISTS credit_ledger (
    id INTEGER PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    amount_minor INTEGER NOT NULL,
    source TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS credit_ledger_org_id ON credit_ledger (org_id);

CREATE TABLE IF NOT EXISTS billing_period_claims (
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    PRIMARY KEY (org_id, period_start)
);

CREATE TABLE IF NOT EXISTS webhook_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    type TEXT,
    org_id TEXT,
    status TEXT,
    reason TEXT,
    PRIMARY KEY (provider, event_id)
);

CREATE INDEX IF NOT EXISTS webhook_events_received_at ON webhook_events (received_at);

CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    field TEXT,
    old_value TEXT,
    new_value TEXT,
    reason TEXT,
    actor TEXT
);

CREATE INDEX IF NOT EXISTS audit_log_entity ON audit_log (entity, entity_id, at);

CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);

CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS usage_exports (
    org_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    period_start TEXT NOT NULL,
    meter TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (org_id, provider, period_start, meter)
);
