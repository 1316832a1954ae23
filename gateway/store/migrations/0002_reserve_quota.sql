-- reserve_quota: grant quota on every requested meter, or on none, in one call.
--
-- Arguments: the holder, org and period; p_meters, the requested usage meters in lock
-- order (policies.model.METERS), with p_needs and p_max_chunks per meter; the chunk
-- policy's p_strict and p_replicas; p_now and p_ttl in epoch seconds.
-- Returns one row per meter with its grant (meter_name, granted); or, when a meter does
-- not fit, one row for it with granted NULL, its limit and taken (used + live
-- reservations), and records nothing.
--
-- The counter rows of the requested meters are locked first, in the order given: calls
-- for one org serialize and never deadlock, and commits lock counters in the same order.
-- Limits come from org_limits; a meter without a limit is granted its need, unrecorded.
-- The grant is ChunkPolicy.want: need if strict or need >= remaining, else
-- max(need, min(max_chunk, remaining // (2 * max(1, replicas)))).
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
    p_ttl DOUBLE PRECISION
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
        SELECT q.m, q.need, q.max_chunk, l.value AS lim,
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

    -- An expired row of the holder is replaced, a live one grows; either way the expiry
    -- restarts.
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
