"""Applied batch ids are forgotten after 14 days, by heartbeats, in SQLite and PostgreSQL.

Ageing a batch reads the tables directly: nothing in the Protocol moves the truth's clock.
A forgotten batch would be applied again by a Redis rebuild; the tests read the table itself
(quota_snapshot lists only the last hour's batches).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gateway.store import postgres, sqlite
from gateway.store.base import Store, UsageBatch
from gateway.store.postgres import PostgresStore, split_url
from gateway.store.sqlite import SQLiteStore
from tests.store.conftest import drop_schema, new_schema_url

PERIOD = "2024-05-01T00:00:00+00:00"
DAY = 86400.0


@dataclass
class Truth:
    store: Store
    age: Callable[[str, float], Awaitable[None]]  # batch id, seconds to move it back
    ids: Callable[[], Awaitable[list[str]]]  # every batch id the table still holds


async def _sqlite_truth(tmp_path: Path) -> AsyncIterator[Truth]:
    path = tmp_path / "gateway.db"

    async def age(batch_id: str, seconds: float) -> None:
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "UPDATE applied_batches SET applied_at = applied_at - ? WHERE batch_id = ?",
                (seconds, batch_id),
            )

    async def ids() -> list[str]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return [row[0] for row in conn.execute("SELECT batch_id FROM applied_batches")]

    store = SQLiteStore(str(path))
    await store.open()
    yield Truth(store, age, ids)
    await store.close()


async def _postgres_truth(tmp_path: Path) -> AsyncIterator[Truth]:
    url = new_schema_url()
    dsn, schema = split_url(url)

    async def age(batch_id: str, seconds: float) -> None:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
        try:
            await conn.execute(
                """UPDATE applied_batches SET applied_at = applied_at - make_interval(secs => $2)
                WHERE batch_id = $1""",
                batch_id,
                seconds,
            )
        finally:
            await conn.close()

    async def ids() -> list[str]:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
        try:
            return [row[0] for row in await conn.fetch("SELECT batch_id FROM applied_batches")]
        finally:
            await conn.close()

    store = PostgresStore(url)
    try:
        await store.open()
        yield Truth(store, age, ids)
        await store.close()
    finally:
        await drop_schema(url)


@pytest.fixture(params=[_sqlite_truth, _postgres_truth], ids=["sqlite", "postgresql"])
async def truth(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Truth]:
    async for made in request.param(tmp_path):
        yield made


async def commit(store: Store, *batch_ids: str) -> None:
    for batch_id in batch_ids:
        assert await store.commit(UsageBatch(batch_id, "a", "org_a", PERIOD, {"requests": 1}))


async def listed(truth: Truth) -> list[str]:
    return sorted(await truth.ids())


async def test_heartbeat_forgets_batches_older_than_14_days_at_most_hourly(truth: Truth) -> None:
    await commit(truth.store, "old", "recent", "new")
    await truth.age("old", 14 * DAY + 60)
    await truth.age("recent", 13 * DAY)

    await truth.store.heartbeat("a", now=0, ttl=60)
    assert await listed(truth) == ["new", "recent"]
    again = UsageBatch("old", "a", "org_a", PERIOD, {"requests": 1})
    assert await truth.store.commit(again) is True

    # Within the hour the next heartbeats leave even an old batch alone.
    await truth.age("recent", 2 * DAY)
    await truth.store.heartbeat("a", now=0, ttl=60)
    assert await listed(truth) == ["new", "old", "recent"]


async def test_a_prune_cut_short_goes_on_at_the_next_heartbeat(
    truth: Truth, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (sqlite, postgres):
        monkeypatch.setattr(module, "PRUNE_LIMIT", 2)
    await commit(truth.store, "b1", "b2", "b3", "new")
    for batch_id in ("b1", "b2", "b3"):
        await truth.age(batch_id, 15 * DAY)

    await truth.store.heartbeat("a", now=0, ttl=60)
    assert len(await listed(truth)) == 2
    await truth.store.heartbeat("a", now=0, ttl=60)
    assert await listed(truth) == ["new"]


async def test_the_rebuild_snapshot_lists_only_the_last_hours_batches(truth: Truth) -> None:
    await commit(truth.store, "two-hours-old", "fresh")
    await truth.age("two-hours-old", 2 * 3600)
    snapshot = await truth.store.quota_snapshot("org_a", PERIOD, now=0)
    assert snapshot.batch_ids == ["fresh"]
    assert await listed(truth) == ["fresh", "two-hours-old"]
