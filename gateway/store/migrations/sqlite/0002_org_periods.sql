-- The newest period claimed per org (claim_period).

CREATE TABLE IF NOT EXISTS org_periods (
    org_id TEXT PRIMARY KEY,
    period_start TEXT NOT NULL
);
