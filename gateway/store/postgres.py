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

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.errors import ConfigError, StoreError
from gateway.store import sql_history, sql_stale
from gateway.store.normal import utc
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
    rounds,
)
from gateway.store.seam import Dialect, Done, Step, advance, numbered
from gateway.store.sql import SQLSteps
from policies.model import METERS, is_quota_meter, lock_order

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

_USED_OF = "SELECT used FROM usage_counters WHERE org_id = $1 AND period_start = $2 AND meter = $3"
_RESERVE = """SELECT meter_name, granted, meter_limit, taken
    FROM reserve_quota($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::bigint[])"""

_PRUNE_BATCHES = """DELETE FROM applied_batches WHERE batch_id IN (
    SELECT batch_id FROM applied_batches
    WHERE applied_at < now() - make_interval(secs => $1)
    LIMIT $2)"""

# A group of batches commits in one transaction of three statements, whatever its size.
# Claims the new batch ids and adds their usage, summed per counter row and upserted in the
# global lock order (org, period, meter rank), as one statement; returns the ids it claimed.
_CLAIM_AND_COUNT = """WITH claimed AS (
        INSERT INTO applied_batches (batch_id, org_id, period_start)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
        ON CONFLICT DO NOTHING RETURNING batch_id, org_id, period_start
    ), counted AS (
        INSERT INTO usage_counters AS c (org_id, period_start, meter, used)
        SELECT k.org_id, k.period_start, u.meter, sum(u.delta)::bigint
        FROM claimed k
        JOIN unnest($4::text[], $5::text[], $6::bigint[]) AS u (batch_id, meter, delta)
            ON u.batch_id = k.batch_id
        GROUP BY k.org_id, k.period_start, u.meter
        ORDER BY k.org_id, k.period_start,
            COALESCE(array_position($7::text[], u.meter), 2147483647), u.meter
        ON CONFLICT (org_id, period_start, meter)
            DO UPDATE SET used = COALESCE(c.used, 0) + excluded.used
    )
    SELECT batch_id FROM claimed"""

# The claimed batches' reservation deltas, sorted into the global order, each row locked by its
# key (a join hashed the whole table). A round has one batch per (holder, org, period).
_ADD_RESERVED = """UPDATE quota_reservations q SET amount = GREATEST(0, q.amount + r.delta)
    FROM (
        SELECT s.holder, s.org_id, s.period_start, s.meter, d.delta
        FROM (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                AS u (holder, org_id, period_start, meter, delta)
            ORDER BY u.org_id, u.period_start,
                COALESCE(array_position($6::text[], u.meter), 2147483647), u.meter, u.holder
        ) d
        CROSS JOIN LATERAL (
            SELECT x.holder, x.org_id, x.period_start, x.meter FROM quota_reservations x
            WHERE x.holder = d.holder AND x.org_id = d.org_id
                AND x.period_start = d.period_start AND x.meter = d.meter
            FOR UPDATE
        ) s
    ) r
    WHERE q.holder = r.holder AND q.org_id = r.org_id AND q.period_start = r.period_start
        AND q.meter = r.meter"""

# A grant Redis decided, unless Redis missed a write of the (org, period) (then TRUE).
_ADD_RESERVATION = "SELECT add_reservation_checked($1, $2, $3, $4, $5, $6, $7, $8)"

# A holder's rows are locked in the global order (org, period, meter rank) first.
_HOLDER_ROWS = """(
        SELECT s.org_id, s.period_start, s.meter FROM quota_reservations s
        WHERE s.holder = $1 {live}
        ORDER BY s.org_id, s.period_start,
            COALESCE(array_position($2::text[], s.meter), 2147483647), s.meter
        FOR UPDATE
    ) s
    WHERE q.holder = $1 AND q.org_id = s.org_id AND q.period_start = s.period_start
        AND q.meter = s.meter"""
# Both statements are built from the constant above alone (no input reaches them).
_HEARTBEAT = "UPDATE quota_reservations q SET expires_at = $3::float8 + $4::float8 FROM " + (  # noqa: S608
    _HOLDER_ROWS.format(live="AND s.expires_at > $3")
)
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
_RELEASE = "DELETE FROM quota_reservations q USING " + _HOLDER_ROWS.format(live="")  # noqa: S608

_LIVE_RESERVATIONS = """SELECT holder, meter, amount, expires_at FROM quota_reservations
    WHERE org_id = $1 AND period_start = $2 AND expires_at > $3 AND amount > 0
    ORDER BY holder, COALESCE(array_position($4::text[], meter), 2147483647), meter"""

_USAGE = """SELECT meter, used FROM usage_counters
    WHERE org_id = $1 AND period_start = $2 AND used IS NOT NULL"""

# Only recent batches: the race they guard (a commit crossing a rebuild) lasts seconds; a
# spool replay older than this may count twice in Redis (refusing early, never over).
_BATCH_IDS = """SELECT batch_id FROM applied_batches
    WHERE org_id = $1 AND period_start = $2 AND applied_at > now() - interval '1 hour'"""

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


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as the ``width`` arrays an ``unnest`` takes, one per column."""
    return [[row[i] for row in rows] for i in range(width)]


def _claim_arrays(group: Sequence[UsageBatch]) -> list[list[Any]]:
    """The arrays ``_CLAIM_AND_COUNT`` takes: ids, orgs and periods; then each used delta."""
    used = [(b.batch_id, m, n) for b in group for m, n in b.used.items() if n]
    claims = [(b.batch_id, b.org_id, b.period_start) for b in group]
    return _columns(claims, 3) + _columns(used, 3)


def _sorted_deltas(deltas: Mapping[str, int]) -> tuple[list[str], list[int]]:
    meters = lock_order(deltas)
    return meters, [deltas[meter] for meter in meters]


async def _drive(conn: Any, step: Step[T]) -> T:
    """Run a shared step's statements on ``conn``, in the caller's transaction."""
    result: Any = None
    while not isinstance(query := advance(step, result), Done):
        statement = numbered(query.sql)
        if query.want == "count":
            # A status such as "INSERT 0 1" or "DELETE 3": the count comes last.
            result = int((await conn.execute(statement, *query.args)).split()[-1])
        elif query.want == "rows":
            result = await conn.fetch(statement, *query.args)
        else:
            result = await conn.fetchval(statement, *query.args)
    return query.value


def _stamp(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


def _moment(stamp: Any) -> datetime | None:
    return cast(datetime | None, stamp)


# Taken by a webhook that finds its customer unlinked and by the link of that customer, so
# that an event is either kept before the link commits or sees the link (applied at once).
_LOCK_CUSTOMER = (
    f"SELECT pg_advisory_xact_lock({CUSTOMER_LOCK},"
    " hashtext(CAST(? AS TEXT) || '/' || CAST(? AS TEXT)))"
)
# asyncpg reads timestamptz as aware datetimes; seq orders events received at once.
POSTGRES = Dialect(stamp=_stamp, moment=_moment, event_order="seq", lock_customer=_LOCK_CUSTOMER)


class PostgresStore(SQLSteps):
    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        self._url = url
        self._dsn, self.schema = split_url(url)
        self._pool: Any = None

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

    async def _read_step(self, doing: str, step: Step[T], *, snapshot: bool = False) -> T:
        async with self._connection(doing) as conn:
            if not snapshot:
                return await _drive(conn, step)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
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

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        meters = lock_order(request.needs)
        if not meters:
            return Granted({})
        policy = request.policy
        # A fallback grant (Redis failed) and the mark that Redis missed it commit together.
        async with (
            self._connection("reserve") as conn,
            conn.transaction() if request.mark_stale else contextlib.nullcontext(),
        ):
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
                # Every limit from the caller's routing (the credit meter's is the balance).
                [request.limits.usage_limit(meter) for meter in meters],
            )
            if request.mark_stale and all(row["granted"] is not None for row in rows):
                await _drive(conn, sql_stale.mark([(request.org_id, request.period_start)]))
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
        return (await self.commit_many([batch]))[0]

    async def commit_many(self, batches: Sequence[UsageBatch]) -> list[bool]:
        # Rounds keep the order of ``batches``: their answers line up with it.
        applied: list[bool] = []
        # A transaction a round: a later round would lock rows out of the global order.
        for group in rounds(batches):
            async with self._transaction("commit") as conn:
                claimed = await conn.fetch(_CLAIM_AND_COUNT, *_claim_arrays(group), _METERS)
                ids = {row["batch_id"] for row in claimed}
                mine = [batch for batch in group if batch.batch_id in ids]
                history = [row for batch in mine for row in sql_history.history_rows(batch)]
                if history:
                    await conn.execute(sql_history.ADD_POSTGRES, *_columns(history, 4))
                reserved = [
                    (b.holder, b.org_id, b.period_start, meter, delta)
                    for b in mine
                    for meter, delta in b.reserved.items()
                    if delta
                ]
                if reserved:
                    await conn.execute(_ADD_RESERVED, *_columns(reserved, 5), _METERS)
                applied += [batch.batch_id in ids for batch in group]
        return applied

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        async with self._connection("heartbeat") as conn:
            await conn.execute(_HEARTBEAT, holder, _METERS, now, ttl)
        await self._prune_when_due()

    async def live_holders(self, holder: str, now: float, ttl: float) -> int:
        name = HOLDER_LEASE + holder
        async with self._connection("live holders") as conn:
            live = await conn.fetchval(_LIVE_HOLDERS, holder, name, HOLDER_LEASE + "%", now, ttl)
        return int(live)

    async def _delete_old_batches(self) -> bool:
        async with self._connection("prune batches") as conn:
            status = await conn.execute(_PRUNE_BATCHES, BATCH_RETENTION_SECONDS, PRUNE_LIMIT)
        return int(status.split()[-1]) >= PRUNE_LIMIT

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
            stale = await _drive(conn, sql_stale.generation(org_id, period_start))
        counted = {row["meter"]: row["used"] for row in used}
        return QuotaSnapshot(
            used={m: counted[m] for m in lock_order(counted) if is_quota_meter(m)},
            reservations=[ReservationRow(*row) for row in rows],
            batch_ids=[row["batch_id"] for row in batches],
            stale=stale,
        )

    async def add_reservation(
        self, request: ReserveRequest, amounts: Mapping[str, int], generation: int | None = None
    ) -> bool:
        holder, org_id, period_start = request.holder, request.org_id, request.period_start
        if not amounts:
            return False
        meters, values = _sorted_deltas(amounts)
        args = (holder, org_id, period_start, meters, values, request.now, request.ttl, generation)
        async with self._connection("add reservation") as conn:
            return bool(await conn.fetchval(_ADD_RESERVATION, *args))
