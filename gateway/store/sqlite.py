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
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StoreError
from gateway.store import sql_history, sql_stale
from gateway.store.normal import iso
from gateway.store.records import (
    BATCH_RETENTION_SECONDS,
    HOLDER_LEASE,
    PRUNE_LIMIT,
    Exhausted,
    Granted,
    QuotaSnapshot,
    ReservationRow,
    ReserveRequest,
    ReserveResult,
    UsageBatch,
)
from gateway.store.seam import Dialect, Done, Step, advance
from gateway.store.sql import SQLSteps
from policies.model import is_quota_meter, lock_order

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
_ROW_LOCK = re.compile(r"\s+FOR (?:NO KEY )?(?:UPDATE|SHARE)(?: OF \w+)?(?: SKIP LOCKED)?")


@lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    return _ROW_LOCK.sub("", sql)


def _drive(conn: sqlite3.Connection, step: Step[T]) -> T:
    """Run a shared step's statements on ``conn``, in the caller's transaction."""
    result: Any = None
    while not isinstance(query := advance(step, result), Done):
        # fetchall: a cursor left unfinished would hold its statement open.
        found = conn.execute(_dialect(query.sql), query.args)
        if query.want == "count":
            result = found.rowcount
        else:
            every = found.fetchall()
            result = every if query.want == "rows" else (every[0][0] if every else None)
    return query.value


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


def _text_moment(stamp: Any) -> datetime | None:
    return None if stamp is None else datetime.fromisoformat(stamp)


def _text_stamp(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)


# Times are ISO 8601 text in UTC, so they sort as text; rowid orders rows written at once.
SQLITE = Dialect(stamp=_text_stamp, moment=_text_moment, event_order="rowid")


class SQLiteStore(SQLSteps):
    dialect = SQLITE

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

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

    async def _read_step(self, doing: str, step: Step[T], *, snapshot: bool = False) -> T:
        # Always one read transaction: cheap in SQLite, and every statement sees one snapshot.
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

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        def work(conn: sqlite3.Connection) -> ReserveResult:
            counter = {"org": request.org_id, "period": request.period_start}
            grants: dict[str, int] = {}
            recorded: list[tuple[str, int]] = []
            for meter in lock_order(request.needs):
                need = request.needs.get(meter)
                if need is None:
                    continue
                # Every limit from the caller's routing (the credit meter's is the balance).
                limit = request.limits.usage_limit(meter)
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
            if request.mark_stale:
                _drive(conn, sql_stale.mark([(request.org_id, request.period_start)]))
            return Granted(grants)

        return await self._write(work)

    async def commit(self, batch: UsageBatch) -> bool:
        return (await self.commit_many([batch]))[0]

    async def commit_many(self, batches: Sequence[UsageBatch]) -> list[bool]:
        def one(conn: sqlite3.Connection, batch: UsageBatch) -> bool:
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
            conn.executemany(sql_history.ADD_SQLITE, sql_history.history_rows(batch))
            conn.executemany(
                _ADD_RESERVED,
                [
                    (delta, batch.holder, batch.org_id, batch.period_start, meter)
                    for meter, delta in batch.reserved.items()
                ],
            )
            return True

        # One transaction (one write lock and one WAL commit) for the whole group.
        return await self._write(lambda conn: [one(conn, batch) for batch in batches])

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE quota_reservations SET expires_at = ? WHERE holder = ? AND expires_at > ?",
                (now + ttl, holder, now),
            )

        await self._write(work)
        await self._prune_when_due()

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

    async def _delete_old_batches(self) -> bool:
        cutoff = time.time() - BATCH_RETENTION_SECONDS
        deleted = await self._write(
            lambda conn: conn.execute(_PRUNE_BATCHES, (cutoff, PRUNE_LIMIT)).rowcount
        )
        return bool(deleted >= PRUNE_LIMIT)

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
                used={m: used[m] for m in lock_order(used) if is_quota_meter(m)},
                reservations=_live_reservations(conn, org_id, period_start, now),
                batch_ids=[row[0] for row in batch_ids],
                stale=_drive(conn, sql_stale.generation(org_id, period_start)),
            )

        return await self._call(lambda: _read(self._connection(), work))

    async def add_reservation(
        self, request: ReserveRequest, amounts: Mapping[str, int], generation: int | None = None
    ) -> bool:
        holder, org_id, period_start = request.holder, request.org_id, request.period_start
        now, ttl = request.now, request.ttl
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

        def work(conn: sqlite3.Connection) -> bool:
            if (
                generation is not None
                and _drive(conn, sql_stale.generation(org_id, period_start)) > generation
            ):
                return True
            conn.executemany(_UPSERT_RESERVATION, rows)
            return False

        return await self._write(work)
