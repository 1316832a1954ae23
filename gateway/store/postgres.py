"""The durable store for many replicas: PostgreSQL through asyncpg.

Accuracy and durability: exact and durable (every step a committed transaction): the truth
of usage, orgs and billing for any number of replicas, at one locked round trip per
reservation; put ``RedisQuotaStore`` in front when that round trip is the bottleneck.

URL: ``postgresql://user:password@host:5432/db`` (or ``postgres://``), with an optional
``?schema=NAME`` that puts every table in that schema (created if missing; tests use it
to isolate themselves). Migrations are the SQL files in ``migrations/``, applied in name
order by ``migrate()`` under an advisory lock, each in its own transaction; ``open()``
runs it too, so starting a store on an up-to-date database changes nothing.

Every atomic step is one statement or one transaction, decided in SQL: ``reserve`` is one
call to ``reserve_quota()`` (``0002_reserve_quota.sql``, with the credit limit since
``0004_billing.sql``). Rows are locked in one global order so that concurrent calls never
deadlock: counter rows before reservation rows, and within an (org, period) by meter in
the order of ``policies.model.METERS``. A billing change locks the org's ``billing_state``
row after claiming its event; admin changes lock the ``orgs`` row (``FOR NO KEY UPDATE``,
which billing rows referencing the org do not wait for). A webhook that finds its customer
unlinked and the link of that customer take one advisory lock on the customer, so that the
event is either kept before the link commits or applied after it.
Semantics mirror ``MemoryStore``; asyncpg and socket errors become ``StoreError``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.errors import ConfigError, StoreError
from gateway.store.normal import (
    applied_change,
    event_from_json,
    event_json,
    event_reason,
    has_suspension_row,
    iso,
    ledger_refusal,
    org_audit,
    suspension_audit,
    utc,
)
from gateway.store.records import (
    BATCH_RETENTION_SECONDS,
    HOLDER_LEASE,
    PLAN_REFUSED,
    PRUNE_INTERVAL_SECONDS,
    PRUNE_LIMIT,
    AuditRow,
    CustomerTaken,
    Decide,
    DecideEvent,
    Exhausted,
    Granted,
    KeyRecord,
    OrgChanges,
    OrgRecord,
    QuotaSnapshot,
    ReservationRow,
    ReserveRequest,
    ReserveResult,
    UsageBatch,
    WebhookOutcome,
    new_id,
)
from gateway.store.sql import SQLSteps, Step, numbered
from policies.billing import BillingChange, BillingEvent, BillingState
from policies.model import METERS, Limits, OrgRouting, PaymentStatus, Period, Prices

T = TypeVar("T")

log = logging.getLogger("gateway.store.postgres")

#: Held while migrating, so that concurrent ``migrate()`` calls take turns ("gateway\0").
MIGRATION_LOCK = 0x6761_7465_7761_7900
#: The class of the two-key advisory locks on one billing customer ("cust").
CUSTOMER_LOCK = 0x6375_7374
COMMAND_TIMEOUT = 5.0
LOCK_TIMEOUT = 60.0

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_METERS = list(METERS)

# One statement reads an org with its limits (one row per limit, or one row of NULLs),
# prices, billing state and balance.
_SELECT_ORG = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        COALESCE(b.payment_status, 'ok') AS payment_status, o.shadow, o.created_at,
        l.name AS limit_name, l.value,
        p.requests AS price_requests, p.bytes AS price_bytes, p.items AS price_items,
        COALESCE(p.block_over_balance, false) AS block_over_balance,
        s.suspended_at IS NOT NULL AS billing_suspended, b.period_start, b.period_end,
        COALESCE(b.balance_minor, 0) AS balance_minor,
        (SELECT jsonb_object_agg(c.provider, c.customer_id) FROM billing_customers c
            WHERE c.org_id = o.id)::text AS customers
    FROM orgs o
    LEFT JOIN org_limits l ON l.org_id = o.id
    LEFT JOIN org_prices p ON p.org_id = o.id
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE o.id = $1"""
# The same columns by key; the routing needs no customers.
_SELECT_ROUTING = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        COALESCE(b.payment_status, 'ok') AS payment_status, o.shadow, o.created_at,
        l.name AS limit_name, l.value,
        p.requests AS price_requests, p.bytes AS price_bytes, p.items AS price_items,
        COALESCE(p.block_over_balance, false) AS block_over_balance,
        s.suspended_at IS NOT NULL AS billing_suspended, b.period_start, b.period_end,
        COALESCE(b.balance_minor, 0) AS balance_minor, NULL::text AS customers
    FROM ingest_keys k JOIN orgs o ON o.id = k.org_id
    LEFT JOIN org_limits l ON l.org_id = o.id
    LEFT JOIN org_prices p ON p.org_id = o.id
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE k.key_hash = $1 AND k.revoked_at IS NULL"""

# The org row is locked before an admin change reads it: changes to one org take turns.
# NO KEY: billing rows referencing the org (KEY SHARE) are not blocked by it.
_LOCK_ORG = "SELECT id FROM orgs WHERE id = $1 FOR NO KEY UPDATE"

_USED_OF = "SELECT used FROM usage_counters WHERE org_id = $1 AND period_start = $2 AND meter = $3"
_RESERVE = """SELECT meter_name, granted, meter_limit, taken
    FROM reserve_quota($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"""

_CLAIM_BATCH = """INSERT INTO applied_batches (batch_id, org_id, period_start)
    VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING RETURNING batch_id"""

_PRUNE_BATCHES = """DELETE FROM applied_batches WHERE batch_id IN (
    SELECT batch_id FROM applied_batches
    WHERE applied_at < now() - make_interval(secs => $1)
    LIMIT $2)"""

# Meters arrive sorted (lock order); rows are upserted in that order.
_ADD_USED = """INSERT INTO usage_counters AS c (org_id, period_start, meter, used)
    SELECT $1::text, $2::text, d.meter, d.delta
    FROM unnest($3::text[], $4::bigint[]) WITH ORDINALITY AS d (meter, delta, i)
    ORDER BY d.i
    ON CONFLICT (org_id, period_start, meter)
        DO UPDATE SET used = COALESCE(c.used, 0) + excluded.used"""

# Only the holder's existing rows change, locked in lock order.
_ADD_RESERVED = """UPDATE quota_reservations q SET amount = GREATEST(0, q.amount + r.delta)
    FROM (
        SELECT s.meter, d.delta FROM quota_reservations s
        JOIN unnest($4::text[], $5::bigint[]) WITH ORDINALITY AS d (meter, delta, i)
            ON d.meter = s.meter
        WHERE s.holder = $1 AND s.org_id = $2 AND s.period_start = $3
        ORDER BY d.i
        FOR UPDATE OF s
    ) r
    WHERE q.holder = $1 AND q.org_id = $2 AND q.period_start = $3 AND q.meter = r.meter"""

# An expired row of the holder is replaced, a live one grows; either way the expiry restarts.
_ADD_RESERVATION = """INSERT INTO quota_reservations AS x
        (holder, org_id, period_start, meter, amount, expires_at)
    SELECT $1::text, $2::text, $3::text, a.meter, a.amount, $6::float8 + $7::float8
    FROM unnest($4::text[], $5::bigint[]) WITH ORDINALITY AS a (meter, amount, i)
    ORDER BY a.i
    ON CONFLICT (holder, org_id, period_start, meter) DO UPDATE SET
        amount = CASE WHEN x.expires_at > $6 THEN x.amount + excluded.amount
            ELSE excluded.amount END,
        expires_at = excluded.expires_at"""

# A holder's rows are locked in the global order (org, period, meter rank) first.
_HEARTBEAT = """UPDATE quota_reservations q SET expires_at = $3::float8 + $4::float8
    FROM (
        SELECT s.org_id, s.period_start, s.meter FROM quota_reservations s
        WHERE s.holder = $1 AND s.expires_at > $3
        ORDER BY s.org_id, s.period_start,
            COALESCE(array_position($2::text[], s.meter), 2147483647), s.meter
        FOR UPDATE
    ) s
    WHERE q.holder = $1 AND q.org_id = s.org_id AND q.period_start = s.period_start
        AND q.meter = s.meter"""
# Keep holder $1 (lease $2) live until $4 + $5 and count 1 + the others live at $4. Presences
# no longer live are forgotten, skipping those another replica is forgetting at the same time.
_LIVE_HOLDERS = """WITH gone AS (
        DELETE FROM leases WHERE name IN (
            SELECT name FROM leases WHERE name LIKE $3 AND name <> $2 AND expires_at <= $4
            FOR UPDATE SKIP LOCKED)
    ), present AS (
        INSERT INTO leases (name, holder, expires_at) VALUES ($2, $1, $4::float8 + $5::float8)
        ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at
    )
    SELECT 1 + count(*) FROM leases WHERE name LIKE $3 AND name <> $2 AND expires_at > $4"""
_RELEASE = """DELETE FROM quota_reservations q
    USING (
        SELECT s.org_id, s.period_start, s.meter FROM quota_reservations s
        WHERE s.holder = $1
        ORDER BY s.org_id, s.period_start,
            COALESCE(array_position($2::text[], s.meter), 2147483647), s.meter
        FOR UPDATE
    ) s
    WHERE q.holder = $1 AND q.org_id = s.org_id AND q.period_start = s.period_start
        AND q.meter = s.meter"""

_LIVE_RESERVATIONS = """SELECT holder, meter, amount, expires_at FROM quota_reservations
    WHERE org_id = $1 AND period_start = $2 AND expires_at > $3 AND amount > 0
    ORDER BY holder, COALESCE(array_position($4::text[], meter), 2147483647), meter"""

_USAGE = """SELECT meter, used FROM usage_counters
    WHERE org_id = $1 AND period_start = $2 AND used IS NOT NULL"""

# Only recent batches: the race they guard (a commit crossing a rebuild) lasts seconds; a
# spool replay older than this may count twice in Redis (refusing early, never over).
_BATCH_IDS = """SELECT batch_id FROM applied_batches
    WHERE org_id = $1 AND period_start = $2 AND applied_at > now() - interval '1 hour'"""

_UPDATE_ORG = """UPDATE orgs SET
        name = COALESCE($2, name),
        upstream = CASE WHEN $3 THEN $4 ELSE upstream END,
        shadow = COALESCE($5, shadow),
        updated_at = now()
    WHERE id = $1
    RETURNING id"""

_CREATE_KEY = """INSERT INTO ingest_keys (id, org_id, key_hash, created_at)
    SELECT $1::text, $2::text, $3::bytea, $4::timestamptz
    WHERE EXISTS (SELECT 1 FROM orgs WHERE id = $2)
    RETURNING id"""

_WRITE_PRICES = """INSERT INTO org_prices (org_id, requests, bytes, items, block_over_balance)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (org_id) DO UPDATE SET requests = excluded.requests,
        bytes = excluded.bytes, items = excluded.items,
        block_over_balance = excluded.block_over_balance"""

# Rows in the order given, so that ids (and so the log's order) follow it.
_INSERT_AUDIT = """INSERT INTO audit_log
        (at, entity, entity_id, field, old_value, new_value, reason, actor)
    SELECT $1, 'org', $2, a.field, a.old, a.new, a.reason, $3
    FROM unnest($4::text[], $5::text[], $6::text[], $7::text[])
        WITH ORDINALITY AS a (field, old, new, reason, i)
    ORDER BY a.i"""

# The row of an org that has none yet is created first, so that there is a row to lock.
_ENSURE_STATE = """INSERT INTO billing_state (org_id)
    SELECT id FROM orgs WHERE id = $1
    ON CONFLICT (org_id) DO NOTHING"""
_LOCK_STATE = """SELECT b.payment_status, b.plan, b.period_start, b.period_end,
        b.subscription_id, b.never_paid, b.cancel_at_period_end, b.status_at,
        b.subscription_at, b.refunded::text AS refunded, s.overdue_since, s.invoice_id,
        s.suspended_at, s.reason, b.paid_invoice_id, b.paid_at
    FROM billing_state b LEFT JOIN billing_suspensions s ON s.org_id = b.org_id
    WHERE b.org_id = $1
    FOR UPDATE OF b"""
_SELECT_STATE = """SELECT o.id, b.payment_status, b.plan, b.period_start, b.period_end,
        b.subscription_id, b.never_paid, b.cancel_at_period_end, b.status_at,
        b.subscription_at, b.refunded::text AS refunded, s.overdue_since, s.invoice_id,
        s.suspended_at, s.reason, b.paid_invoice_id, b.paid_at
    FROM orgs o
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE o.id = $1"""

# balance_minor is left alone: only ledger inserts move it.
_WRITE_STATE = """UPDATE billing_state SET payment_status = $2, plan = $3,
        period_start = $4, period_end = $5, subscription_id = $6, never_paid = $7,
        cancel_at_period_end = $8, status_at = $9, subscription_at = $10,
        refunded = $11::jsonb, paid_invoice_id = $12, paid_at = $13, updated_at = now()
    WHERE org_id = $1"""

_WRITE_SUSPENSION = """INSERT INTO billing_suspensions
        (org_id, overdue_since, suspended_at, reason, invoice_id)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (org_id) DO UPDATE SET overdue_since = excluded.overdue_since,
        suspended_at = excluded.suspended_at, reason = excluded.reason,
        invoice_id = excluded.invoice_id"""

# Entries whose key is in the ledger already are skipped; the balance grows by the rest.
_ADD_CREDITS = """WITH added AS (
        INSERT INTO credit_ledger (org_id, amount_minor, source, idempotency_key, created_at)
        SELECT $1, e.amount, e.source, e.key, $5
        FROM unnest($2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY
            AS e (amount, source, key, i)
        ORDER BY e.i
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING amount_minor
    )
    UPDATE billing_state SET balance_minor = balance_minor
        + (SELECT COALESCE(SUM(amount_minor), 0) FROM added)
    WHERE org_id = $1"""

_CLAIM_BILLING_PERIOD = """INSERT INTO billing_period_claims (org_id, period_start)
    VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING org_id"""

# A duplicate waits here for the first claim's transaction, then finds it (or takes over
# an event whose first attempt rolled back).
_CLAIM_EVENT = """INSERT INTO webhook_events
        (provider, event_id, received_at, type, customer_id, occurred_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (provider, event_id) DO NOTHING
    RETURNING event_id"""
# A redelivery of an event applied with its plan refused, waiting for another redelivery.
_TAKE_PLAN_REFUSED = """SELECT org_id FROM webhook_events
    WHERE provider = $1 AND event_id = $2 AND status = 'applied' AND reason = $3
        AND org_id IS NOT NULL
    FOR UPDATE"""
_FINISH_EVENT = """UPDATE webhook_events SET org_id = $3, status = $4, reason = $5, event = $6
    WHERE provider = $1 AND event_id = $2"""
_CUSTOMER_ORG = "SELECT org_id FROM billing_customers WHERE provider = $1 AND customer_id = $2"
# Taken by a webhook that finds its customer unlinked and by the link of that customer, so
# that an event is either kept before the link commits or sees the link (applied at once).
_LOCK_CUSTOMER = "SELECT pg_advisory_xact_lock($1, hashtext($2::text || '/' || $3::text))"
_UNLINKED_EVENTS = """SELECT event_id FROM webhook_events
    WHERE provider = $1 AND customer_id = $2 AND status = 'unlinked'
    ORDER BY occurred_at, seq"""
# A second applier waits for the first, then finds the row no longer unlinked.
_TAKE_UNLINKED = """SELECT event::text FROM webhook_events
    WHERE provider = $1 AND event_id = $2 AND status = 'unlinked'
    FOR UPDATE"""

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def split_url(url: str) -> tuple[str, str | None]:
    """The DSN for asyncpg (without ``schema``) and the schema named by the URL, if any."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError("GATEWAY_STORE_URL: a PostgreSQL URL starts with postgresql://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            "GATEWAY_STORE_URL: schema= takes lowercase letters, digits and underscores"
        )
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _store_error(exc: BaseException, doing: str) -> StoreError:
    # asyncpg's client-side errors can quote bound values (key hashes) and the DSN: only
    # server messages (they name tables and constraints) and socket errors are passed on.
    if isinstance(exc, asyncpg.PostgresError):
        name = exc.__class__.__name__
        return StoreError(f"PostgreSQL {doing} failed: {exc.sqlstate} {name}: {exc}")
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return StoreError(f"PostgreSQL {doing} failed: {exc.__class__.__name__}: {exc}")
    return StoreError(f"PostgreSQL {doing} failed: {exc.__class__.__name__}")


def _server_settings(schema: str | None) -> dict[str, str]:
    return {"search_path": schema} if schema else {}


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) of every migration shipped with the gateway, in order."""
    folder = resources.files("gateway.store").joinpath("migrations")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [(entry.name.removesuffix(".sql"), entry.read_text("utf-8")) for entry in files]


async def migrate(url: str) -> list[str]:
    """Apply the migrations a database lacks; returns the versions applied, in order.

    Safe to run twice or from several processes at once: one runs while the others wait
    on an advisory lock, then find nothing left to do.
    """
    dsn, schema = split_url(url)
    try:
        conn = await asyncpg.connect(
            dsn, timeout=COMMAND_TIMEOUT, server_settings=_server_settings(schema)
        )
    except (*_ERRORS, ValueError) as exc:
        raise _store_error(exc, "connect") from exc
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK, timeout=LOCK_TIMEOUT)
        try:
            return await _apply_migrations(conn, schema)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    except _ERRORS as exc:
        raise _store_error(exc, "migration") from exc
    finally:
        try:
            await conn.close(timeout=COMMAND_TIMEOUT)
        except _ERRORS:
            conn.terminate()


async def _apply_migrations(conn: Any, schema: str | None) -> list[str]:
    exists = "SELECT 1 FROM pg_namespace WHERE nspname = $1"
    if schema and await conn.fetchval(exists, schema) is None:
        # Checked first: CREATE SCHEMA needs a privilege even when the schema exists.
        # The name was validated by split_url, so it is safe to quote into the statement.
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            version TEXT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"""
    )
    done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    applied: list[str] = []
    for version, sql in migrations():
        if version in done:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        applied.append(version)
    return applied


def _meter_order(meter: str) -> tuple[int, str]:
    """Lock order of counters and reservations: METERS first, then any other name."""
    return (METERS.index(meter) if meter in METERS else len(METERS), meter)


def _sorted_deltas(deltas: Mapping[str, int]) -> tuple[list[str], list[int]]:
    meters = sorted(deltas, key=_meter_order)
    return meters, [deltas[meter] for meter in meters]


def _period(start: datetime | None, end: datetime | None) -> Period | None:
    if start is None or end is None:
        return None
    return Period(start, end)


def _org_from_rows(rows: Iterable[Any]) -> OrgRecord | None:
    rows = list(rows)
    if not rows:
        return None
    first = rows[0]
    limits = Limits(
        **{row["limit_name"]: row["value"] for row in rows if row["limit_name"] is not None}
    )
    prices = Prices(
        first["price_requests"],
        first["price_bytes"],
        first["price_items"],
        first["block_over_balance"],
    )
    return OrgRecord(
        id=first["id"],
        name=first["name"],
        limits=limits,
        upstream=first["upstream"],
        suspended=first["suspended"],
        suspension_reason=first["suspension_reason"],
        payment_status=cast(PaymentStatus, first["payment_status"]),
        shadow=first["shadow"],
        created_at=first["created_at"],
        prices=prices,
        billing_customers=json.loads(first["customers"]) if first["customers"] else {},
        billing_suspended=first["billing_suspended"],
        period=_period(first["period_start"], first["period_end"]),
        balance_minor=first["balance_minor"],
    )


def _state_from_row(row: Any) -> BillingState:
    """A state from _LOCK_STATE or _SELECT_STATE; an org without billing rows has defaults."""
    default = BillingState()
    billed = row["payment_status"] is not None
    return BillingState(
        payment_status=row["payment_status"] if billed else default.payment_status,
        plan=row["plan"] if row["plan"] is not None else default.plan,
        period=_period(row["period_start"], row["period_end"]),
        subscription_id=row["subscription_id"],
        never_paid=row["never_paid"] if billed else default.never_paid,
        cancel_at_period_end=row["cancel_at_period_end"] if billed else False,
        status_at=row["status_at"],
        subscription_at=row["subscription_at"],
        refunded=json.loads(row["refunded"]) if row["refunded"] else {},
        overdue_since=row["overdue_since"],
        overdue_invoice_id=row["invoice_id"],
        suspended_at=row["suspended_at"],
        suspension_reason=row["reason"],
        paid_invoice_id=row["paid_invoice_id"],
        paid_at=row["paid_at"],
    )


async def _audit(
    conn: Any,
    org_id: str,
    rows: Sequence[AuditRow],
    reasons: Sequence[str | None],
    actor: str,
    at: datetime,
) -> None:
    """One audit row per ``rows`` entry, with the reason of the same index."""
    if not rows:
        return
    await conn.execute(
        _INSERT_AUDIT,
        utc(at),
        org_id,
        actor,
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[2] for row in rows],
        list(reasons),
    )


async def _lock_state(conn: Any, org_id: str) -> BillingState | None:
    await conn.execute(_ENSURE_STATE, org_id)
    row = await conn.fetchrow(_LOCK_STATE, org_id)
    return None if row is None else _state_from_row(row)


async def _write_change(
    conn: Any, org_id: str, change: BillingChange, actor: str, now: datetime
) -> BillingChange:
    """Persist a decided change; the caller holds the org's billing_state row lock."""
    claimed = False
    if change.new_period is not None:
        start = utc(change.new_period.start)
        claimed = await conn.fetchval(_CLAIM_BILLING_PERIOD, org_id, start) is not None
    applied = applied_change(change, claimed, org_id)
    state = applied.state
    period = state.period
    await conn.execute(
        _WRITE_STATE,
        org_id,
        state.payment_status,
        state.plan,
        period.start if period else None,
        period.end if period else None,
        state.subscription_id,
        state.never_paid,
        state.cancel_at_period_end,
        state.status_at,
        state.subscription_at,
        json.dumps(dict(state.refunded), sort_keys=True),
        state.paid_invoice_id,
        state.paid_at,
    )
    if has_suspension_row(state):
        await conn.execute(
            _WRITE_SUSPENSION,
            org_id,
            state.overdue_since,
            state.suspended_at,
            state.suspension_reason,
            state.overdue_invoice_id,
        )
    else:
        await conn.execute("DELETE FROM billing_suspensions WHERE org_id = $1", org_id)
    entries = [*applied.credits, *applied.period_grants]
    if entries:
        await conn.execute(
            _ADD_CREDITS,
            org_id,
            [entry.amount_minor for entry in entries],
            [entry.source for entry in entries],
            [entry.idempotency_key for entry in entries],
            utc(now),
        )
    await _write_audit(conn, org_id, applied, actor, now)
    return applied


async def _write_audit(
    conn: Any, org_id: str, change: BillingChange, actor: str, now: datetime
) -> None:
    rows = [(entry.field, entry.old, entry.new) for entry in change.audit]
    await _audit(conn, org_id, rows, [entry.reason for entry in change.audit], actor, now)


async def _checked(conn: Any, org_id: str, decide: Decide, why: str) -> BillingChange | None:
    """``decide`` on the org's locked state, refused if its ledger entries leave the integer
    range; None for an unknown org."""
    state = await _lock_state(conn, org_id)
    if state is None:
        return None
    change = decide(state)
    if change.refused is not None or not (change.credits or change.period_grants):
        return change
    balance = await conn.fetchval(
        "SELECT balance_minor FROM billing_state WHERE org_id = $1", org_id
    )
    return ledger_refusal(state, change, int(balance or 0), why) or change


async def _apply_to_org(
    conn: Any,
    org_id: str,
    event: BillingEvent,
    decide: Decide,
    now: datetime,
    redelivery: bool = False,
) -> WebhookOutcome:
    """Decide on the org's locked state and write the change; the event's row is claimed.
    A redelivery that is refused leaves the row as it was (its first delivery applied)."""
    key = (event.provider, event.event_id)
    actor = f"webhook:{event.provider}"
    change = await _checked(conn, org_id, decide, f"{event.provider} {event.event_id}")
    assert change is not None  # billing_customers references orgs
    if change.refused is not None:
        await _write_audit(conn, org_id, change, actor, now)
        if not redelivery:
            await conn.execute(_FINISH_EVENT, *key, org_id, "refused", change.refused, None)
        return WebhookOutcome("refused", org_id, change)
    applied = await _write_change(conn, org_id, change, actor, now)
    await conn.execute(_FINISH_EVENT, *key, org_id, "applied", event_reason(applied), None)
    return WebhookOutcome("applied", org_id, applied)


async def _write_limits(conn: Any, org_id: str, limits: Limits) -> None:
    await conn.execute("DELETE FROM org_limits WHERE org_id = $1", org_id)
    values = limits.as_dict()
    await conn.execute(
        """INSERT INTO org_limits (org_id, name, value)
        SELECT $1, l.name, l.value FROM unnest($2::text[], $3::bigint[]) AS l (name, value)""",
        org_id,
        list(values),
        list(values.values()),
    )


async def _drive(conn: Any, step: Step[T]) -> T:
    """Run a shared step's statements on ``conn``, in the caller's transaction."""
    result: Any = None
    while True:
        try:
            query = step.send(result)
        except StopIteration as done:
            return cast(T, done.value)
        statement = numbered(query.sql)
        if query.want == "count":
            # A status such as "INSERT 0 1" or "DELETE 3": the count comes last.
            result = int((await conn.execute(statement, *query.args)).split()[-1])
        elif query.want == "rows":
            result = await conn.fetch(statement, *query.args)
        else:
            result = await conn.fetchval(statement, *query.args)


class PostgresStore(SQLSteps):
    def __init__(self, url: str) -> None:
        self._url = url
        self._dsn, self.schema = split_url(url)
        self._pool: Any = None
        self._next_prune = 0.0  # time.monotonic() of the next prune of applied_batches

    def __repr__(self) -> str:
        # The URL may hold a password.
        return f"PostgresStore(schema={self.schema!r})"

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StoreError("PostgreSQL store is not open")
        try:
            async with pool.acquire(timeout=COMMAND_TIMEOUT) as conn:
                yield conn
        except _ERRORS as exc:
            raise _store_error(exc, doing) from exc

    @asynccontextmanager
    async def _transaction(self, doing: str) -> AsyncIterator[Any]:
        async with self._connection(doing) as conn, conn.transaction():
            yield conn

    async def _read_step(self, doing: str, step: Step[T]) -> T:
        async with self._connection(doing) as conn:
            return await _drive(conn, step)

    async def _write_step(self, doing: str, step: Step[T]) -> T:
        async with self._transaction(doing) as conn:
            return await _drive(conn, step)

    async def open(self) -> None:
        if self._pool is not None:
            return
        await migrate(self._url)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=10,
                timeout=COMMAND_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings=_server_settings(self.schema),
            )
        except (*_ERRORS, ValueError) as exc:
            raise _store_error(exc, "connect") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await pool.close()
        except _ERRORS as exc:
            raise _store_error(exc, "close") from exc

    async def ping(self) -> None:
        async with self._connection("ping") as conn:
            await conn.fetchval("SELECT 1")

    # data plane

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None:
        async with self._connection("routing") as conn:
            org = _org_from_rows(await conn.fetch(_SELECT_ROUTING, key_hash))
        return org.routing() if org else None

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        meters = [meter for meter in METERS if meter in request.needs]
        if not meters:
            return Granted({})
        policy = request.policy
        async with self._connection("reserve") as conn:
            rows = await conn.fetch(
                _RESERVE,
                request.holder,
                request.org_id,
                request.period_start,
                meters,
                [request.needs[meter] for meter in meters],
                [policy.max_chunk(meter) for meter in meters],
                policy.strict,
                policy.replicas,
                request.now,
                request.ttl,
                # The credit meter's limit is the balance, from the caller's routing.
                request.limits.credit,
            )
        for row in rows:
            if row["granted"] is None:
                # Refusals are rare and cached by the caller: one more read says what is used.
                async with self._connection("reserve") as conn:
                    used = await conn.fetchval(
                        _USED_OF, request.org_id, request.period_start, row["meter_name"]
                    )
                return Exhausted(row["meter_name"], row["meter_limit"], row["taken"], used or 0)
        return Granted({row["meter_name"]: row["granted"] for row in rows})

    async def commit(self, batch: UsageBatch) -> bool:
        key = (batch.org_id, batch.period_start)
        async with self._transaction("commit") as conn:
            if await conn.fetchval(_CLAIM_BATCH, batch.batch_id, *key) is None:
                return False
            if batch.used:
                await conn.execute(_ADD_USED, *key, *_sorted_deltas(batch.used))
            if batch.reserved:
                await conn.execute(
                    _ADD_RESERVED, batch.holder, *key, *_sorted_deltas(batch.reserved)
                )
        return True

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        async with self._connection("heartbeat") as conn:
            await conn.execute(_HEARTBEAT, holder, _METERS, now, ttl)
        if time.monotonic() >= self._next_prune:
            await self._prune_batches()

    async def live_holders(self, holder: str, now: float, ttl: float) -> int:
        name = HOLDER_LEASE + holder
        async with self._connection("live holders") as conn:
            live = await conn.fetchval(_LIVE_HOLDERS, holder, name, HOLDER_LEASE + "%", now, ttl)
        return int(live)

    async def _prune_batches(self) -> None:
        """Forget applied batches older than the retention, a bounded number at a time."""
        try:
            async with self._connection("prune batches") as conn:
                status = await conn.execute(_PRUNE_BATCHES, BATCH_RETENTION_SECONDS, PRUNE_LIMIT)
            deleted = int(status.split()[-1])
        except StoreError as exc:
            log.warning("could not prune applied batches: %s", exc)
            deleted = 0
        # A prune cut short at the limit goes on at the next heartbeat.
        pause = 0.0 if deleted >= PRUNE_LIMIT else PRUNE_INTERVAL_SECONDS
        self._next_prune = time.monotonic() + pause

    async def release(self, holder: str) -> None:
        async with self._connection("release") as conn:
            await conn.execute(_RELEASE, holder, _METERS)

    async def live_reservations(
        self, org_id: str, period_start: str, now: float
    ) -> list[ReservationRow]:
        async with self._connection("live reservations") as conn:
            rows = await conn.fetch(_LIVE_RESERVATIONS, org_id, period_start, now, _METERS)
        return [ReservationRow(*row) for row in rows]

    async def quota_snapshot(self, org_id: str, period_start: str, now: float) -> QuotaSnapshot:
        # REPEATABLE READ: the three reads see one snapshot, so a batch is either in
        # both used and batch_ids or in neither.
        async with (
            self._connection("quota snapshot") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            used = await conn.fetch(_USAGE, org_id, period_start)
            rows = await conn.fetch(_LIVE_RESERVATIONS, org_id, period_start, now, _METERS)
            batches = await conn.fetch(_BATCH_IDS, org_id, period_start)
        counted = {row["meter"]: row["used"] for row in used}
        return QuotaSnapshot(
            used={meter: counted[meter] for meter in METERS if meter in counted},
            reservations=[ReservationRow(*row) for row in rows],
            batch_ids=[row["batch_id"] for row in batches],
        )

    async def add_reservation(
        self,
        holder: str,
        org_id: str,
        period_start: str,
        amounts: Mapping[str, int],
        now: float,
        ttl: float,
    ) -> None:
        if not amounts:
            return
        meters, values = _sorted_deltas(amounts)
        async with self._connection("add reservation") as conn:
            await conn.execute(
                _ADD_RESERVATION, holder, org_id, period_start, meters, values, now, ttl
            )

    # control plane

    async def create_org(
        self, name: str, limits: Limits, upstream: str | None, shadow: bool = False
    ) -> OrgRecord:
        org = OrgRecord(
            id=new_id("org"),
            name=name,
            limits=replace(limits, credit=None),
            upstream=upstream,
            suspended=False,
            suspension_reason=None,
            payment_status="ok",
            shadow=shadow,
            created_at=datetime.now(UTC),
        )
        async with self._transaction("create org") as conn:
            await conn.execute(
                """INSERT INTO orgs (id, name, upstream, shadow, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $5)""",
                org.id,
                name,
                upstream,
                shadow,
                org.created_at,
            )
            await _write_limits(conn, org.id, limits)
        return org

    async def update_org(
        self,
        org_id: str,
        changes: OrgChanges,
        *,
        actor: str = "admin",
        reason: str | None = None,
    ) -> OrgRecord | None:
        async with self._transaction("update org") as conn:
            if await conn.fetchval(_LOCK_ORG, org_id) is None:
                return None
            current = _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))
            assert current is not None
            await conn.execute(
                _UPDATE_ORG,
                org_id,
                changes.name,
                changes.set_upstream,
                changes.upstream,
                changes.shadow,
            )
            if changes.limits is not None:
                await _write_limits(conn, org_id, changes.limits)
            if changes.prices is not None:
                prices = changes.prices
                await conn.execute(
                    _WRITE_PRICES,
                    org_id,
                    prices.requests,
                    prices.bytes,
                    prices.items,
                    prices.block_over_balance,
                )
            rows = org_audit(current, changes)
            await _audit(conn, org_id, rows, [reason] * len(rows), actor, datetime.now(UTC))
            return _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))

    async def get_org(self, org_id: str) -> OrgRecord | None:
        async with self._connection("get org") as conn:
            return _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))

    async def create_key(
        self, org_id: str, key_hash: bytes, *, actor: str = "admin", reason: str | None = None
    ) -> KeyRecord | None:
        record = KeyRecord(id=new_id("key"), org_id=org_id, created_at=datetime.now(UTC))
        async with self._transaction("create key") as conn:
            created = await conn.fetchval(
                _CREATE_KEY, record.id, org_id, key_hash, record.created_at
            )
            if created is None:
                return None
            rows: list[AuditRow] = [("key", None, record.id)]
            await _audit(conn, org_id, rows, [reason], actor, record.created_at)
        return record

    async def revoke_key(
        self, key_id: str, *, actor: str = "admin", reason: str | None = None
    ) -> str | None:
        async with self._transaction("revoke key") as conn:
            org_id = await conn.fetchval(
                """UPDATE ingest_keys SET revoked_at = now()
                WHERE id = $1 AND revoked_at IS NULL RETURNING org_id""",
                key_id,
            )
            if org_id is None:
                return None
            rows: list[AuditRow] = [("key", key_id, None)]
            await _audit(conn, org_id, rows, [reason], actor, datetime.now(UTC))
        return str(org_id)

    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None, *, actor: str = "admin"
    ) -> OrgRecord | None:
        async with self._transaction("set suspension") as conn:
            if await conn.fetchval(_LOCK_ORG, org_id) is None:
                return None
            current = _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))
            assert current is not None
            await conn.execute(
                """UPDATE orgs SET suspended = $2, suspension_reason = $3, updated_at = now()
                WHERE id = $1""",
                org_id,
                suspended,
                reason if suspended else None,
            )
            rows = suspension_audit(current, suspended, reason)
            await _audit(conn, org_id, rows, [reason] * len(rows), actor, datetime.now(UTC))
            return _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))

    async def set_billing_customers(
        self, org_id: str, customers: Mapping[str, str], *, actor: str = "admin"
    ) -> OrgRecord | None:
        async with self._transaction("set billing customers") as conn:
            if await conn.fetchval(_LOCK_ORG, org_id) is None:
                return None
            current = _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))
            assert current is not None
            # Taken in one order, so that two links never wait for each other.
            for provider, customer in sorted(customers.items()):
                if current.billing_customers.get(provider) != customer:
                    await conn.execute(_LOCK_CUSTOMER, CUSTOMER_LOCK, provider, customer)
            rows: list[AuditRow] = []
            for provider, customer in customers.items():
                old = current.billing_customers.get(provider)
                if old == customer:
                    continue
                await conn.execute(
                    "DELETE FROM billing_customers WHERE org_id = $1 AND provider = $2",
                    org_id,
                    provider,
                )
                # The org row lock keeps its own rows still: a conflict is another org's.
                inserted = await conn.fetchval(
                    """INSERT INTO billing_customers (provider, customer_id, org_id)
                    VALUES ($1, $2, $3)
                    ON CONFLICT (provider, customer_id) DO NOTHING RETURNING org_id""",
                    provider,
                    customer,
                    org_id,
                )
                if inserted is None:
                    raise CustomerTaken(provider, customer)
                rows.append((f"billing_customers.{provider}", old, customer))
            await _audit(conn, org_id, rows, [None] * len(rows), actor, datetime.now(UTC))
            return _org_from_rows(await conn.fetch(_SELECT_ORG, org_id))

    # billing

    async def billing_state(self, org_id: str) -> BillingState | None:
        async with self._connection("billing state") as conn:
            row = await conn.fetchrow(_SELECT_STATE, org_id)
        return None if row is None else _state_from_row(row)

    async def apply_billing_event(
        self,
        event: BillingEvent,
        decide: Decide,
        now: datetime,
        redelivered: Decide | None = None,
    ) -> WebhookOutcome:
        key = (event.provider, event.event_id)
        claim = (*key, utc(now), event.type, event.customer_id, utc(event.occurred_at))
        async with self._transaction("apply billing event") as conn:
            if await conn.fetchval(_CLAIM_EVENT, *claim) is None:
                if redelivered is not None:
                    org_id = await conn.fetchval(_TAKE_PLAN_REFUSED, *key, PLAN_REFUSED)
                    if org_id is not None:
                        return await _apply_to_org(
                            conn, org_id, event, redelivered, now, redelivery=True
                        )
                return WebhookOutcome("duplicate", None, None)
            if event.customer_id is None:
                await conn.execute(_FINISH_EVENT, *key, None, "unknown_customer", None, None)
                return WebhookOutcome("unknown_customer", None, None)
            customer = (event.provider, event.customer_id)
            org_id = await conn.fetchval(_CUSTOMER_ORG, *customer)
            if org_id is None:
                # Read again under the customer's lock: a link committing meanwhile is seen.
                await conn.execute(_LOCK_CUSTOMER, CUSTOMER_LOCK, *customer)
                org_id = await conn.fetchval(_CUSTOMER_ORG, *customer)
            if org_id is None:
                kept = event_json(event)
                await conn.execute(_FINISH_EVENT, *key, None, "unlinked", None, kept)
                return WebhookOutcome("unlinked", None, None)
            return await _apply_to_org(conn, org_id, event, decide, now)

    async def apply_unlinked_events(
        self, provider: str, customer_id: str, decide: DecideEvent, now: datetime
    ) -> list[WebhookOutcome]:
        async with self._connection("unlinked events") as conn:
            if await conn.fetchval(_CUSTOMER_ORG, provider, customer_id) is None:
                return []
            rows = await conn.fetch(_UNLINKED_EVENTS, provider, customer_id)
        outcomes: list[WebhookOutcome] = []
        for row in rows:
            async with self._transaction("apply unlinked event") as conn:
                kept = await conn.fetchval(_TAKE_UNLINKED, provider, row["event_id"])
                if kept is None:
                    continue
                event = event_from_json(kept)
                org_id = await conn.fetchval(_CUSTOMER_ORG, provider, customer_id)
                if org_id is None:
                    continue
                outcomes.append(await _apply_to_org(conn, org_id, event, decide(event), now))
        return outcomes

    async def update_billing(
        self, org_id: str, decide: Decide, *, actor: str, now: datetime
    ) -> BillingChange | None:
        async with self._transaction("update billing") as conn:
            change = await _checked(conn, org_id, decide, actor)
            if change is None:
                return None
            if change.refused is not None:
                await _write_audit(conn, org_id, change, actor, now)
                return change
            return await _write_change(conn, org_id, change, actor, now)

    async def webhook_events(self, limit: int = 100) -> list[dict[str, object]]:
        async with self._connection("webhook events") as conn:
            rows = await conn.fetch(
                """SELECT provider, event_id, type, org_id, status, reason, received_at
                FROM webhook_events ORDER BY received_at DESC, seq DESC LIMIT $1""",
                max(0, limit),
            )
        return [{**dict(row), "received_at": iso(row["received_at"])} for row in rows]

    async def audit_log(
        self, org_id: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        async with self._connection("audit log") as conn:
            rows = await conn.fetch(
                """SELECT at, entity, entity_id, field, old_value AS old, new_value AS new,
                    reason, actor
                FROM audit_log
                WHERE $1::text IS NULL OR (entity = 'org' AND entity_id = $1)
                ORDER BY at DESC, id DESC LIMIT $2""",
                org_id,
                max(0, limit),
            )
        return [{**dict(row), "at": iso(row["at"])} for row in rows]

    # one-leader work and usage export
