-- The newest invoice paid and when: a failure of it, or stamped then, is void.

ALTER TABLE billing_state ADD COLUMN paid_invoice_id TEXT;

ALTER TABLE billing_state ADD COLUMN paid_at TEXT;
