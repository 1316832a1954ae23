"""PostgreSQL only: a flush's statements stay proportional to the batches they carry.

A flush of 10,000 active orgs took about a second when each group's reservation update
hashed the whole reservations table and each counter update wrote new index entries; these
guard the two causes, on a real server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.store.postgres import _ADD_RESERVED, _METERS, PostgresStore, split_url
from tests.store.conftest import drop_schema, new_schema_url

PERIOD = "2026-12-01T00:00:00+00:00"
METERS = ["requests", "bytes", "items", "key/k0/items"]
ORGS = 10_000


@pytest.fixture
async def conn() -> AsyncIterator[asyncpg.Connection]:
    url = new_schema_url()
    store = PostgresStore(url)
    await store.open()
    await store.close()
    dsn, schema = split_url(url)
    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
    try:
        yield connection
    finally:
        await connection.close()
        await drop_schema(url)


async def test_counters_history_and_reservations_leave_room_for_in_place_updates(
    conn: asyncpg.Connection,
) -> None:
    rows = await conn.fetch(
        "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[])"
        " AND relnamespace = current_schema()::regnamespace",
        ["usage_counters", "usage_history", "quota_reservations"],
    )
    tables = ("usage_counters", "usage_history", "quota_reservations")
    assert {row["relname"]: row["reloptions"] for row in rows} == {
        name: ["fillfactor=50"] for name in tables
    }


async def test_a_flush_finds_each_reservation_by_its_key_not_by_scanning_the_table(
    conn: asyncpg.Connection,
) -> None:
    orgs = [f"org_{i:05d}" for i in range(ORGS)]
    rows = [(o, m) for o in orgs for m in METERS]
    await conn.execute(
        """INSERT INTO quota_reservations (holder, org_id, period_start, meter, amount,
            expires_at)
        SELECT 'h', o, $3, m, 100, $4 FROM unnest($1::text[], $2::text[]) AS r (o, m)""",
        [o for o, _ in rows],
        [m for _, m in rows],
        PERIOD,
        time.time() + 60,
    )
    await conn.execute("ANALYZE quota_reservations")
    group = [(o, m) for o in orgs[:500] for m in METERS]  # one flush group: 500 batches
    plan = await conn.fetch(
        "EXPLAIN " + _ADD_RESERVED,
        ["h"] * len(group),
        [o for o, _ in group],
        [PERIOD] * len(group),
        [m for _, m in group],
        [-5] * len(group),
        list(_METERS),
    )
    text = "\n".join(row[0] for row in plan)
    assert "Seq Scan on quota_reservations" not in text, text
    assert "LockRows" in text, text
