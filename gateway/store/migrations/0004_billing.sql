-- Billing: prices, provider customers, the credit ledger, webhook outcomes, leases, usage
-- export cursors, and a reserve_quota() that takes the credit meter's limit.

-- An absent row means free.
CREATE TABLE org_prices (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    requests BIGINT,
    bytes BIGINT,
    items BIGINT,
    block_over_balance BOOLEAN NOT NULL DEFAULT false
);

-- Provider events name a customer; each customer is one org's, each org has one per provider.
CREATE TABLE billing_customers (
    provider TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    PRIMARY KEY (provider, customer_id)
);
CREATE UNIQUE INDEX billing_customers_org ON billing_customers (org_id, provider);

-- The rest of policies.billing.BillingState; balance_minor is the sum of the org's
-- credit_ledger rows, kept in the transactions that insert them.
ALTER TABLE billing_state
    ADD COLUMN status_at TIMESTAMPTZ,
    ADD COLUMN subscription_at TIMESTAMPTZ,
    ADD COLUMN refunded JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN balance_minor BIGINT NOT NULL DEFAULT 0;
-- orgs_to_reconcile()
CREATE INDEX billing_state_past_due ON billing_state (org_id) WHERE payment_status = 'past_due';
CREATE INDEX billing_suspensions_suspended ON billing_suspensions (org_id)
    WHERE suspended_at IS NOT NULL;

CREATE TABLE credit_ledger (
    id BIGSERIAL PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    amount_minor BIGINT NOT NULL,
    source TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_org_id ON credit_ledger (org_id);

-- A provider's new period is taken once per org: only the claimant sets it and grants credit.
CREATE TABLE billing_period_claims (
    org_id TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, period_start)
);

-- status: applied, refused or unknown_customer; seq orders events received at once.
ALTER TABLE webhook_events
    ADD COLUMN status TEXT,
    ADD COLUMN reason TEXT,
    ADD COLUMN seq BIGSERIAL;
CREATE INDEX webhook_events_received_at ON webhook_events (received_at, seq);
CREATE INDEX audit_log_at ON audit_log (at, id);

-- One holder at a time per name (the reconciler, the usage export).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

-- The usage total each provider has confirmed, per org, period and meter; only grows.
CREATE TABLE usage_exports (
    org_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    period_start TEXT NOT NULL,
    meter TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (org_id, provider, period_start, meter)
);

-- reserve_quota as in 0002, plus p_credit_limit: the limit of the 'credit' meter (the
-- prepaid balance from the caller's routing, in millionths of a minor unit; NULL means
-- unlimited). Other meters' limits still come from org_limits, which never holds credit.
-- The ten-argument version stays for replicas of the previous release during a rolling
-- upgrade; they never send a credit meter.
CREATE FUNCTION reserve_quota(
    p_holder TEXT,
    p_org TEXT,
    p_period TEXT,
    p_meters TEXT[],
    p_needs BIGINT[],
    p_max_chunks BIGINT[],
    p_strict BOOLEAN,
    p_replicas INTEGER,
    p_now DOUBLE PRECISION,
    p_ttl DOUBLE PRECISION,
    p_credit_limit BIGINT
) RETURNS TABLE (meter_name TEXT, granted BIGINT, meter_limit BIGINT, taken BIGINT)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    r RECORD;
    v_remaining BIGINT;
    v_grant BIGINT;
    v_meters TEXT[] := '{}';
    v_grants BIGINT[] := '{}';
    v_recorded_meters TEXT[] := '{}';
    v_recorded BIGINT[] := '{}';
BEGIN
    INSERT INTO usage_counters (org_id, period_start, meter)
    SELECT p_org, p_period, m FROM unnest(p_meters) WITH ORDINALITY AS q (m, i) ORDER BY i
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM usage_counters c
    WHERE c.org_id = p_org AND c.period_start = p_period AND c.meter = ANY (p_meters)
    ORDER BY array_position(p_meters, c.meter)
    FOR UPDATE;

    -- Expired rows count for nothing. SKIP LOCKED: a row another transaction holds is
    -- left for later rather than waited for. The holder's own rows are replaced below.
    DELETE FROM quota_reservations x
    USING (
        SELECT e.holder, e.meter FROM quota_reservations e
        WHERE e.org_id = p_org AND e.period_start = p_period
            AND e.expires_at <= p_now AND e.holder <> p_holder
        FOR UPDATE SKIP LOCKED
    ) e
    WHERE x.holder = e.holder AND x.org_id = p_org AND x.period_start = p_period
        AND x.meter = e.meter;

    FOR r IN
        SELECT q.m, q.need, q.max_chunk,
            CASE WHEN q.m = 'credit' THEN p_credit_limit ELSE l.value END AS lim,
            COALESCE(c.used, 0) + COALESCE((
                SELECT SUM(x.amount) FROM quota_reservations x
                WHERE x.org_id = p_org AND x.period_start = p_period AND x.meter = q.m
                    AND x.expires_at > p_now
            ), 0) AS taken_now
        FROM unnest(p_meters, p_needs, p_max_chunks) WITH ORDINALITY AS q (m, need, max_chunk, i)
        LEFT JOIN org_limits l ON l.org_id = p_org AND l.name = q.m
        LEFT JOIN usage_counters c
            ON c.org_id = p_org AND c.period_start = p_period AND c.meter = q.m
        ORDER BY q.i
    LOOP
        IF r.lim IS NULL THEN
            v_grant := r.need;
        ELSE
            v_remaining := r.lim - r.taken_now;
            IF v_remaining < r.need THEN
                meter_name := r.m;
                granted := NULL;
                meter_limit := r.lim;
                taken := r.taken_now;
                RETURN NEXT;
                RETURN;
            END IF;
            IF p_strict OR r.need >= v_remaining THEN
                v_grant := r.need;
            ELSE
                v_grant := GREATEST(r.need, LEAST(r.max_chunk,
                    floor(v_remaining::NUMERIC / (2 * GREATEST(1, p_replicas)))::BIGINT));
            END IF;
            v_recorded_meters := v_recorded_meters || r.m;
            v_recorded := v_recorded || v_grant;
        END IF;
        v_meters := v_meters || r.m;
        v_grants := v_grants || v_grant;
    END LOOP;

    INSERT INTO quota_reservations AS x (holder, org_id, period_start, meter, amount, expires_at)
    SELECT p_holder, p_org, p_period, g.m, g.amount, p_now + p_ttl
    FROM unnest(v_recorded_meters, v_recorded) WITH ORDINALITY AS g (m, amount, i)
    ORDER BY g.i
    ON CONFLICT (holder, org_id, period_start, meter) DO UPDATE SET
        amount = CASE WHEN x.expires_at > p_now
            THEN x.amount + excluded.amount ELSE excluded.amount END,
        expires_at = excluded.expires_at;

    RETURN QUERY SELECT g.m, g.amount, NULL::BIGINT, NULL::BIGINT
        FROM unnest(v_meters, v_grants) WITH ORDINALITY AS g (m, amount, i) ORDER BY g.i;
END
$$;
