-- An (org, period) whose Redis counters missed a write: a grant made here while Redis failed
-- (a fallback), or a commit or heartbeat Redis did not take. Each mark is a new generation
-- (never reset); a Redis hash remembers the generation of the snapshot it was built from,
-- and a grant from a hash older than the last mark is not recorded.
CREATE TABLE quota_stale (
    org_id TEXT NOT NULL,
    period_start TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (org_id, period_start)
);

-- A grant Redis decided from a hash built at p_generation, recorded here unless the
-- (org, period) was marked since (then TRUE and nothing written); NULL: no hash, no check. The counter rows are locked FOR SHARE first, as reserve_quota()
-- locks them FOR UPDATE: a fallback grant and its mark commit either before this reads the
-- mark (seen) or after this row is written (counted by the fallback).
CREATE FUNCTION add_reservation_checked(
    p_holder TEXT,
    p_org TEXT,
    p_period TEXT,
    p_meters TEXT[],
    p_amounts BIGINT[],
    p_now DOUBLE PRECISION,
    p_ttl DOUBLE PRECISION,
    p_generation BIGINT
) RETURNS BOOLEAN
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_generation BIGINT;
BEGIN
    INSERT INTO usage_counters (org_id, period_start, meter)
    SELECT p_org, p_period, m FROM unnest(p_meters) WITH ORDINALITY AS q (m, i) ORDER BY i
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM usage_counters c
    WHERE c.org_id = p_org AND c.period_start = p_period AND c.meter = ANY (p_meters)
    ORDER BY array_position(p_meters, c.meter)
    FOR SHARE;
    -- The mark's row, held FOR SHARE until this commits: a mark either waits for this grant
    -- or comes first (and this grant, from an older hash, is refused).
    INSERT INTO quota_stale (org_id, period_start, generation) VALUES (p_org, p_period, 0)
    ON CONFLICT DO NOTHING;
    SELECT s.generation INTO v_generation FROM quota_stale s
    WHERE s.org_id = p_org AND s.period_start = p_period
    FOR SHARE;
    IF p_generation IS NOT NULL AND v_generation > p_generation THEN
        RETURN TRUE;
    END IF;
    -- An expired row of the holder is replaced, a live one grows; the expiry restarts.
    INSERT INTO quota_reservations AS x (holder, org_id, period_start, meter, amount, expires_at)
    SELECT p_holder, p_org, p_period, a.meter, a.amount, p_now + p_ttl
    FROM unnest(p_meters, p_amounts) WITH ORDINALITY AS a (meter, amount, i)
    ORDER BY a.i
    ON CONFLICT (holder, org_id, period_start, meter) DO UPDATE SET
        amount = CASE WHEN x.expires_at > p_now THEN x.amount + excluded.amount
            ELSE excluded.amount END,
        expires_at = excluded.expires_at;
    RETURN FALSE;
END;
$$;
