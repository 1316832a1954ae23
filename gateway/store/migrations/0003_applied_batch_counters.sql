-- Which (org, period) each applied batch touched, so that quota_snapshot() can list the
-- batches a Redis rebuild loads as already counted. Rows from before stay NULL and are
-- never listed; they are pruned after 14 days like any other (PostgresStore.heartbeat).
ALTER TABLE applied_batches
    ADD COLUMN org_id TEXT,
    ADD COLUMN period_start TEXT;
CREATE INDEX applied_batches_counter ON applied_batches (org_id, period_start);
-- The prune deletes by age.
CREATE INDEX applied_batches_applied_at ON applied_batches (applied_at);
