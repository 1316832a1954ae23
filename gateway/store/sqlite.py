"""The embedded store: SQLite through the stdlib ``sqlite3`` module.

All SQLite work runs on one worker thread that owns the only connection, so the
event loop never blocks and statements are serialized within the process. Every
mutating method is one ``BEGIN IMMEDIATE`` transaction: it takes the database's
write lock before reading, so it is atomic even with several processes on one file
(WAL lets readers go on meanwhile; ``busy_timeout`` makes writers queue).
Semantics mirror ``MemoryStore`` exactly; ``sqlite3.Error`` becomes ``StoreError``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from gateway.errors import StoreError
from gateway.store.base import (
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
)
from gateway.store.memory import new_id
from policies.model import METERS, Limits, OrgRouting, PaymentStatus

T = TypeVar("T")

log = logging.getLogger("gateway.store.sqlite")

SCHEMA_VERSION = 3

# Applied batch ids are kept 14 days: longer than any spool replay we expect, and as long
# as the Redis batch markers (RedisQuotaStore) live, which are written from these rows.
BATCH_RETENTION_SECONDS = 14 * 86400
PRUNE_INTERVAL_SECONDS = 3600.0
# Rows deleted per prune, so that a heartbeat stays short; a full prune runs again soon.
PRUNE_LIMIT = 10_000

_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS orgs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        upstream TEXT,
        suspended INTEGER NOT NULL DEFAULT 0,
        suspension_reason TEXT,
        payment_status TEXT NOT NULL DEFAULT 'ok'
            CHECK (payment_status IN ('ok', 'past_due', 'blocked')),
        shadow INTEGER NOT NULL DEFAULT 0,
        created_at TEXT,
        updated_at TEXT
    )""",
    # An absent row means unlimited.
    """CREATE TABLE IF NOT EXISTS org_limits (
        org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
        name TEXT NOT NULL
            CHECK (name IN ('requests', 'bytes', 'items', 'rate_requests', 'rate_bytes')),
        value INTEGER NOT NULL,
        PRIMARY KEY (org_id, name)
    )""",
    """CREATE TABLE IF NOT EXISTS ingest_keys (
        id TEXT PRIMARY KEY,
        org_id TEXT NOT NULL REFERENCES orgs(id),
        key_hash BLOB UNIQUE NOT NULL,
        created_at TEXT,
        revoked_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS ingest_keys_org_id ON ingest_keys (org_id)",
    # No foreign key to orgs: like MemoryStore, usage of an unknown org is still counted.
    """CREATE TABLE IF NOT EXISTS usage_counters (
        org_id TEXT NOT NULL,
        period_start TEXT NOT NULL,
        meter TEXT NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (org_id, period_start, meter)
    )""",
    """CREATE TABLE IF NOT EXISTS quota_reservations (
        holder TEXT NOT NULL,
        org_id TEXT NOT NULL,
        period_start TEXT NOT NULL,
        meter TEXT NOT NULL,
        amount INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (holder, org_id, period_start, meter)
    )""",
    # reserve() sums every holder's rows of one counter.
    """CREATE INDEX IF NOT EXISTS quota_reservations_counter
        ON quota_reservations (org_id, period_start, meter)""",
    """CREATE TABLE IF NOT EXISTS applied_batches (
        batch_id TEXT PRIMARY KEY,
        applied_at REAL
    )""",
)

# Statements that bring a database from version N - 1 to N; _SCHEMA above is version 1.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # The newest period claimed per org (claim_period).
        """CREATE TABLE IF NOT EXISTS org_periods (
            org_id TEXT PRIMARY KEY,
            period_start TEXT NOT NULL
        )""",
    ),
    3: (
        # The (org, period) of each batch, for quota_snapshot(); older rows stay NULL.
        "ALTER TABLE applied_batches ADD COLUMN org_id TEXT",
        "ALTER TABLE applied_batches ADD COLUMN period_start TEXT",
        """CREATE INDEX IF NOT EXISTS applied_batches_counter
            ON applied_batches (org_id, period_start)""",
        "CREATE INDEX IF NOT EXISTS applied_batches_applied_at ON applied_batches (applied_at)",
    ),
}

# One statement reads an org with its limits (one row per limit, or one row of NULLs).
_SELECT_ORG = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        o.payment_status, o.shadow, o.created_at, l.name, l.value
    FROM orgs o LEFT JOIN org_limits l ON l.org_id = o.id
    WHERE o.id = ?"""
_SELECT_ROUTING = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        o.payment_status, o.shadow, o.created_at, l.name, l.value
    FROM ingest_keys k JOIN orgs o ON o.id = k.org_id
    LEFT JOIN org_limits l ON l.org_id = o.id
    WHERE k.key_hash = ? AND k.revoked_at IS NULL"""

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

# A row comes back only when the period is new or newer than the org's last one.
_CLAIM_PERIOD = """INSERT INTO org_periods (org_id, period_start) VALUES (?, ?)
    ON CONFLICT (org_id) DO UPDATE SET period_start = excluded.period_start
        WHERE org_periods.period_start < excluded.period_start
    RETURNING org_id"""

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
    )


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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _transaction(conn, _migrate)
    except BaseException:
        conn.close()
        raise
    return conn


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


class SQLiteStore:
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
                limit: int | None = limits.get(meter)
                if limit is None:
                    grants[meter] = need
                    continue
                used, reserved = conn.execute(
                    _SELECT_TAKEN, {**counter, "meter": meter, "now": request.now}
                ).fetchone()
                taken = (used or 0) + (reserved or 0)
                remaining = limit - taken
                if remaining < need:
                    return Exhausted(meter, limit, taken)
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

    async def usage(self, org_id: str, period_start: str) -> dict[str, int]:
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT meter, used FROM usage_counters WHERE org_id = ? AND period_start = ?",
                (org_id, period_start),
            ).fetchall()
            return dict(rows)

        return await self._run(work)

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

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(_CLAIM_PERIOD, (org_id, period_start)).fetchall())

        return await self._write(work)

    # control plane

    async def create_org(
        self, name: str, limits: Limits, upstream: str | None, shadow: bool = False
    ) -> OrgRecord:
        org = OrgRecord(
            id=new_id("org"),
            name=name,
            limits=limits,
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

    async def update_org(self, org_id: str, changes: OrgChanges) -> OrgRecord | None:
        def work(conn: sqlite3.Connection) -> OrgRecord | None:
            updated = conn.execute(
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
            if updated.rowcount == 0:
                return None
            if changes.limits is not None:
                _write_limits(conn, org_id, changes.limits)
            return _select_org(conn, org_id)

        return await self._write(work)

    async def get_org(self, org_id: str) -> OrgRecord | None:
        return await self._run(lambda conn: _select_org(conn, org_id))

    async def create_key(self, org_id: str, key_hash: bytes) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            if conn.execute("SELECT 1 FROM orgs WHERE id = ?", (org_id,)).fetchone() is None:
                return None
            record = KeyRecord(id=new_id("key"), org_id=org_id, created_at=datetime.now(UTC))
            conn.execute(
                "INSERT INTO ingest_keys (id, org_id, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (record.id, org_id, key_hash, record.created_at.isoformat()),
            )
            return record

        return await self._write(work)

    async def revoke_key(self, key_id: str) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            rows = conn.execute(
                """UPDATE ingest_keys SET revoked_at = ?
                WHERE id = ? AND revoked_at IS NULL RETURNING org_id""",
                (_now_iso(), key_id),
            ).fetchall()
            return str(rows[0][0]) if rows else None

        return await self._write(work)

    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None
    ) -> OrgRecord | None:
        def work(conn: sqlite3.Connection) -> OrgRecord | None:
            updated = conn.execute(
                """UPDATE orgs SET suspended = ?, suspension_reason = ?, updated_at = ?
                WHERE id = ?""",
                (int(suspended), reason if suspended else None, _now_iso(), org_id),
            )
            if updated.rowcount == 0:
                return None
            return _select_org(conn, org_id)

        return await self._write(work)
