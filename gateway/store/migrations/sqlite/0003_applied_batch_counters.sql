-- The (org, period) of each batch, for quota_snapshot(); older rows stay NULL.

ALTER TABLE applied_batches ADD COLUMN org_id TEXT;

ALTER TABLE applied_batches ADD COLUMN period_start TEXT;

CREATE INDEX IF NOT EXISTS applied_batches_counter
    ON applied_batches (org_id, period_start);

CREATE INDEX IF NOT EXISTS applied_batches_applied_at ON applied_batches (applied_at);
