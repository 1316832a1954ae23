-- Events of a customer linked to no org yet are kept until the customer is linked: status
-- 'unlinked', the parsed event in event (policies.billing.BillingEvent as JSON, cleared once
-- applied); they are applied by occurred_at (the provider's time), then seq (arrival).
ALTER TABLE webhook_events
    ADD COLUMN customer_id TEXT,
    ADD COLUMN occurred_at TIMESTAMPTZ,
    ADD COLUMN event JSONB;
CREATE INDEX webhook_events_unlinked ON webhook_events (provider, customer_id, occurred_at, seq)
    WHERE status = 'unlinked';
