"""SQL written once: the algorithms both SQL backends share, over a small transaction seam.

Each algorithm is a generator (a ``Step``): it yields the statements it needs, built with
``execute`` (its row count comes back), ``rows`` (every row) and ``value`` (the first
column of the first row, or None), and receives their results. So one algorithm runs
synchronously on SQLite's worker thread (one job, one transaction) and awaited on an asyncpg
connection. The SQL here uses ``?`` placeholders; PostgreSQL's seam numbers them ($1, $2,
...) once per statement (``numbered``). ``SQLSteps`` gives a backend the store methods
built on these steps; it only says how to run a step in a read or a write transaction.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    """One statement of a step, and which result it wants back."""

    want: Literal["count", "rows", "value"]
    sql: str
    args: tuple[Any, ...]


Step = Generator[Query, Any, T]


def execute(sql: str, *args: Any) -> Step[int]:
    count: int = yield Query("count", sql, args)
    return count


def rows(sql: str, *args: Any) -> Step[list[Sequence[Any]]]:
    found: list[Sequence[Any]] = yield Query("rows", sql, args)
    return found


def value(sql: str, *args: Any) -> Step[Any]:
    return (yield Query("value", sql, args))


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``, in order."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


# Free, expired or already the holder's: taken (or extended); else no row comes back.
ACQUIRE_LEASE = """INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
        WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
    RETURNING name"""

# The largest value recorded wins.
RECORD_EXPORT = """INSERT INTO usage_exports (org_id, provider, period_start, meter, value)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (org_id, provider, period_start, meter) DO UPDATE SET value = excluded.value
        WHERE usage_exports.value < excluded.value"""

# A row comes back only when the period is new or newer than the org's last one.
CLAIM_PERIOD = """INSERT INTO org_periods (org_id, period_start) VALUES (?, ?)
    ON CONFLICT (org_id) DO UPDATE SET period_start = excluded.period_start
        WHERE org_periods.period_start < excluded.period_start
    RETURNING org_id"""

ORGS_TO_RECONCILE = """SELECT org_id FROM billing_state WHERE payment_status = 'past_due'
    UNION SELECT org_id FROM billing_suspensions WHERE suspended_at IS NOT NULL
    ORDER BY 1"""


def acquire_lease(name: str, holder: str, now: float, ttl: float) -> Step[bool]:
    return (yield from value(ACQUIRE_LEASE, name, holder, now + ttl, now)) is not None


def release_lease(name: str, holder: str) -> Step[None]:
    yield from execute("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)


def exported(org_id: str, provider: str, period_start: str) -> Step[dict[str, int]]:
    found = yield from rows(
        "SELECT meter, value FROM usage_exports"
        " WHERE org_id = ? AND provider = ? AND period_start = ?",
        org_id,
        provider,
        period_start,
    )
    return {meter: int(amount) for meter, amount in found}


def record_export(
    org_id: str, provider: str, period_start: str, meter: str, amount: int
) -> Step[None]:
    yield from execute(RECORD_EXPORT, org_id, provider, period_start, meter, amount)


def billing_orgs() -> Step[list[tuple[str, dict[str, str]]]]:
    found = yield from rows(
        "SELECT org_id, provider, customer_id FROM billing_customers ORDER BY org_id, provider"
    )
    linked: dict[str, dict[str, str]] = {}
    for org_id, provider, customer in found:
        linked.setdefault(org_id, {})[provider] = customer
    return list(linked.items())


def orgs_to_reconcile() -> Step[list[str]]:
    return [row[0] for row in (yield from rows(ORGS_TO_RECONCILE))]


def balance(org_id: str) -> Step[int]:
    total = yield from value(
        "SELECT COALESCE(SUM(amount_minor), 0) FROM credit_ledger WHERE org_id = ?", org_id
    )
    return int(total)


def usage(org_id: str, period_start: str) -> Step[dict[str, int]]:
    found = yield from rows(
        "SELECT meter, used FROM usage_counters"
        " WHERE org_id = ? AND period_start = ? AND used IS NOT NULL",
        org_id,
        period_start,
    )
    return {meter: int(used) for meter, used in found}


def claim_period(org_id: str, period_start: str) -> Step[bool]:
    return (yield from value(CLAIM_PERIOD, org_id, period_start)) is not None


class SQLSteps:
    """Store methods written once over steps; a backend says how a step runs."""

    async def _read_step(self, doing: str, step: Step[T]) -> T:
        raise NotImplementedError

    async def _write_step(self, doing: str, step: Step[T]) -> T:
        raise NotImplementedError

    async def usage(self, org_id: str, period_start: str) -> dict[str, int]:
        return await self._read_step("usage", usage(org_id, period_start))

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        return await self._write_step("claim period", claim_period(org_id, period_start))

    async def balance(self, org_id: str) -> int:
        return await self._read_step("balance", balance(org_id))

    async def orgs_to_reconcile(self) -> list[str]:
        return await self._read_step("orgs to reconcile", orgs_to_reconcile())

    async def billing_orgs(self) -> list[tuple[str, dict[str, str]]]:
        return await self._read_step("billing orgs", billing_orgs())

    async def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        return await self._write_step("acquire lease", acquire_lease(name, holder, now, ttl))

    async def release_lease(self, name: str, holder: str) -> None:
        await self._write_step("release lease", release_lease(name, holder))

    async def exported(self, org_id: str, provider: str, period_start: str) -> dict[str, int]:
        return await self._read_step("exported", exported(org_id, provider, period_start))

    async def record_export(
        self, org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None:
        step = record_export(org_id, provider, period_start, meter, value)
        await self._write_step("record export", step)
