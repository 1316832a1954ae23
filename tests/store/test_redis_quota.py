"""RedisQuotaStore against a real Redis, with MemoryStore, SQLite or PostgreSQL as the truth."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from gateway.store.base import (
    Exhausted,
    Granted,
    ReservationRow,
    ReserveRequest,
    ReserveResult,
    Store,
    UsageBatch,
)
from gateway.store.memory import MemoryStore
from gateway.store.redis_quota import RedisQuotaStore
from policies.model import Limits
from policies.reservations import ChunkPolicy
from tests.fakes import FlakyStore
from tests.services import ThrowawayRedis, unavailable
from tests.store.conftest import MakeStore

PERIOD = "2024-05-01T00:00:00+00:00"
STRICT = ChunkPolicy(strict=True)
NOW = time.time()


def ask(
    org: str,
    limits: Limits,
    *,
    holder: str = "replica-a",
    policy: ChunkPolicy = STRICT,
    now: float = NOW,
    ttl: float = 60.0,
    **needs: int,
) -> ReserveRequest:
    return ReserveRequest(
        holder, org, PERIOD, needs, policy, now, ttl, limits=limits, period_end=NOW + 86400
    )


def granted(results: list[ReserveResult]) -> int:
    return sum(isinstance(r, Granted) for r in results)


async def hash_of(raw: aioredis.Redis, store: RedisQuotaStore, org: str) -> dict[str, str]:
    fields = await raw.hgetall(store.quota_key(org, PERIOD))
    return {str(name): str(value) for name, value in fields.items()}


def amounts(rows: list[ReservationRow]) -> dict[tuple[str, str], int]:
    return {(row.holder, row.meter): row.amount for row in rows}


async def test_100_concurrent_strict_reserves_from_two_instances_grant_exactly_5(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    a, b = await make_store(), await make_store()
    limits = Limits(requests=5)
    calls = [
        (a if i % 2 else b).reserve(
            ask(org, limits, holder="replica-a" if i % 2 else "replica-b", requests=1)
        )
        for i in range(100)
    ]
    results = await asyncio.gather(*calls)
    assert granted(results) == 5
    refused = [r for r in results if isinstance(r, Exhausted)]
    assert {(r.meter, r.limit, r.taken) for r in refused} == {("requests", 5, 5)}
    rows = await truth.live_reservations(org, PERIOD, NOW)
    assert sum(row.amount for row in rows) == 5


async def test_one_meter_short_grants_nothing_on_any_meter(
    make_store: MakeStore, truth: Store, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    limits = Limits(requests=10, bytes=100)
    assert await store.reserve(ask(org, limits, requests=1, bytes=60)) == Granted(
        {"requests": 1, "bytes": 60}
    )

    assert await store.reserve(ask(org, limits, requests=1, bytes=41)) == Exhausted(
        "bytes", 100, 60
    )
    assert await store.reserve(ask(org, limits, requests=9, bytes=40)) == Granted(
        {"requests": 9, "bytes": 40}
    )
    assert await store.reserve(ask(org, limits, requests=1)) == Exhausted("requests", 10, 10)
    assert amounts(await truth.live_reservations(org, PERIOD, NOW)) == {
        ("replica-a", "requests"): 10,
        ("replica-a", "bytes"): 100,
    }


async def test_grant_is_written_through_to_the_truth_and_unlimited_meters_are_not(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    store = await make_store()
    result = await store.reserve(ask(org, Limits(requests=10), ttl=30.0, requests=3, items=7))
    assert result == Granted({"requests": 3, "items": 7})
    assert await truth.live_reservations(org, PERIOD, NOW) == [
        ReservationRow("replica-a", "requests", 3, NOW + 30.0)
    ]


async def test_hash_lives_until_the_period_ends_plus_grace(
    make_store: MakeStore, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    await store.reserve(ask(org, Limits(requests=10), requests=1))
    expires = await raw.expiretime(store.quota_key(org, PERIOD))
    assert expires == int(NOW + 86400 + 7 * 86400)


async def test_chunks_match_the_reference_store(make_store: MakeStore, org: str) -> None:
    store = await make_store()
    reference = MemoryStore()
    limits = Limits(requests=1_000, bytes=10**15)
    record = await reference.create_org("acme", limits, None)
    policies = [ChunkPolicy(replicas=3, max_requests=100), ChunkPolicy(), STRICT]
    for step in range(12):
        policy = policies[step % 3]
        needs = {"requests": 1 + step, "bytes": 10**13}
        ours = await store.reserve(
            ask(org, limits, policy=policy, requests=needs["requests"], bytes=needs["bytes"])
        )
        theirs = await reference.reserve(
            ReserveRequest("replica-a", record.id, PERIOD, needs, policy, NOW, 60.0, limits)
        )
        assert ours == theirs, step


async def test_commit_moves_reserved_to_used_once(
    make_store: MakeStore, truth: Store, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    limits = Limits(requests=10)
    await store.reserve(ask(org, limits, requests=4))
    batch = UsageBatch("batch-1", "replica-a", org, PERIOD, {"requests": 3}, {"requests": -4})

    assert await store.commit(batch) is True
    after = await hash_of(raw, store, org)
    assert (after["used:requests"], after["res:replica-a:requests"]) == ("3", "0")
    assert await truth.usage(org, PERIOD) == {"requests": 3}
    assert await truth.live_reservations(org, PERIOD, NOW) == []

    assert await store.commit(batch) is False
    assert await hash_of(raw, store, org) == after
    assert await truth.usage(org, PERIOD) == {"requests": 3}
    results = [await store.reserve(ask(org, limits, requests=1)) for _ in range(8)]
    assert granted(results) == 7


async def test_batch_the_truth_has_but_redis_missed_is_applied_on_replay(
    make_store: MakeStore, truth: Store, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    await store.reserve(ask(org, Limits(requests=10), requests=4))
    batch = UsageBatch("batch-1", "replica-a", org, PERIOD, {"requests": 3}, {"requests": -4})
    await truth.commit(batch)  # as if Redis failed right after the truth took it

    assert await store.commit(batch) is False
    assert await store.commit(batch) is False
    state = await hash_of(raw, store, org)
    assert (state["used:requests"], state["res:replica-a:requests"]) == ("3", "0")


async def test_flushed_hash_is_rebuilt_from_the_truth_as_if_nothing_happened(
    make_store: MakeStore, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    limits = Limits(requests=10)
    assert isinstance(await store.reserve(ask(org, limits, requests=6)), Granted)
    await store.commit(
        UsageBatch("batch-1", "replica-a", org, PERIOD, {"requests": 6}, {"requests": -6})
    )
    await store.reserve(ask(org, limits, holder="replica-b", requests=1))

    await raw.delete(store.quota_key(org, PERIOD))  # what a Redis restart does

    results = await asyncio.gather(*(store.reserve(ask(org, limits, requests=1)) for _ in range(9)))
    assert granted(results) == 3
    state = await hash_of(raw, store, org)
    assert state["used:requests"] == "6"
    assert state["res:replica-b:requests"] == "1"


async def test_instances_rebuilding_at_once_count_the_truth_once(
    make_store: MakeStore, truth: Store, raw: aioredis.Redis, org: str
) -> None:
    await truth.commit(UsageBatch("batch-1", "replica-z", org, PERIOD, {"requests": 6}))
    a, b = await make_store(), await make_store()
    limits = Limits(requests=10)
    calls = [(a if i % 2 else b).reserve(ask(org, limits, requests=1)) for i in range(20)]
    assert granted(await asyncio.gather(*calls)) == 4
    assert (await hash_of(raw, a, org))["used:requests"] == "6"


async def test_commit_to_an_unloaded_hash_reaches_redis_through_the_rebuild(
    make_store: MakeStore, truth: Store, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    batch = UsageBatch("batch-1", "replica-a", org, PERIOD, {"requests": 8})
    assert await store.commit(batch) is True
    assert await hash_of(raw, store, org) == {}

    limits = Limits(requests=10)
    results = [await store.reserve(ask(org, limits, requests=1)) for _ in range(3)]
    assert granted(results) == 2
    assert await store.commit(batch) is False
    assert (await hash_of(raw, store, org))["used:requests"] == "8"


async def test_expired_holders_stop_counting(
    make_store: MakeStore, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    limits = Limits(requests=5)
    assert isinstance(
        await store.reserve(ask(org, limits, holder="dead", ttl=10, requests=5)), Granted
    )
    assert await store.reserve(ask(org, limits, holder="live", now=NOW + 9, requests=1)) == (
        Exhausted("requests", 5, 5)
    )
    later = ask(org, limits, holder="live", now=NOW + 11, requests=5)
    assert await store.reserve(later) == Granted({"requests": 5})
    assert not any("dead" in field for field in await hash_of(raw, store, org))


async def test_heartbeat_keeps_reservations_alive_and_release_frees_them(
    make_store: MakeStore, truth: Store, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    limits = Limits(requests=5)
    await store.reserve(ask(org, limits, holder="h", ttl=10, requests=3))
    await store.reserve(ask(org, limits, holder="gone", ttl=10, requests=1))
    await store.heartbeat("h", NOW + 8, 10)

    late = ask(org, limits, holder="other", now=NOW + 15, requests=3)
    assert await store.reserve(late) == Exhausted("requests", 5, 3)
    assert amounts(await truth.live_reservations(org, PERIOD, NOW + 15)) == {("h", "requests"): 3}

    await store.release("h")
    assert await store.reserve(late) == Granted({"requests": 3})
    assert set(await hash_of(raw, store, org)) == {
        "ready",
        "exp:other",
        "res:other:requests",
    }
    assert await truth.live_reservations(org, PERIOD, NOW + 15) == [
        ReservationRow("other", "requests", 3, NOW + 75)
    ]


async def test_release_keeps_fields_of_holders_whose_names_extend_it(
    make_store: MakeStore, raw: aioredis.Redis, org: str
) -> None:
    store = await make_store()
    limits = Limits(requests=5)
    await store.reserve(ask(org, limits, holder="a", requests=1))
    await store.reserve(ask(org, limits, holder="a:b", requests=1))
    await store.release("a")
    assert set(await hash_of(raw, store, org)) == {"ready", "exp:a:b", "res:a:b:requests"}


async def test_grant_the_truth_did_not_record_is_given_back_and_the_truth_grants_instead(
    make_store: MakeStore, raw: aioredis.Redis, org: str
) -> None:
    inner = MemoryStore()
    truth = FlakyStore(inner)
    truth.failing.add("add_reservation")
    store = await make_store(truth=truth)
    limits = Limits(requests=5)
    assert await store.reserve(ask(org, limits, requests=5)) == Granted({"requests": 5})
    assert (await hash_of(raw, store, org))["res:replica-a:requests"] == "0"
    snapshot = await inner.quota_snapshot(org, PERIOD, NOW)
    assert amounts(snapshot.reservations) == {("replica-a", "requests"): 5}
    assert snapshot.stale  # Redis rebuilds before it grants again


async def test_grant_abandoned_by_a_timed_out_caller_is_given_back(
    make_store: MakeStore, raw: aioredis.Redis, org: str
) -> None:
    truth = FlakyStore(MemoryStore())
    truth.delays["add_reservation"] = 3600.0  # never answers before the caller gives up
    store = await make_store(truth=truth)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.reserve(ask(org, Limits(requests=5), requests=5)), 0.2)
    deadline = time.monotonic() + 10  # the give-back runs in the background
    while (await hash_of(raw, store, org))["res:replica-a:requests"] != "0":
        assert time.monotonic() < deadline, "the abandoned grant was never given back"
        await asyncio.sleep(0.01)


async def test_stopped_redis_falls_back_to_the_truth_at_the_limit_and_a_restart_loses_nothing(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    # Before: with Redis stopped every reserve raised, and the gateway admitted fail-open.
    try:
        server = ThrowawayRedis.create()
    except (RuntimeError, OSError):
        unavailable("redis-server")
    try:
        store = await make_store(server.url)
        limits = Limits(requests=5)
        assert isinstance(await store.reserve(ask(org, limits, requests=3)), Granted)

        server.stop()
        started = time.monotonic()
        results = [await store.reserve(ask(org, limits, requests=1)) for _ in range(3)]
        assert time.monotonic() - started < 10  # at once; 10 s only rules out a hang
        assert granted(results) == 2 and isinstance(results[2], Exhausted)
        assert store.fallbacks == 3

        server.start()  # empty: the hash comes back from the truth
        assert isinstance(await store.reserve(ask(org, limits, requests=1)), Exhausted)
        snapshot = await truth.quota_snapshot(org, PERIOD, NOW)
        assert sum(row.amount for row in snapshot.reservations) == 5
    finally:
        server.destroy()
