-- An event of a customer linked to no org yet is kept (event: the parsed event as
-- JSON) until the customer is linked: occurred_at, then rowid, orders them.
ALTER TABLE webhook_events ADD COLUMN customer_id TEXT;

ALTER TABLE webhook_events ADD COLUMN occurred_at TEXT;

ALTER TABLE webhook_events ADD COLUMN event TEXT;

CREATE INDEX IF NOT EXISTS webhook_events_unlinked
    ON webhook_events (provider, customer_id, occurred_at) WHERE status = 'unlinked';
