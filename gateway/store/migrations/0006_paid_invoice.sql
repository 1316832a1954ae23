-- The newest invoice an org paid, and when (policies.billing.BillingState.paid_invoice_id,
-- paid_at): a failure of that invoice, or one stamped the same moment, changes nothing.
ALTER TABLE billing_state
    ADD COLUMN paid_invoice_id TEXT,
    ADD COLUMN paid_at TIMESTAMPTZ;
