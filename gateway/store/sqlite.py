"""The embedded store: SQLite through the stdlib ``sqlite3`` module.

Accuracy and durability: exact (each step one ``BEGIN IMMEDIATE`` transaction); durable on
one machine: WAL with ``synchronous=NORMAL`` loses nothing when the process dies, and may lose
the last commits on a power loss (usage is fsynced to the spool before it is committed here).
One node: every replica shares one file, so they must share one host.

All SQLite work runs on one worker thread that owns the only connection, so the
event loop never blocks and statements are serialized within the process. Every
mutating method is one ``BEGIN IMMEDIATE`` transaction: it takes the database's
write lock before reading, so it is atomic even with several processes on one file
(WAL lets readers go on meanwhile; ``busy_timeout`` makes writers queue).
The schema is the versioned SQL files in ``migrations/sqlite/`` (version in
``schema_version``), applied on open in the same transaction.
Semantics mirror ``MemoryStore`` exactly; ``sqlite3.Error`` becomes ``StoreError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

from gateway.errors import StoreError
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
from gateway.store.sql import SQLSteps, Step
from policies.billing import BillingChange, BillingEvent, BillingState
from policies.model import METERS, Limits, OrgRouting, PaymentStatus, Period, Prices

T = TypeVar("T")

log = logging.getLogger("gateway.store.sqlite")


def _statements(sql: str) -> tuple[str, ...]:
    """The statements of a migration file; comments are whole lines of their own."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return tuple(part.strip() for part in text.split(";") if part.strip())


def _migration_files() -> dict[int, tuple[str, ...]]:
    """Version -> statements of ``migrations/sqlite/NNNN_name.sql``, shipped as package data."""
    folder = resources.files("gateway.store").joinpath("migrations").joinpath("sqlite")
    return {
        int(entry.name.split("_", 1)[0]): _statements(entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    }


_FILES = _migration_files()
# Version 1 runs on every open (IF NOT EXISTS); each later file brings N - 1 to N.
_SCHEMA: tuple[str, ...] = _FILES[1]
_MIGRATIONS: dict[int, tuple[str, ...]] = {v: sql for v, sql in _FILES.items() if v > 1}
SCHEMA_VERSION = max(_FILES)

# One statement reads an org with its limits (one row per limit, or one row of NULLs),
# prices, billing state and balance; columns by position in _org_from_rows.
_SELECT_ORG = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        COALESCE(b.payment_status, 'ok'), o.shadow, o.created_at, l.name, l.value,
        p.requests, p.bytes, p.items, COALESCE(p.block_over_balance, 0),
        s.suspended_at IS NOT NULL, b.period_start, b.period_end,
        COALESCE(b.balance_minor, 0),
        (SELECT json_group_object(c.provider, c.customer_id)
            FROM billing_customers c WHERE c.org_id = o.id)
    FROM orgs o
    LEFT JOIN org_limits l ON l.org_id = o.id
    LEFT JOIN org_prices p ON p.org_id = o.id
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE o.id = ?"""
# The same columns by key; the routing needs no customers.
_SELECT_ROUTING = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        COALESCE(b.payment_status, 'ok'), o.shadow, o.created_at, l.name, l.value,
        p.requests, p.bytes, p.items, COALESCE(p.block_over_balance, 0),
        s.suspended_at IS NOT NULL, b.period_start, b.period_end,
        COALESCE(b.balance_minor, 0), NULL
    FROM ingest_keys k JOIN orgs o ON o.id = k.org_id
    LEFT JOIN org_limits l ON l.org_id = o.id
    LEFT JOIN org_prices p ON p.org_id = o.id
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE k.key_hash = ? AND k.revoked_at IS NULL"""

_SELECT_STATE = """SELECT o.id, b.payment_status, b.plan, b.period_start, b.period_end,
        b.subscription_id, b.never_paid, b.cancel_at_period_end, b.status_at,
        b.subscription_at, b.refunded, s.overdue_since, s.invoice_id, s.suspended_at, s.reason,
        b.paid_invoice_id, b.paid_at
    FROM orgs o
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE o.id = ?"""

# balance_minor is left alone: only ledger inserts move it.
_WRITE_STATE = """INSERT INTO billing_state (org_id, payment_status, plan, period_start,
        period_end, subscription_id, never_paid, cancel_at_period_end, status_at,
        subscription_at, refunded, paid_invoice_id, paid_at, updated_at)
    VALUES (:org, :payment_status, :plan, :period_start, :period_end, :subscription_id,
        :never_paid, :cancel_at_period_end, :status_at, :subscription_at, :refunded,
        :paid_invoice_id, :paid_at, :now)
    ON CONFLICT (org_id) DO UPDATE SET
        payment_status = excluded.payment_status, plan = excluded.plan,
        period_start = excluded.period_start, period_end = excluded.period_end,
        subscription_id = excluded.subscription_id, never_paid = excluded.never_paid,
        cancel_at_period_end = excluded.cancel_at_period_end, status_at = excluded.status_at,
        subscription_at = excluded.subscription_at, refunded = excluded.refunded,
        paid_invoice_id = excluded.paid_invoice_id, paid_at = excluded.paid_at,
        updated_at = excluded.updated_at"""

_WRITE_SUSPENSION = """INSERT INTO billing_suspensions
        (org_id, overdue_since, suspended_at, reason, invoice_id)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (org_id) DO UPDATE SET overdue_since = excluded.overdue_since,
        suspended_at = excluded.suspended_at, reason = excluded.reason,
        invoice_id = excluded.invoice_id"""

_ADD_CREDIT = """INSERT INTO credit_ledger
        (org_id, amount_minor, source, idempotency_key, created_at)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (idempotency_key) DO NOTHING"""

_CLAIM_EVENT = """INSERT INTO webhook_events
        (provider, event_id, received_at, type, customer_id, occurred_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (provider, event_id) DO NOTHING"""

_UNLINKED_EVENTS = """SELECT event_id FROM webhook_events
    WHERE provider = ? AND customer_id = ? AND status = 'unlinked'
    ORDER BY occurred_at, rowid"""

_INSERT_AUDIT = """INSERT INTO audit_log
        (at, entity, entity_id, field, old_value, new_value, reason, actor)
    VALUES (?, 'org', ?, ?, ?, ?, ?, ?)"""

_WRITE_PRICES = """INSERT INTO org_prices (org_id, requests, bytes, items, block_over_balance)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (org_id) DO UPDATE SET requests = excluded.requests,
        bytes = excluded.bytes, items = excluded.items,
        block_over_balance = excluded.block_over_balance"""

# used + the live reservations of every holder, for one counter.
_SELECT_TAKEN = """SELECT
    (SELECT used FROM usage_counters
        WHERE org_id = :org AND period_start = :period AND meter = :meter),
    (SELECT SUM(amount) FROM quota_reservations
        WHERE org_id = :org AND period_start = :period AND meter = :meter
        AND expires_at > :now)"""

# An expired row of the holder is replaced, a live one grows; either way the expiry restarts.
_UPSERT_RESERVATION = """INSERT INTO quota_reservations
        (holder, org_id, period_start, meter, amount, expires_at)
    VALUES (:holder, :org, :period, :meter, :amount, :expires_at)
    ON CONFLICT (holder, org_id, period_start, meter) DO UPDATE SET
        amount = CASE WHEN quota_reservations.expires_at > :now
            THEN quota_reservations.amount + excluded.amount
            ELSE excluded.amount END,
        expires_at = excluded.expires_at"""

_ADD_USED = """INSERT INTO usage_counters (org_id, period_start, meter, used)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (org_id, period_start, meter) DO UPDATE SET used = used + excluded.used"""

_ADD_RESERVED = """UPDATE quota_reservations SET amount = MAX(0, amount + ?)
    WHERE holder = ? AND org_id = ? AND period_start = ? AND meter = ?"""

_CLAIM_BATCH = """INSERT OR IGNORE INTO applied_batches
        (batch_id, applied_at, org_id, period_start)
    VALUES (?, ?, ?, ?)"""

_LIVE_RESERVATIONS = """SELECT holder, meter, amount, expires_at FROM quota_reservations
    WHERE org_id = ? AND period_start = ? AND expires_at > ? AND amount > 0
    ORDER BY holder, meter"""

_PRUNE_BATCHES = """DELETE FROM applied_batches WHERE rowid IN (
    SELECT rowid FROM applied_batches WHERE applied_at < ? LIMIT ?)"""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)


def _period(start: str | None, end: str | None) -> Period | None:
    if start is None or end is None:
        return None
    return Period(datetime.fromisoformat(start), datetime.fromisoformat(end))


def _org_from_rows(rows: Sequence[Any]) -> OrgRecord | None:
    if not rows:
        return None
    first = rows[0]
    limits = Limits(**{row[8]: row[9] for row in rows if row[8] is not None})
    return OrgRecord(
        id=first[0],
        name=first[1],
        limits=limits,
        upstream=first[2],
        suspended=bool(first[3]),
        suspension_reason=first[4],
        payment_status=cast(PaymentStatus, first[5]),
        shadow=bool(first[6]),
        created_at=datetime.fromisoformat(first[7]),
        prices=Prices(first[10], first[11], first[12], bool(first[13])),
        billing_customers=json.loads(first[18]) if first[18] else {},
        billing_suspended=bool(first[14]),
        period=_period(first[15], first[16]),
        balance_minor=first[17],
    )


def _write_prices(conn: sqlite3.Connection, org_id: str, prices: Prices) -> None:
    conn.execute(
        _WRITE_PRICES,
        (org_id, prices.requests, prices.bytes, prices.items, int(prices.block_over_balance)),
    )


def _audit(
    conn: sqlite3.Connection,
    org_id: str,
    rows: Sequence[AuditRow],
    reason: str | None,
    actor: str,
    at: datetime,
) -> None:
    stamp = iso(at)
    conn.executemany(
        _INSERT_AUDIT,
        [(stamp, org_id, name, old, new, reason, actor) for name, old, new in rows],
    )


def _select_state(conn: sqlite3.Connection, org_id: str) -> BillingState | None:
    row = conn.execute(_SELECT_STATE, (org_id,)).fetchone()
    if row is None:
        return None
    default = BillingState()
    billed = row[1] is not None
    return BillingState(
        payment_status=cast(PaymentStatus, row[1]) if billed else default.payment_status,
        plan=row[2] if row[2] is not None else default.plan,
        period=_period(row[3], row[4]),
        subscription_id=row[5],
        never_paid=bool(row[6]) if billed else default.never_paid,
        cancel_at_period_end=bool(row[7]) if billed else default.cancel_at_period_end,
        status_at=_at(row[8]),
        subscription_at=_at(row[9]),
        refunded=json.loads(row[10]) if row[10] else {},
        overdue_since=_at(row[11]),
        overdue_invoice_id=row[12],
        suspended_at=_at(row[13]),
        suspension_reason=row[14],
        paid_invoice_id=row[15],
        paid_at=_at(row[16]),
    )


def _write_change(
    conn: sqlite3.Connection, org_id: str, change: BillingChange, actor: str, now: datetime
) -> BillingChange:
    """Persist a decided change; the caller holds the write lock (BEGIN IMMEDIATE)."""
    claimed = False
    if change.new_period is not None:
        claimed = (
            conn.execute(
                "INSERT INTO billing_period_claims (org_id, period_start) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                (org_id, iso(change.new_period.start)),
            ).rowcount
            == 1
        )
    applied = applied_change(change, claimed, org_id)
    state = applied.state
    period = state.period
    conn.execute(
        _WRITE_STATE,
        {
            "org": org_id,
            "payment_status": state.payment_status,
            "plan": state.plan,
            "period_start": _stamp(period.start) if period else None,
            "period_end": _stamp(period.end) if period else None,
            "subscription_id": state.subscription_id,
            "never_paid": int(state.never_paid),
            "cancel_at_period_end": int(state.cancel_at_period_end),
            "status_at": _stamp(state.status_at),
            "subscription_at": _stamp(state.subscription_at),
            "refunded": json.dumps(dict(state.refunded), sort_keys=True),
            "paid_invoice_id": state.paid_invoice_id,
            "paid_at": _stamp(state.paid_at),
            "now": iso(now),
        },
    )
    if has_suspension_row(state):
        conn.execute(
            _WRITE_SUSPENSION,
            (
                org_id,
                _stamp(state.overdue_since),
                _stamp(state.suspended_at),
                state.suspension_reason,
                state.overdue_invoice_id,
            ),
        )
    else:
        conn.execute("DELETE FROM billing_suspensions WHERE org_id = ?", (org_id,))
    added = 0
    for entry in (*applied.credits, *applied.period_grants):
        row = (org_id, entry.amount_minor, entry.source, entry.idempotency_key, iso(now))
        if conn.execute(_ADD_CREDIT, row).rowcount == 1:
            added += entry.amount_minor
    if added:
        conn.execute(
            "UPDATE billing_state SET balance_minor = balance_minor + ? WHERE org_id = ?",
            (added, org_id),
        )
    _write_audit(conn, org_id, applied, actor, now)
    return applied


def _write_audit(
    conn: sqlite3.Connection, org_id: str, change: BillingChange, actor: str, now: datetime
) -> None:
    for audit in change.audit:
        _audit(conn, org_id, [(audit.field, audit.old, audit.new)], audit.reason, actor, now)


def _checked(
    conn: sqlite3.Connection, org_id: str, decide: Decide, why: str
) -> BillingChange | None:
    """``decide`` on the org's state, refused if its ledger entries leave the integer range;
    None for an unknown org."""
    state = _select_state(conn, org_id)
    if state is None:
        return None
    change = decide(state)
    if change.refused is not None or not (change.credits or change.period_grants):
        return change
    row = conn.execute(
        "SELECT balance_minor FROM billing_state WHERE org_id = ?", (org_id,)
    ).fetchone()
    return ledger_refusal(state, change, int(row[0]) if row else 0, why) or change


def _finish_event(
    conn: sqlite3.Connection,
    event: BillingEvent,
    org_id: str | None,
    status: str,
    reason: str | None,
    kept: str | None = None,
) -> None:
    conn.execute(
        "UPDATE webhook_events SET org_id = ?, status = ?, reason = ?, event = ?"
        " WHERE provider = ? AND event_id = ?",
        (org_id, status, reason, kept, event.provider, event.event_id),
    )


def _apply_event(
    conn: sqlite3.Connection,
    event: BillingEvent,
    decide: Decide,
    now: datetime,
    redelivered: Decide | None = None,
) -> WebhookOutcome:
    claim = (
        event.provider,
        event.event_id,
        iso(now),
        event.type,
        event.customer_id,
        iso(event.occurred_at),
    )
    if conn.execute(_CLAIM_EVENT, claim).rowcount == 0:
        org_id = _plan_refused_org(conn, event) if redelivered is not None else None
        if redelivered is None or org_id is None:
            return WebhookOutcome("duplicate", None, None)
        return _apply_to_org(conn, org_id, event, redelivered, now, redelivery=True)
    if event.customer_id is None:
        _finish_event(conn, event, None, "unknown_customer", None)
        return WebhookOutcome("unknown_customer", None, None)
    org_id = _customer_org(conn, event.provider, event.customer_id)
    if org_id is None:
        _finish_event(conn, event, None, "unlinked", None, event_json(event))
        return WebhookOutcome("unlinked", None, None)
    return _apply_to_org(conn, org_id, event, decide, now)


def _customer_org(conn: sqlite3.Connection, provider: str, customer_id: str) -> str | None:
    row = conn.execute(
        "SELECT org_id FROM billing_customers WHERE provider = ? AND customer_id = ?",
        (provider, customer_id),
    ).fetchone()
    return None if row is None else str(row[0])


def _plan_refused_org(conn: sqlite3.Connection, event: BillingEvent) -> str | None:
    row = conn.execute(
        "SELECT org_id FROM webhook_events WHERE provider = ? AND event_id = ?"
        " AND status = 'applied' AND reason = ? AND org_id IS NOT NULL",
        (event.provider, event.event_id, PLAN_REFUSED),
    ).fetchone()
    return None if row is None else str(row[0])


def _apply_to_org(
    conn: sqlite3.Connection,
    org_id: str,
    event: BillingEvent,
    decide: Decide,
    now: datetime,
    redelivery: bool = False,
) -> WebhookOutcome:
    """Decide on the org's state and write the change; the event's row is claimed. A
    redelivery that is refused leaves the row as it was (its first delivery applied)."""
    actor = f"webhook:{event.provider}"
    change = _checked(conn, org_id, decide, f"{event.provider} {event.event_id}")
    assert change is not None  # billing_customers references orgs
    if change.refused is not None:
        _write_audit(conn, org_id, change, actor, now)
        if not redelivery:
            _finish_event(conn, event, org_id, "refused", change.refused)
        return WebhookOutcome("refused", org_id, change)
    applied = _write_change(conn, org_id, change, actor, now)
    _finish_event(conn, event, org_id, "applied", event_reason(applied))
    return WebhookOutcome("applied", org_id, applied)


def _apply_unlinked(
    conn: sqlite3.Connection, provider: str, event_id: str, decide: DecideEvent, now: datetime
) -> WebhookOutcome | None:
    """One kept event applied to its customer's org; None when it is no longer unlinked."""
    row = conn.execute(
        "SELECT event FROM webhook_events"
        " WHERE provider = ? AND event_id = ? AND status = 'unlinked'",
        (provider, event_id),
    ).fetchone()
    if row is None:
        return None
    event = event_from_json(row[0])
    assert event.customer_id is not None
    org_id = _customer_org(conn, provider, event.customer_id)
    if org_id is None:
        return None
    return _apply_to_org(conn, org_id, event, decide(event), now)


def _history(rows: Sequence[Any], names: Sequence[str]) -> list[dict[str, object]]:
    return [dict(zip(names, row, strict=True)) for row in rows]


def _select_org(conn: sqlite3.Connection, org_id: str) -> OrgRecord | None:
    return _org_from_rows(conn.execute(_SELECT_ORG, (org_id,)).fetchall())


def _write_limits(conn: sqlite3.Connection, org_id: str, limits: Limits) -> None:
    conn.execute("DELETE FROM org_limits WHERE org_id = ?", (org_id,))
    conn.executemany(
        "INSERT INTO org_limits (org_id, name, value) VALUES (?, ?, ?)",
        [(org_id, name, value) for name, value in limits.as_dict().items()],
    )


def _transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one write transaction, taking the write lock first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back on its own (for example on SQLITE_FULL).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _read(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one read transaction: every statement sees the same snapshot."""
    conn.execute("BEGIN")
    try:
        return work(conn)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _live_reservations(
    conn: sqlite3.Connection, org_id: str, period_start: str, now: float
) -> list[ReservationRow]:
    rows = conn.execute(_LIVE_RESERVATIONS, (org_id, period_start, now)).fetchall()
    return [ReservationRow(*row) for row in rows]


# SQLite has no row locks: BEGIN IMMEDIATE holds the whole database instead.
_ROW_LOCK = re.compile(r"\s+FOR (?:NO KEY )?UPDATE(?: OF \w+)?(?: SKIP LOCKED)?")


@lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    return _ROW_LOCK.sub("", sql)


def _drive(conn: sqlite3.Connection, step: Step[T]) -> T:
    """Run a shared step's statements on ``conn``, in the caller's transaction."""
    result: Any = None
    while True:
        try:
            query = step.send(result)
        except StopIteration as done:
            return cast(T, done.value)
        # fetchall: a cursor left unfinished would hold its statement open.
        found = conn.execute(_dialect(query.sql), query.args)
        if query.want == "count":
            result = found.rowcount
        else:
            every = found.fetchall()
            result = every if query.want == "rows" else (every[0][0] if every else None)


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of SQLite store {path!r}: {exc}") from exc
    # isolation_level=None: the module never opens transactions, we do (BEGIN IMMEDIATE).
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        _enable_wal(conn)
        # WAL + NORMAL: a crash of the process loses nothing; usage is fsynced to the spool
        # before it is committed here, so an fsync per commit would only add latency.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        _transaction(conn, _migrate)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switching to WAL takes the file's lock and does not wait on busy_timeout: workers that
    open a fresh file at once must retry instead of failing."""
    for attempt in range(50):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)


def _migrate(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"SQLite schema version {version} is newer than this gateway supports "
            f"({SCHEMA_VERSION})"
        )
    for step in range((version or 1) + 1, SCHEMA_VERSION + 1):
        for statement in _MIGRATIONS[step]:
            conn.execute(statement)
    if version is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif version < SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


class SQLiteStore(SQLSteps):
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._next_prune = 0.0  # time.monotonic() of the next prune of applied_batches

    def __repr__(self) -> str:
        return f"SQLiteStore(path={self.path!r})"

    async def _call(self, job: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("SQLite store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, job)
        except sqlite3.Error as exc:
            # sqlite3 messages name tables and columns, never bound values such as key hashes.
            raise StoreError(f"SQLite error: {exc}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the worker thread (one statement, so one snapshot)."""
        return await self._call(lambda: work(self._connection()))

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        # ``work`` must not return a cursor: one freed on the loop's thread resets its
        # statement while the worker uses the connection (SQLITE_MISUSE, "API misuse").
        return await self._call(lambda: _transaction(self._connection(), work))

    async def _read_step(self, doing: str, step: Step[T]) -> T:
        return await self._call(lambda: _read(self._connection(), lambda conn: _drive(conn, step)))

    async def _write_step(self, doing: str, step: Step[T]) -> T:
        return await self._write(lambda conn: _drive(conn, step))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("SQLite store is not open")
        return self._conn

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")

        def connect() -> None:
            self._conn = _connect(self.path)

        try:
            await self._call(connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return

        def disconnect() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        try:
            await self._call(disconnect)
        finally:
            self._executor = None
            # The worker is idle now: joining it does not block the loop for long.
            executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # data plane

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None:
        def work(conn: sqlite3.Connection) -> OrgRouting | None:
            org = _org_from_rows(conn.execute(_SELECT_ROUTING, (key_hash,)).fetchall())
            return org.routing() if org else None

        return await self._run(work)

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        def work(conn: sqlite3.Connection) -> ReserveResult:
            limits = dict(
                conn.execute(
                    "SELECT name, value FROM org_limits WHERE org_id = ?", (request.org_id,)
                ).fetchall()
            )
            counter = {"org": request.org_id, "period": request.period_start}
            grants: dict[str, int] = {}
            recorded: list[tuple[str, int]] = []
            for meter in METERS:
                need = request.needs.get(meter)
                if need is None:
                    continue
                # The credit meter's limit is the balance, from the caller's routing.
                limit: int | None = (
                    request.limits.credit if meter == "credit" else limits.get(meter)
                )
                if limit is None:
                    grants[meter] = need
                    continue
                used, reserved = conn.execute(
                    _SELECT_TAKEN, {**counter, "meter": meter, "now": request.now}
                ).fetchone()
                taken = (used or 0) + (reserved or 0)
                remaining = limit - taken
                if remaining < need:
                    return Exhausted(meter, limit, taken, used or 0)
                grants[meter] = request.policy.want(meter, need, remaining)
                recorded.append((meter, grants[meter]))
            conn.executemany(
                _UPSERT_RESERVATION,
                [
                    {
                        **counter,
                        "holder": request.holder,
                        "meter": meter,
                        "amount": amount,
                        "expires_at": request.now + request.ttl,
                        "now": request.now,
                    }
                    for meter, amount in recorded
                ],
            )
            return Granted(grants)

        return await self._write(work)

    async def commit(self, batch: UsageBatch) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            claimed = conn.execute(
                _CLAIM_BATCH, (batch.batch_id, time.time(), batch.org_id, batch.period_start)
            )
            if claimed.rowcount == 0:
                return False
            conn.executemany(
                _ADD_USED,
                [
                    (batch.org_id, batch.period_start, meter, delta)
                    for meter, delta in batch.used.items()
                ],
            )
            conn.executemany(
                _ADD_RESERVED,
                [
                    (delta, batch.holder, batch.org_id, batch.period_start, meter)
                    for meter, delta in batch.reserved.items()
                ],
            )
            return True

        return await self._write(work)

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE quota_reservations SET expires_at = ? WHERE holder = ? AND expires_at > ?",
                (now + ttl, holder, now),
            )

        await self._write(work)
        if time.monotonic() >= self._next_prune:
            await self._prune_batches()

    async def live_holders(self, holder: str, now: float, ttl: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            name, presences = HOLDER_LEASE + holder, HOLDER_LEASE + "%"
            # A presence no longer live is forgotten, so that restarts don't pile up rows.
            conn.execute(
                "DELETE FROM leases WHERE name LIKE ? AND expires_at <= ?", (presences, now)
            )
            (others,) = conn.execute(
                "SELECT count(*) FROM leases WHERE name LIKE ? AND name <> ?", (presences, name)
            ).fetchone()
            conn.execute(
                """INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at""",
                (name, holder, now + ttl),
            )
            return 1 + int(others)

        return await self._write(work)

    async def _prune_batches(self) -> None:
        """Forget applied batches older than the retention, a bounded number at a time."""
        cutoff = time.time() - BATCH_RETENTION_SECONDS
        try:
            deleted = await self._write(
                lambda conn: conn.execute(_PRUNE_BATCHES, (cutoff, PRUNE_LIMIT)).rowcount
            )
        except StoreError as exc:
            log.warning("could not prune applied batches: %s", exc)
            deleted = 0
        # A prune cut short at the limit goes on at the next heartbeat.
        pause = 0.0 if deleted >= PRUNE_LIMIT else PRUNE_INTERVAL_SECONDS
        self._next_prune = time.monotonic() + pause

    async def release(self, holder: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM quota_reservations WHERE holder = ?", (holder,))

        await self._write(work)

    async def live_reservations(
        self, org_id: str, period_start: str, now: float
    ) -> list[ReservationRow]:
        return await self._run(lambda conn: _live_reservations(conn, org_id, period_start, now))

    async def quota_snapshot(self, org_id: str, period_start: str, now: float) -> QuotaSnapshot:
        def work(conn: sqlite3.Connection) -> QuotaSnapshot:
            counter = (org_id, period_start)
            used = dict(
                conn.execute(
                    "SELECT meter, used FROM usage_counters WHERE org_id = ? AND period_start = ?",
                    counter,
                ).fetchall()
            )
            # Only recent batches, as in PostgreSQL: the race they guard lasts seconds.
            batch_ids = conn.execute(
                "SELECT batch_id FROM applied_batches"
                " WHERE org_id = ? AND period_start = ? AND applied_at > ?",
                (*counter, time.time() - 3600),
            ).fetchall()
            return QuotaSnapshot(
                used={meter: used[meter] for meter in METERS if meter in used},
                reservations=_live_reservations(conn, org_id, period_start, now),
                batch_ids=[row[0] for row in batch_ids],
            )

        return await self._call(lambda: _read(self._connection(), work))

    async def add_reservation(
        self,
        holder: str,
        org_id: str,
        period_start: str,
        amounts: Mapping[str, int],
        now: float,
        ttl: float,
    ) -> None:
        rows = [
            {
                "holder": holder,
                "org": org_id,
                "period": period_start,
                "meter": meter,
                "amount": amount,
                "expires_at": now + ttl,
                "now": now,
            }
            for meter, amount in amounts.items()
        ]

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT_RESERVATION, rows)

        await self._write(work)

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

        def work(conn: sqlite3.Connection) -> OrgRecord:
            stamp = org.created_at.isoformat()
            conn.execute(
                """INSERT INTO orgs (id, name, upstream, shadow, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?)""",
                (org.id, name, upstream, int(shadow), stamp, stamp),
            )
            _write_limits(conn, org.id, limits)
            return org

        return await self._write(work)

    async def update_org(
        self,
        org_id: str,
        changes: OrgChanges,
        *,
        actor: str = "admin",
        reason: str | None = None,
    ) -> OrgRecord | None:
        def work(conn: sqlite3.Connection) -> OrgRecord | None:
            current = _select_org(conn, org_id)
            if current is None:
                return None
            conn.execute(
                """UPDATE orgs SET
                    name = COALESCE(:name, name),
                    upstream = CASE WHEN :set_upstream THEN :upstream ELSE upstream END,
                    shadow = COALESCE(:shadow, shadow),
                    updated_at = :now
                WHERE id = :id""",
                {
                    "id": org_id,
                    "name": changes.name,
                    "set_upstream": int(changes.set_upstream),
                    "upstream": changes.upstream,
                    "shadow": None if changes.shadow is None else int(changes.shadow),
                    "now": _now_iso(),
                },
            )
            if changes.limits is not None:
                _write_limits(conn, org_id, changes.limits)
            if changes.prices is not None:
                _write_prices(conn, org_id, changes.prices)
            _audit(conn, org_id, org_audit(current, changes), reason, actor, datetime.now(UTC))
            return _select_org(conn, org_id)

        return await self._write(work)

    async def get_org(self, org_id: str) -> OrgRecord | None:
        return await self._run(lambda conn: _select_org(conn, org_id))

    async def create_key(
        self, org_id: str, key_hash: bytes, *, actor: str = "admin", reason: str | None = None
    ) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            if conn.execute("SELECT 1 FROM orgs WHERE id = ?", (org_id,)).fetchone() is None:
                return None
            record = KeyRecord(id=new_id("key"), org_id=org_id, created_at=datetime.now(UTC))
            conn.execute(
                "INSERT INTO ingest_keys (id, org_id, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (record.id, org_id, key_hash, record.created_at.isoformat()),
            )
            _audit(conn, org_id, [("key", None, record.id)], reason, actor, record.created_at)
            return record

        return await self._write(work)

    async def revoke_key(
        self, key_id: str, *, actor: str = "admin", reason: str | None = None
    ) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            rows = conn.execute(
                """UPDATE ingest_keys SET revoked_at = ?
                WHERE id = ? AND revoked_at IS NULL RETURNING org_id""",
                (_now_iso(), key_id),
            ).fetchall()
            if not rows:
                return None
            org_id = str(rows[0][0])
            _audit(conn, org_id, [("key", key_id, None)], reason, actor, datetime.now(UTC))
            return org_id

        return await self._write(work)

    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None, *, actor: str = "admin"
    ) -> OrgRecord | None:
        def work(conn: sqlite3.Connection) -> OrgRecord | None:
            current = _select_org(conn, org_id)
            if current is None:
                return None
            conn.execute(
                """UPDATE orgs SET suspended = ?, suspension_reason = ?, updated_at = ?
                WHERE id = ?""",
                (int(suspended), reason if suspended else None, _now_iso(), org_id),
            )
            rows = suspension_audit(current, suspended, reason)
            _audit(conn, org_id, rows, reason, actor, datetime.now(UTC))
            return _select_org(conn, org_id)

        return await self._write(work)

    async def set_billing_customers(
        self, org_id: str, customers: Mapping[str, str], *, actor: str = "admin"
    ) -> OrgRecord | None:
        def work(conn: sqlite3.Connection) -> OrgRecord | None:
            current = _select_org(conn, org_id)
            if current is None:
                return None
            rows: list[AuditRow] = []
            for provider, customer in customers.items():
                old = current.billing_customers.get(provider)
                if old == customer:
                    continue
                owner = conn.execute(
                    "SELECT org_id FROM billing_customers WHERE provider = ? AND customer_id = ?",
                    (provider, customer),
                ).fetchone()
                if owner is not None:
                    raise CustomerTaken(provider, customer)
                conn.execute(
                    "DELETE FROM billing_customers WHERE org_id = ? AND provider = ?",
                    (org_id, provider),
                )
                conn.execute(
                    "INSERT INTO billing_customers (provider, customer_id, org_id)"
                    " VALUES (?, ?, ?)",
                    (provider, customer, org_id),
                )
                rows.append((f"billing_customers.{provider}", old, customer))
            _audit(conn, org_id, rows, None, actor, datetime.now(UTC))
            return _select_org(conn, org_id)

        return await self._write(work)

    # billing

    async def billing_state(self, org_id: str) -> BillingState | None:
        return await self._run(lambda conn: _select_state(conn, org_id))

    async def apply_billing_event(
        self,
        event: BillingEvent,
        decide: Decide,
        now: datetime,
        redelivered: Decide | None = None,
    ) -> WebhookOutcome:
        return await self._write(lambda conn: _apply_event(conn, event, decide, now, redelivered))

    async def apply_unlinked_events(
        self, provider: str, customer_id: str, decide: DecideEvent, now: datetime
    ) -> list[WebhookOutcome]:
        def pending(conn: sqlite3.Connection) -> list[str] | None:
            if _customer_org(conn, provider, customer_id) is None:
                return None
            rows = conn.execute(_UNLINKED_EVENTS, (provider, customer_id)).fetchall()
            return [row[0] for row in rows]

        outcomes: list[WebhookOutcome] = []
        for event_id in await self._run(pending) or ():

            def apply(conn: sqlite3.Connection, event_id: str = event_id) -> WebhookOutcome | None:
                return _apply_unlinked(conn, provider, event_id, decide, now)

            if (outcome := await self._write(apply)) is not None:
                outcomes.append(outcome)
        return outcomes

    async def update_billing(
        self, org_id: str, decide: Decide, *, actor: str, now: datetime
    ) -> BillingChange | None:
        def work(conn: sqlite3.Connection) -> BillingChange | None:
            change = _checked(conn, org_id, decide, actor)
            if change is None:
                return None
            if change.refused is not None:
                _write_audit(conn, org_id, change, actor, now)
                return change
            return _write_change(conn, org_id, change, actor, now)

        return await self._write(work)

    async def webhook_events(self, limit: int = 100) -> list[dict[str, object]]:
        def work(conn: sqlite3.Connection) -> list[dict[str, object]]:
            rows = conn.execute(
                """SELECT provider, event_id, type, org_id, status, reason, received_at
                FROM webhook_events ORDER BY received_at DESC, rowid DESC LIMIT ?""",
                (max(0, limit),),
            ).fetchall()
            names = ("provider", "event_id", "type", "org_id", "status", "reason", "received_at")
            return _history(rows, names)

        return await self._run(work)

    async def audit_log(
        self, org_id: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        def work(conn: sqlite3.Connection) -> list[dict[str, object]]:
            rows = conn.execute(
                """SELECT at, entity, entity_id, field, old_value, new_value, reason, actor
                FROM audit_log
                WHERE :org IS NULL OR (entity = 'org' AND entity_id = :org)
                ORDER BY at DESC, id DESC LIMIT :limit""",
                {"org": org_id, "limit": max(0, limit)},
            ).fetchall()
            names = ("at", "entity", "entity_id", "field", "old", "new", "reason", "actor")
            return _history(rows, names)

        return await self._run(work)

    # one-leader work and usage export
