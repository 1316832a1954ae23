-- The plan catalog: each plan's limits, overage caps, rates and grant, as JSON
-- (policies.entitlements.Plan). An org's plan is billing_state.plan.
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX billing_state_plan ON billing_state (plan);
