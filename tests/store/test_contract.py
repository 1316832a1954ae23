"""The Store contract: every backend must pass every test here (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import ConfigError, StoreError
from gateway.store import (
    Exhausted,
    Granted,
    OrgChanges,
    OrgRecord,
    ReserveRequest,
    Store,
    UsageBatch,
    open_store,
)
from gateway.store.base import QuotaSnapshot, ReservationRow
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import _SCHEMA as sqlite_schema_v1
from gateway.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from gateway.store.sqlite import SQLiteStore
from policies.model import Limits
from policies.reservations import ChunkPolicy
from tests.store.conftest import NewStore

STRICT = ChunkPolicy(strict=True)
PERIOD = "2024-05-01T00:00:00+00:00"
NEXT_PERIOD = "2024-06-01T00:00:00+00:00"


def ask(
    org: OrgRecord,
    *,
    holder: str = "replica-a",
    policy: ChunkPolicy = STRICT,
    now: float = 1_000.0,
    ttl: float = 60.0,
    period: str = PERIOD,
    **needs: int,
) -> ReserveRequest:
    # The org's limits as the caller's routing: Redis counters take them from the request.
    return ReserveRequest(holder, org.id, period, needs, policy, now, ttl, limits=org.limits)


async def org_with(store: Store, **limits: int) -> OrgRecord:
    return await store.create_org("acme", Limits.from_dict(limits), "http://upstream:4318")


async def relimit(store: Store, org: OrgRecord, **limits: int) -> OrgRecord:
    updated = await store.update_org(org.id, OrgChanges(limits=Limits.from_dict(limits)))
    assert updated is not None
    return updated


# orgs


async def test_created_org_reads_back_equal(store: Store) -> None:
    org = await store.create_org("acme", Limits(requests=10, rate_bytes=5), None, shadow=True)
    assert org.id.startswith("org_")
    assert org.payment_status == "ok" and not org.suspended and org.shadow
    assert await store.get_org(org.id) == org
    assert await store.get_org("org_missing") is None


async def test_update_org_is_partial(store: Store) -> None:
    org = await org_with(store, requests=10, bytes=100)

    renamed = await store.update_org(org.id, OrgChanges(name="acme2"))
    assert renamed is not None
    assert (renamed.name, renamed.limits, renamed.upstream) == (
        "acme2",
        org.limits,
        "http://upstream:4318",
    )

    # Limits are replaced as a whole: requests becomes unlimited.
    relimited = await store.update_org(org.id, OrgChanges(limits=Limits(items=7)))
    assert relimited is not None and relimited.limits == Limits(items=7)

    # Without set_upstream the upstream stays, with it None unsets it.
    kept = await store.update_org(org.id, OrgChanges(upstream="http://other"))
    assert kept is not None and kept.upstream == "http://upstream:4318"
    unset = await store.update_org(org.id, OrgChanges(upstream=None, set_upstream=True))
    assert unset is not None and unset.upstream is None
    moved = await store.update_org(org.id, OrgChanges(upstream="http://b", set_upstream=True))
    assert moved is not None and moved.upstream == "http://b"

    shadowed = await store.update_org(org.id, OrgChanges(shadow=True))
    assert shadowed is not None and shadowed.shadow and shadowed.name == "acme2"
    assert await store.get_org(org.id) == shadowed
    assert await store.update_org("org_missing", OrgChanges(name="x")) is None


async def test_suspension_on_and_off_reaches_routing(store: Store) -> None:
    org = await org_with(store)
    await store.create_key(org.id, b"hash-1")

    suspended = await store.set_suspension(org.id, True, "chargeback")
    assert suspended is not None
    assert (suspended.suspended, suspended.suspension_reason) == (True, "chargeback")
    routing = await store.routing_for_key(b"hash-1")
    assert routing is not None and routing.suspended

    resumed = await store.set_suspension(org.id, False, "ignored when lifting")
    assert resumed is not None
    assert (resumed.suspended, resumed.suspension_reason) == (False, None)
    routing = await store.routing_for_key(b"hash-1")
    assert routing is not None and not routing.suspended
    assert await store.set_suspension("org_missing", True, "x") is None


# keys


async def test_key_routes_to_its_org_with_limits(store: Store) -> None:
    org = await org_with(store, requests=10, items=3)
    await org_with(store, requests=99)
    key = await store.create_key(org.id, b"hash-1")
    assert key is not None and key.id.startswith("key_") and key.org_id == org.id

    assert await store.routing_for_key(b"hash-1") == org.routing()
    assert await store.routing_for_key(b"hash-unknown") is None

    updated = await store.update_org(org.id, OrgChanges(limits=Limits(bytes=5)))
    assert updated is not None
    routing = await store.routing_for_key(b"hash-1")
    assert routing is not None and routing.limits == Limits(bytes=5)


async def test_key_for_unknown_org_is_refused(store: Store) -> None:
    assert await store.create_key("org_missing", b"hash-1") is None
    assert await store.routing_for_key(b"hash-1") is None


async def test_revoke_key_once(store: Store) -> None:
    org = await org_with(store)
    key = await store.create_key(org.id, b"hash-1")
    other = await store.create_key(org.id, b"hash-2")
    assert key is not None and other is not None

    assert await store.revoke_key(key.id) == org.id
    assert await store.routing_for_key(b"hash-1") is None
    assert await store.revoke_key(key.id) is None
    assert await store.revoke_key("key_missing") is None
    assert await store.routing_for_key(b"hash-2") == org.routing()


# reserve


async def test_reserve_grants_chunks_that_shrink_near_the_limit(store: Store) -> None:
    org = await org_with(store, requests=100)
    chunks = ChunkPolicy(replicas=1)
    grants = [await store.reserve(ask(org, policy=chunks, requests=1)) for _ in range(3)]
    assert grants == [
        Granted({"requests": 50}),
        Granted({"requests": 25}),
        Granted({"requests": 12}),
    ]


async def test_reserve_chunk_is_capped_and_shared_by_replicas(store: Store) -> None:
    org = await org_with(store, requests=1_000)
    capped = ChunkPolicy(max_requests=10)
    assert await store.reserve(ask(org, policy=capped, requests=1)) == Granted({"requests": 10})
    # 990 left, shared by 3 replicas: 990 // 6.
    shared = ChunkPolicy(replicas=3)
    assert await store.reserve(ask(org, policy=shared, requests=1)) == Granted({"requests": 165})


async def test_strict_reserve_grants_exactly_the_need(store: Store) -> None:
    org = await org_with(store, requests=100, bytes=1_000)
    result = await store.reserve(ask(org, requests=1, bytes=300))
    assert result == Granted({"requests": 1, "bytes": 300})


async def test_unlimited_meters_are_granted_the_need_and_not_recorded(store: Store) -> None:
    org = await org_with(store, requests=2)
    result = await store.reserve(ask(org, policy=ChunkPolicy(), requests=1, bytes=500))
    assert result == Granted({"requests": 1, "bytes": 500})
    # bytes becomes limited: nothing of it was held, so all of it is left.
    org = await relimit(store, org, requests=2, bytes=500)
    assert await store.reserve(ask(org, bytes=500)) == Granted({"bytes": 500})


async def test_reserve_is_all_or_nothing_across_meters(store: Store) -> None:
    org = await org_with(store, requests=10, bytes=100)
    assert await store.reserve(ask(org, requests=1, bytes=200)) == Exhausted("bytes", 100, 0)
    # The requests meter fitted but was not recorded: all 10 are still there.
    assert await store.reserve(ask(org, requests=10)) == Granted({"requests": 10})
    assert await store.reserve(ask(org, requests=1)) == Exhausted("requests", 10, 10)


async def test_exactly_the_limit_is_granted_under_concurrency(store: Store) -> None:
    org = await org_with(store, requests=5)
    results = await asyncio.gather(
        *(store.reserve(ask(org, holder=f"replica-{i % 3}", requests=1)) for i in range(100))
    )
    assert sum(isinstance(r, Granted) for r in results) == 5
    assert sum(isinstance(r, Exhausted) for r in results) == 95


async def test_expired_reservations_count_for_nothing(store: Store) -> None:
    org = await org_with(store, requests=5)
    assert await store.reserve(ask(org, now=1_000, ttl=30, requests=5)) == Granted({"requests": 5})
    before = await store.reserve(ask(org, holder="replica-b", now=1_029.9, requests=1))
    assert before == Exhausted("requests", 5, 5)
    after = await store.reserve(ask(org, holder="replica-b", now=1_030, requests=5))
    assert after == Granted({"requests": 5})


async def test_reserve_over_an_expired_own_reservation_starts_afresh(store: Store) -> None:
    org = await org_with(store, requests=5)
    await store.reserve(ask(org, now=1_000, ttl=30, requests=4))
    await store.reserve(ask(org, now=2_000, ttl=30, requests=2))
    # The holder holds 2 now, not 6: 3 are left for others.
    assert await store.reserve(ask(org, holder="b", now=2_001, requests=3)) == Granted(
        {"requests": 3}
    )
    assert await store.reserve(ask(org, holder="b", now=2_001, requests=1)) == Exhausted(
        "requests", 5, 5
    )


async def test_heartbeat_extends_only_live_rows_of_the_holder(store: Store) -> None:
    org = await org_with(store, requests=6)
    await store.reserve(ask(org, holder="a", now=0, ttl=10, requests=2))
    await store.reserve(ask(org, holder="b", now=0, ttl=10, requests=2))
    await store.reserve(ask(org, holder="c", now=0, ttl=3, requests=2))
    await store.heartbeat("a", now=5, ttl=10)  # a lives until 15, b still ends at 10
    await store.heartbeat("c", now=5, ttl=10)  # c had already expired at 3

    assert await store.reserve(ask(org, holder="d", now=12, requests=4)) == Granted({"requests": 4})
    assert await store.reserve(ask(org, holder="d", now=12, requests=1)) == Exhausted(
        "requests", 6, 6
    )


async def test_release_frees_only_the_holders_reservations(store: Store) -> None:
    org = await org_with(store, requests=5)
    await store.reserve(ask(org, holder="a", requests=3))
    await store.reserve(ask(org, holder="b", requests=2))
    await store.release("a")
    assert await store.reserve(ask(org, holder="c", requests=3)) == Granted({"requests": 3})
    assert await store.reserve(ask(org, holder="c", requests=1)) == Exhausted("requests", 5, 5)


# commit and usage


async def test_commit_moves_reserved_to_used_once(store: Store) -> None:
    org = await org_with(store, requests=10)
    await store.reserve(ask(org, holder="a", requests=4))
    await store.reserve(ask(org, holder="b", requests=2))
    spent = UsageBatch("batch-1", "a", org.id, PERIOD, {"requests": 3}, {"requests": -4})

    assert await store.commit(spent) is True
    assert await store.usage(org.id, PERIOD) == {"requests": 3}
    # 10 - 3 used - 2 held by b.
    assert await store.reserve(ask(org, holder="c", requests=5)) == Granted({"requests": 5})
    assert await store.reserve(ask(org, holder="c", requests=1)) == Exhausted("requests", 10, 10)

    assert await store.commit(spent) is False
    assert await store.usage(org.id, PERIOD) == {"requests": 3}
    assert await store.reserve(ask(org, holder="c", requests=1)) == Exhausted("requests", 10, 10)


async def test_commit_clamps_the_reservation_at_zero(store: Store) -> None:
    org = await org_with(store, requests=10)
    await store.reserve(ask(org, holder="a", requests=4))
    await store.commit(UsageBatch("batch-1", "a", org.id, PERIOD, reserved={"requests": -100}))
    # A negative reservation would leave room beyond the limit.
    assert await store.reserve(ask(org, holder="b", requests=10)) == Granted({"requests": 10})
    assert await store.reserve(ask(org, holder="b", requests=1)) == Exhausted("requests", 10, 10)


async def test_commit_ignores_reserved_deltas_without_a_reservation(store: Store) -> None:
    org = await org_with(store, requests=10)
    batch = UsageBatch("batch-1", "a", org.id, PERIOD, reserved={"requests": 5})
    assert await store.commit(batch) is True
    assert await store.reserve(ask(org, holder="b", requests=10)) == Granted({"requests": 10})


async def test_usage_returns_every_stored_meter(store: Store) -> None:
    org = await org_with(store)
    assert await store.usage(org.id, PERIOD) == {}
    await store.commit(
        UsageBatch("batch-1", "a", org.id, PERIOD, {"requests": 2, "shadow:requests": 7})
    )
    await store.commit(UsageBatch("batch-2", "a", org.id, PERIOD, {"requests": 3, "bytes": 10}))
    assert await store.usage(org.id, PERIOD) == {"requests": 5, "bytes": 10, "shadow:requests": 7}


async def test_usage_is_per_period(store: Store) -> None:
    org = await org_with(store, requests=5)
    await store.reserve(ask(org, requests=5))
    await store.commit(UsageBatch("batch-1", "replica-a", org.id, PERIOD, {"requests": 5}))
    assert await store.usage(org.id, NEXT_PERIOD) == {}
    assert await store.reserve(ask(org, period=NEXT_PERIOD, requests=5)) == Granted({"requests": 5})
    assert await store.reserve(ask(org, requests=1)) == Exhausted("requests", 5, 10)


async def test_limit_lowered_below_used_is_exhausted(store: Store) -> None:
    org = await org_with(store, requests=10)
    await store.reserve(ask(org, requests=8))
    await store.commit(
        UsageBatch("batch-1", "replica-a", org.id, PERIOD, {"requests": 8}, {"requests": -8})
    )
    org = await relimit(store, org, requests=5)
    assert await store.reserve(ask(org, requests=1)) == Exhausted("requests", 5, 8)


async def test_reserving_alone_records_no_usage(store: Store) -> None:
    org = await org_with(store, requests=5)
    await store.reserve(ask(org, requests=2, bytes=7))
    await store.reserve(ask(org, requests=9))
    assert await store.usage(org.id, PERIOD) == {}


# reservations recorded elsewhere


def by_holder_and_meter(rows: list[ReservationRow]) -> list[ReservationRow]:
    return sorted(rows, key=lambda row: (row.holder, row.meter))


async def test_live_reservations_lists_live_rows_that_hold_something(store: Store) -> None:
    org = await org_with(store, requests=10, bytes=1_000)
    await store.reserve(ask(org, holder="a", now=1_000, ttl=60, requests=2, bytes=100))
    # items is unlimited: granted, not recorded.
    await store.reserve(ask(org, holder="b", now=1_000, ttl=10, requests=3, items=5))
    await store.reserve(ask(org, holder="c", period=NEXT_PERIOD, requests=1))
    # a's bytes are all spent: a row holding nothing is not listed.
    await store.commit(UsageBatch("batch-1", "a", org.id, PERIOD, {"bytes": 100}, {"bytes": -100}))

    rows = await store.live_reservations(org.id, PERIOD, now=1_005)
    assert by_holder_and_meter(rows) == [
        ReservationRow("a", "requests", 2, 1_060.0),
        ReservationRow("b", "requests", 3, 1_010.0),
    ]
    assert await store.live_reservations(org.id, PERIOD, now=1_010) == [
        ReservationRow("a", "requests", 2, 1_060.0)
    ]
    assert await store.live_reservations(org.id, NEXT_PERIOD, now=1_005) == [
        ReservationRow("c", "requests", 1, 1_060.0)
    ]
    assert await store.live_reservations("org_missing", PERIOD, now=1_005) == []


async def test_add_reservation_is_recorded_without_a_limit_check(store: Store) -> None:
    org = await org_with(store, requests=5)
    await store.add_reservation(ask(org, holder="a", now=1_000), {"requests": 3})
    # A live row grows and its expiry restarts, past the limit if told so.
    await store.add_reservation(ask(org, holder="a", now=1_010), {"requests": 4})
    assert await store.live_reservations(org.id, PERIOD, now=1_010) == [
        ReservationRow("a", "requests", 7, 1_070.0)
    ]
    assert await store.reserve(ask(org, holder="b", now=1_010, requests=1)) == Exhausted(
        "requests", 5, 7
    )

    # An expired row is replaced, not grown.
    await store.add_reservation(ask(org, holder="a", now=2_000), {"requests": 2})
    assert await store.live_reservations(org.id, PERIOD, now=2_000) == [
        ReservationRow("a", "requests", 2, 2_060.0)
    ]
    assert await store.reserve(ask(org, holder="b", now=2_000, requests=3)) == Granted(
        {"requests": 3}
    )


async def test_added_reservations_are_committed_like_granted_ones(store: Store) -> None:
    org = await org_with(store, requests=10, bytes=100)
    amounts = {"requests": 4, "bytes": 40}
    await store.add_reservation(ask(org, holder="a", now=1_000), amounts)
    spent = UsageBatch("batch-1", "a", org.id, PERIOD, {"requests": 4}, {"requests": -4})
    assert await store.commit(spent) is True
    assert await store.live_reservations(org.id, PERIOD, now=1_000) == [
        ReservationRow("a", "bytes", 40, 1_060.0)
    ]
    await store.release("a")
    assert await store.live_reservations(org.id, PERIOD, now=1_000) == []
    assert await store.usage(org.id, PERIOD) == {"requests": 4}


# snapshots (what a Redis rebuild loads)


async def test_quota_snapshot_reads_usage_reservations_and_batches_of_one_counter(
    store: Store,
) -> None:
    org = await org_with(store, requests=10, bytes=1_000)
    other = await org_with(store, requests=10)
    await store.reserve(ask(org, holder="a", now=1_000, ttl=60, requests=4, bytes=100))
    await store.reserve(ask(org, holder="b", now=1_000, ttl=10, requests=1))
    spent = UsageBatch(
        "batch-1", "a", org.id, PERIOD, {"requests": 2, "shadow:requests": 5}, {"requests": -2}
    )
    assert await store.commit(spent) is True
    assert await store.commit(spent) is False
    await store.commit(UsageBatch("batch-2", "a", org.id, PERIOD, {"bytes": 30}))
    await store.commit(UsageBatch("batch-3", "a", org.id, NEXT_PERIOD, {"requests": 1}))
    await store.commit(UsageBatch("batch-4", "a", other.id, PERIOD, {"requests": 1}))

    snapshot = await store.quota_snapshot(org.id, PERIOD, now=1_005)
    # Only the meters quota counts: shadow counters stay out.
    assert snapshot.used == {"requests": 2, "bytes": 30}
    assert by_holder_and_meter(snapshot.reservations) == [
        ReservationRow("a", "bytes", 100, 1_060.0),
        ReservationRow("a", "requests", 2, 1_060.0),
        ReservationRow("b", "requests", 1, 1_010.0),
    ]
    assert sorted(snapshot.batch_ids) == ["batch-1", "batch-2"]

    later = await store.quota_snapshot(org.id, PERIOD, now=1_010)
    assert [row.holder for row in later.reservations] == ["a", "a"]
    assert await store.quota_snapshot("org_missing", PERIOD, now=1_005) == QuotaSnapshot(
        used={}, reservations=[], batch_ids=[]
    )


async def test_quota_snapshot_is_consistent_while_commits_land(store: Store) -> None:
    org = await org_with(store, requests=10_000)
    batches = [UsageBatch(f"batch-{n}", "a", org.id, PERIOD, {"requests": 1}) for n in range(40)]

    async def snapshot_used_and_batches() -> tuple[int, int]:
        snapshot = await store.quota_snapshot(org.id, PERIOD, now=1_000)
        return snapshot.used.get("requests", 0), len(snapshot.batch_ids)

    _, seen = await asyncio.gather(
        asyncio.gather(*(store.commit(batch) for batch in batches)),
        asyncio.gather(*(snapshot_used_and_batches() for _ in range(40))),
    )
    # Every batch adds 1: a snapshot that counts n of them lists exactly n ids.
    assert all(used == listed for used, listed in seen), seen


# periods


async def test_claim_period_once_per_newer_period(store: Store) -> None:
    assert await store.claim_period("org_a", PERIOD) is True
    assert await store.claim_period("org_a", PERIOD) is False
    assert await store.claim_period("org_b", PERIOD) is True
    assert await store.claim_period("org_a", "2024-04-01T00:00:00+00:00") is False
    assert await store.claim_period("org_a", NEXT_PERIOD) is True
    assert await store.claim_period("org_a", PERIOD) is False


async def test_concurrent_claims_of_a_period_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.claim_period("org_a", PERIOD) for _ in range(20)))
    assert results.count(True) == 1


async def test_ping_answers_while_open_and_is_a_store_error_once_closed(
    durable: NewStore,
) -> None:
    # Readiness reads "store unreachable" from this StoreError.
    store = durable()
    await store.open()
    await store.ping()  # answers, raising nothing
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


# durable backends: several instances on one database


async def test_data_survives_close_and_reopen(durable: NewStore) -> None:
    first = durable()
    await first.open()
    org = await first.create_org("acme", Limits(requests=10), "http://upstream")
    await first.create_key(org.id, b"hash-1")
    await first.reserve(ask(org, requests=4))
    await first.commit(UsageBatch("batch-1", "replica-a", org.id, PERIOD, {"requests": 1}))
    await first.close()

    second = durable()
    await second.open()
    try:
        assert await second.get_org(org.id) == org
        assert await second.routing_for_key(b"hash-1") == org.routing()
        assert await second.usage(org.id, PERIOD) == {"requests": 1}
        assert await second.reserve(ask(org, holder="b", requests=5)) == Granted({"requests": 5})
        assert await second.reserve(ask(org, holder="b", requests=1)) == Exhausted(
            "requests", 10, 10
        )
        assert (
            await second.commit(UsageBatch("batch-1", "replica-a", org.id, PERIOD, {"requests": 1}))
            is False
        )
    finally:
        await second.close()


async def test_reservations_and_periods_survive_close_and_reopen(durable: NewStore) -> None:
    first = durable()
    await first.open()
    held = ReserveRequest("a", "org_a", PERIOD, {}, STRICT, 1_000, 60)
    await first.add_reservation(held, {"requests": 3})
    await first.claim_period("org_a", PERIOD)
    await first.close()

    second = durable()
    await second.open()
    try:
        assert await second.live_reservations("org_a", PERIOD, now=1_000) == [
            ReservationRow("a", "requests", 3, 1_060.0)
        ]
        assert await second.claim_period("org_a", PERIOD) is False
    finally:
        await second.close()


async def test_two_instances_grant_exactly_the_limit(durable: NewStore) -> None:
    stores = [durable(), durable()]
    for store in stores:
        await store.open()
    try:
        org = await stores[0].create_org("acme", Limits(requests=20), None)
        results = await asyncio.gather(
            *(
                store.reserve(ask(org, holder=f"replica-{n}", requests=1))
                for n, store in enumerate(stores)
                for _ in range(50)
            )
        )
    finally:
        for store in stores:
            await store.close()
    assert sum(isinstance(r, Granted) for r in results) == 20


# choosing a backend


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/gateway.db", "/var/lib/gateway.db"),
        ("sqlite://data/gateway.db", "data/gateway.db"),
        ("data/gateway.sqlite", "data/gateway.sqlite"),
    ],
)
def test_open_store_sqlite_urls(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SQLiteStore) and store.path == path


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("postgresql://u:secret@db/gw", None),
        ("postgres://u:secret@db:5433/gw?schema=tenant_1&sslmode=disable", "tenant_1"),
    ],
)
def test_open_store_postgres_urls(url: str, schema: str | None) -> None:
    store = open_store(url)
    assert isinstance(store, PostgresStore) and store.schema == schema
    assert "secret" not in repr(store)


@pytest.mark.parametrize(
    "url", ["redis://db", "gateway", "sqlite://", "u:secret@db/gw", "mysql://u:secret@db/gw"]
)
def test_open_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_STORE_URL") as info:
        open_store(url)
    assert "secret" not in str(info.value)


async def test_sqlite_creates_the_parent_folder(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "a" / "b" / "gateway.db"))
    await store.open()
    await store.ping()
    await store.close()
    assert (tmp_path / "a" / "b" / "gateway.db").exists()


async def test_sqlite_upgrades_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in sqlite_schema_v1:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO applied_batches (batch_id, applied_at) VALUES ('old', 1.0)")
        conn.execute(
            "INSERT INTO orgs (id, name, created_at) VALUES ('org_v1', 'v1', ?)", (PERIOD,)
        )
        conn.execute("INSERT INTO org_limits VALUES ('org_v1', 'items', 5), ('org_v1', 'bytes', 9)")

    upgraded = SQLiteStore(str(path))
    await upgraded.open()
    try:
        kept = await upgraded.get_org("org_v1")  # every table rebuilt since keeps its rows
        assert kept is not None and kept.limits == Limits(items=5, bytes=9)
        assert await upgraded.claim_period("org_a", PERIOD) is True
        old = UsageBatch("old", "a", "org_a", PERIOD, {"requests": 1})
        assert await upgraded.commit(old) is False
        assert await upgraded.commit(replace(old, batch_id="new")) is True
        snapshot = await upgraded.quota_snapshot("org_a", PERIOD, now=1_000)
        # A batch from before the upgrade has no (org, period): it is never listed.
        assert snapshot.batch_ids == ["new"]
    finally:
        await upgraded.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (SQLITE_SCHEMA_VERSION,)
        ]


# meters per signal


def needs(org: OrgRecord, wanted: dict[str, int]) -> ReserveRequest:
    return ReserveRequest("replica-a", org.id, PERIOD, wanted, STRICT, 1_000.0, 60.0, org.limits)


async def test_a_signal_meter_is_limited_reserved_committed_and_snapshotted(store: Store) -> None:
    limits = Limits.from_dict({"logs.items": 5, "items": 100})
    org = await store.create_org("acme", limits, None)
    assert (await store.get_org(org.id)) == org and org.limits == limits
    await store.create_key(org.id, b"hash-signal")
    routing = await store.routing_for_key(b"hash-signal")
    assert routing is not None and routing.limits == limits

    granted = await store.reserve(needs(org, {"logs.items": 5, "items": 5}))
    assert granted == Granted({"items": 5, "logs.items": 5})
    refused = await store.reserve(needs(org, {"logs.items": 1, "items": 1}))
    assert isinstance(refused, Exhausted)
    assert (refused.meter, refused.limit, refused.taken) == ("logs.items", 5, 5)

    spent = {"requests": 2, "items": 5, "logs.requests": 2, "logs.items": 5}
    batch = UsageBatch("batch-signal", "replica-a", org.id, PERIOD, spent,
                       {"items": -5, "logs.items": -5})  # fmt: skip
    assert await store.commit(batch)
    assert await store.usage(org.id, PERIOD) == spent
    snapshot = await store.quota_snapshot(org.id, PERIOD, now=1_000)
    assert snapshot.used == {"requests": 2, "items": 5, "logs.requests": 2, "logs.items": 5}
    after = await store.reserve(needs(org, {"logs.items": 1}))
    assert isinstance(after, Exhausted)
    assert (after.meter, after.limit, after.taken) == ("logs.items", 5, 5)
