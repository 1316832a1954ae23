"""PostgreSQL only: migrations, locks under concurrency across pools, URLs and errors.

The contract suite (test_contract.py) runs against PostgreSQL too, including data
surviving close and reopen; these are the properties only a shared server has.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.errors import ConfigError, StoreError
from gateway.store import Exhausted, Granted, ReserveRequest, UsageBatch
from gateway.store.postgres import PostgresStore, migrate, migrations, split_url
from policies.model import Limits
from policies.reservations import ChunkPolicy
from tests.services import ThrowawayPostgres, free_port, unavailable
from tests.store.conftest import drop_schema, new_schema_url

ROOT = Path(__file__).resolve().parents[2]
PERIOD = "2024-05-01T00:00:00+00:00"
STRICT = ChunkPolicy(strict=True)
EVERY_VERSION = [version for version, _ in migrations()]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    url = new_schema_url()
    yield url
    await drop_schema(url)


@pytest.fixture
async def two_stores(url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two instances on one schema, like two gateway processes: two pools."""
    stores = [PostgresStore(url), PostgresStore(url)]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


async def applied_versions(url: str) -> list[str]:
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [row["version"] for row in rows]


# migrations


def test_migrations_are_shipped_in_order() -> None:
    assert EVERY_VERSION[0] == "0001_init"
    assert EVERY_VERSION == sorted(EVERY_VERSION)


async def test_migrate_twice_applies_nothing_the_second_time(url: str) -> None:
    assert await migrate(url) == EVERY_VERSION
    assert await migrate(url) == []
    assert await applied_versions(url) == EVERY_VERSION


async def test_open_runs_migrations_and_open_again_applies_none(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.close()
    assert await applied_versions(url) == EVERY_VERSION
    assert await migrate(url) == []


async def test_concurrent_migrations_apply_each_version_once(url: str) -> None:
    first, second = await asyncio.gather(migrate(url), migrate(url))
    assert sorted(first + second) == EVERY_VERSION
    assert await applied_versions(url) == EVERY_VERSION


async def test_migrations_from_two_processes_apply_each_version_once(url: str) -> None:
    code = (
        "import asyncio, sys; from gateway.store.postgres import migrate; "
        "print(','.join(asyncio.run(migrate(sys.argv[1]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            url,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.gather(*(process.communicate() for process in processes))
    assert [process.returncode for process in processes] == [0, 0], outputs
    applied = [v for out, _ in outputs for v in out.decode().strip().split(",") if v]
    assert sorted(applied) == EVERY_VERSION
    assert await applied_versions(url) == EVERY_VERSION


# concurrency across pools


async def test_multi_meter_reserves_across_two_pools_grant_exactly_the_limit(
    two_stores: list[PostgresStore],
) -> None:
    # requests alone would allow 150; bytes allows 100 reservations of 10.
    org = await two_stores[0].create_org("acme", Limits(requests=150, bytes=1_000), None)

    async def reserve_then_spend(n: int) -> Granted | Exhausted:
        # Half the callers name the meters in the other order: locks follow METERS anyway.
        needs = {"requests": 1, "bytes": 10} if n % 2 else {"bytes": 10, "requests": 1}
        holder = f"replica-{n % 7}"
        request = ReserveRequest(holder, org.id, PERIOD, needs, STRICT, 1_000.0, 60.0, org.limits)
        result = await two_stores[n % 2].reserve(request)
        if isinstance(result, Granted):
            # Commits lock the same counters, from the other pool.
            spent = UsageBatch(
                f"batch-{n}", holder, org.id, PERIOD, dict(needs), {m: -v for m, v in needs.items()}
            )
            assert await two_stores[(n + 1) % 2].commit(spent) is True
        return result

    results = await asyncio.gather(*(reserve_then_spend(n) for n in range(200)))

    assert sum(isinstance(r, Granted) for r in results) == 100
    refused = [r for r in results if isinstance(r, Exhausted)]
    assert len(refused) == 100 and all(r.meter == "bytes" and r.limit == 1_000 for r in refused)
    assert await two_stores[1].usage(org.id, PERIOD) == {"requests": 100, "bytes": 1_000}
    assert await two_stores[0].live_reservations(org.id, PERIOD, now=1_000.0) == []


async def test_racing_claims_of_a_new_period_have_one_winner(
    two_stores: list[PostgresStore],
) -> None:
    for month in range(1, 11):
        period = f"2024-{month:02d}-01T00:00:00+00:00"
        results = await asyncio.gather(
            *(two_stores[n % 2].claim_period("org_a", period) for n in range(10))
        )
        assert results.count(True) == 1, period


async def test_heartbeats_and_releases_race_reserves_without_deadlock(
    two_stores: list[PostgresStore],
) -> None:
    org = await two_stores[0].create_org("acme", Limits(requests=10_000, bytes=10**9), None)
    loose = ChunkPolicy(max_requests=3, max_bytes=30)

    async def work(n: int) -> Granted | Exhausted:
        store = two_stores[n % 2]
        holder = f"replica-{n % 3}"
        needs = {"bytes": 10, "requests": 1}
        request = ReserveRequest(holder, org.id, PERIOD, needs, loose, 1_000.0, 60.0, org.limits)
        result = await store.reserve(request)
        if n % 5 == 0:
            await store.heartbeat(holder, 1_001.0, 60.0)
        if n % 17 == 0:
            await store.release(holder)
        return result

    # A deadlock PostgreSQL broke would surface as a StoreError here; a hang, as the timeout.
    results = await asyncio.wait_for(asyncio.gather(*(work(n) for n in range(150))), 60)
    assert all(isinstance(r, Granted) for r in results)  # far below the limits: none refused
    live = await two_stores[1].live_reservations(org.id, PERIOD, now=1_000.0)
    assert {row.holder for row in live} <= {"replica-0", "replica-1", "replica-2"}
    assert await two_stores[0].usage(org.id, PERIOD) == {}  # reserved, never committed


# URLs and errors


def test_split_url_strips_the_schema_and_keeps_other_parameters() -> None:
    url = "postgres://u:p@db:5433/gw?sslmode=disable&schema=tenant_1"
    assert split_url(url) == ("postgres://u:p@db:5433/gw?sslmode=disable", "tenant_1")
    assert split_url("postgresql://db/gw") == ("postgresql://db/gw", None)


@pytest.mark.parametrize("schema", ["Tenant", "a-b", "x;drop", ""])
def test_schema_names_are_checked(schema: str) -> None:
    with pytest.raises(ConfigError, match="schema"):
        PostgresStore(f"postgresql://u:secret@db/gw?schema={schema}")


async def test_unreachable_server_is_a_store_error_without_the_password() -> None:
    store = PostgresStore(f"postgresql://gw:s3cret@127.0.0.1:{free_port()}/gw")
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(store)


@pytest.fixture
def own_server() -> Iterator[ThrowawayPostgres]:
    try:
        server = ThrowawayPostgres.create()
    except (RuntimeError, OSError, subprocess.CalledProcessError):
        unavailable("a throwaway PostgreSQL")
    yield server
    server.destroy()


async def test_a_stopped_server_fails_fast_and_a_restarted_one_is_used_again(
    own_server: ThrowawayPostgres,
) -> None:
    store = PostgresStore(own_server.url)
    await store.open()
    try:
        org = await store.create_org("acme", Limits(requests=3), None)
        own_server.stop()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.get_org(org.id)
            # Refused at once; the bound only has to stay under the 5 s command timeout.
            assert time.monotonic() - started < 4

        own_server.start()
        # Connections the pool held across the restart fail once each, then are replaced.
        for _ in range(11):
            try:
                assert await store.get_org(org.id) == org
                break
            except StoreError:
                continue
        else:
            pytest.fail("the store did not come back after the server restarted")
    finally:
        await store.close()


async def test_calls_before_open_are_store_errors() -> None:
    store = PostgresStore("postgresql://db/gw")
    with pytest.raises(StoreError, match="not open"):
        await store.ping()


async def test_server_errors_do_not_quote_key_hashes(two_stores: list[PostgresStore]) -> None:
    org = await two_stores[0].create_org("acme", Limits(), None)
    await two_stores[0].create_key(org.id, b"hash-that-must-not-leak")
    with pytest.raises(StoreError) as info:
        await two_stores[1].create_key(org.id, b"hash-that-must-not-leak")
    assert "must-not-leak" not in str(info.value)


async def test_the_previous_reserve_quota_stays_for_a_rolling_upgrade(url: str) -> None:
    # Replicas of the release before 0004_billing call the ten-argument version.
    await migrate(url)
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
    try:
        rows = await conn.fetch(
            """SELECT meter_name, granted FROM reserve_quota('a', 'org_a', 'p',
                ARRAY['requests'], ARRAY[1]::bigint[], ARRAY[10]::bigint[], true, 1,
                0::float8, 60::float8)"""
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in rows] == [("requests", 1)]
