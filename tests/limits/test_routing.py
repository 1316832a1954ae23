from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

import pytest

from gateway.errors import StoreError, StoreUnavailable
from gateway.limits.guard import StoreGuard
from gateway.limits.routing import RoutingCache
from gateway.store.base import OrgRecord
from gateway.store.memory import MemoryStore
from policies.model import Limits, OrgRouting
from tests.fakes import Clock, FlakyStore

KNOWN = b"hash-of-igk_known"
UNKNOWN = b"hash-of-igk_unknown"


@pytest.fixture
def clock() -> Clock:
    return Clock(0.0)


@pytest.fixture
def store() -> FlakyStore:
    """A real MemoryStore whose key reads can be slowed down or made to fail."""
    return FlakyStore(MemoryStore())


@pytest.fixture
async def org(store: FlakyStore) -> OrgRecord:
    record: OrgRecord = await store.create_org("acme", Limits(requests=10), "http://upstream")
    assert await store.create_key(record.id, KNOWN) is not None
    return record


@pytest.fixture
def guard(clock: Clock) -> StoreGuard:
    # The breaker runs on the fake clock; the real-time budget is far above any store delay here.
    return StoreGuard(timeout=30.0, clock=clock)


@pytest.fixture
def cache(store: FlakyStore, guard: StoreGuard, clock: Clock) -> RoutingCache:
    return RoutingCache(store, guard, ttl=1.0, negative_ttl=1.0, timer=clock)


def read_known(store: FlakyStore) -> Callable[[], Awaitable[OrgRouting | None]]:
    return lambda: store.routing_for_key(KNOWN)


# RoutingCache


async def test_lookup_returns_the_orgs_routing(cache: RoutingCache, org: OrgRecord) -> None:
    routing = await cache.lookup(KNOWN)
    assert routing == org.routing()
    assert len(cache) == 1


async def test_hit_does_not_read_the_store_within_ttl(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    await cache.lookup(KNOWN)
    clock.now = 0.99
    assert await cache.lookup(KNOWN) == org.routing()
    assert cache.store_reads == 1
    assert store.calls["routing_for_key"] == 1


async def test_lookup_after_ttl_reads_the_store_again(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    await cache.lookup(KNOWN)
    await store.set_suspension(org.id, True, "unpaid")
    clock.now = 1.01
    routing = await cache.lookup(KNOWN)
    assert routing is not None and routing.suspended
    assert cache.store_reads == 2
    assert store.calls["routing_for_key"] == 2


@pytest.mark.parametrize("key_hash", [UNKNOWN, KNOWN], ids=["missing", "known"])
async def test_concurrent_lookups_of_one_key_read_the_store_once(
    cache: RoutingCache, store: FlakyStore, org: OrgRecord, key_hash: bytes
) -> None:
    store.delays["routing_for_key"] = 0.01
    results = await asyncio.gather(*(cache.lookup(key_hash) for _ in range(100)))
    expected = org.routing() if key_hash == KNOWN else None
    assert results == [expected] * 100
    assert cache.store_reads == 1
    assert store.calls["routing_for_key"] == 1


async def test_concurrent_lookups_of_a_never_seen_key_share_one_failure(
    cache: RoutingCache, store: FlakyStore
) -> None:
    store.delays["routing_for_key"] = 0.01
    store.failing.add("routing_for_key")
    results = await asyncio.gather(
        *(cache.lookup(UNKNOWN) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) for r in results)
    assert store.calls["routing_for_key"] == 1


async def test_unknown_key_is_negatively_cached_until_negative_ttl(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    assert await cache.lookup(UNKNOWN) is None
    await store.create_key(org.id, UNKNOWN)
    clock.now = 0.99
    assert await cache.lookup(UNKNOWN) is None
    assert cache.store_reads == 1
    clock.now = 1.01
    assert await cache.lookup(UNKNOWN) == org.routing()
    assert cache.store_reads == 2


async def test_failed_refresh_serves_the_last_known_routing(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    await cache.lookup(KNOWN)
    clock.now = 1.01
    store.failing.add("routing_for_key")
    assert await cache.lookup(KNOWN) == org.routing()
    assert cache.stale_served == 1
    assert cache.store_reads == 2
    # With the circuit open the store is not even asked, and the last-known routing still serves.
    assert await cache.lookup(KNOWN) == org.routing()
    assert cache.stale_served == 2
    assert store.calls["routing_for_key"] == 2


async def test_never_seen_key_while_the_store_fails_raises(
    cache: RoutingCache, store: FlakyStore
) -> None:
    store.failing.add("routing_for_key")
    with pytest.raises(StoreError):
        await cache.lookup(UNKNOWN)
    assert cache.stale_served == 0


async def test_revoked_key_is_not_served_stale(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    await cache.lookup(KNOWN)
    (key_id,) = store.key_ids
    await store.revoke_key(key_id)
    clock.now = 1.01
    assert await cache.lookup(KNOWN) is None
    clock.now = 2.02
    store.failing.add("routing_for_key")
    with pytest.raises(StoreError):
        await cache.lookup(KNOWN)


async def test_invalidate_org_makes_the_next_lookup_see_a_suspension(
    cache: RoutingCache, store: FlakyStore, org: OrgRecord
) -> None:
    assert (await cache.lookup(KNOWN)) == org.routing()
    await store.set_suspension(org.id, True, "unpaid")
    cached = await cache.lookup(KNOWN)
    assert cached is not None and not cached.suspended
    cache.invalidate_org(org.id)
    routing = await cache.lookup(KNOWN)
    assert routing is not None and routing.suspended
    assert cache.store_reads == 2


async def test_invalidate_org_keeps_other_orgs(
    cache: RoutingCache, store: FlakyStore, org: OrgRecord
) -> None:
    other = await store.create_org("other", Limits(), None)
    await store.create_key(other.id, UNKNOWN)
    await cache.lookup(KNOWN)
    await cache.lookup(UNKNOWN)
    cache.invalidate_org(other.id)
    await cache.lookup(KNOWN)
    assert cache.store_reads == 2
    await cache.lookup(UNKNOWN)
    assert cache.store_reads == 3
    assert len(cache) == 2


async def test_cancelled_leader_does_not_cancel_waiting_lookups(
    cache: RoutingCache, store: FlakyStore, org: OrgRecord
) -> None:
    store.delays["routing_for_key"] = 0.01
    leader = asyncio.create_task(cache.lookup(KNOWN))
    await asyncio.sleep(0)
    follower = asyncio.create_task(cache.lookup(KNOWN))
    await asyncio.sleep(0)
    leader.cancel()
    results = await asyncio.gather(leader, follower, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == org.routing()


# StoreGuard


async def test_guard_passes_results_through_and_stays_closed(
    guard: StoreGuard, store: FlakyStore, org: OrgRecord
) -> None:
    assert await guard.call(read_known(store)) == org.routing()
    assert not guard.is_open


async def test_after_a_failure_the_guard_refuses_without_calling_the_store(
    guard: StoreGuard, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    store.failing.add("routing_for_key")
    with pytest.raises(StoreError) as failed:
        await guard.call(read_known(store))
    assert not isinstance(failed.value, StoreUnavailable)
    assert guard.is_open
    store.failing.discard("routing_for_key")
    clock.now = 0.49
    with pytest.raises(StoreUnavailable):
        await guard.call(read_known(store))
    assert store.calls["routing_for_key"] == 1


async def test_after_cooldown_exactly_one_probe_goes_through(
    guard: StoreGuard, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    store.failing.add("routing_for_key")
    with pytest.raises(StoreError):
        await guard.call(read_known(store))
    store.failing.discard("routing_for_key")
    store.delays["routing_for_key"] = 0.01
    clock.now = 0.5
    probe = asyncio.create_task(guard.call(read_known(store)))
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailable):
        await guard.call(read_known(store))
    assert await probe == org.routing()
    assert store.calls["routing_for_key"] == 2
    assert not guard.is_open
    assert await guard.call(read_known(store)) == org.routing()
    assert store.calls["routing_for_key"] == 3


async def test_failed_probe_doubles_the_cooldown(
    guard: StoreGuard, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    store.failing.add("routing_for_key")
    with pytest.raises(StoreError):
        await guard.call(read_known(store))
    clock.now = 0.5
    with pytest.raises(StoreError):
        await guard.call(read_known(store))
    store.failing.discard("routing_for_key")
    clock.now = 1.49
    with pytest.raises(StoreUnavailable):
        await guard.call(read_known(store))
    clock.now = 1.5
    assert await guard.call(read_known(store)) == org.routing()
    assert store.calls["routing_for_key"] == 3


async def test_cancelled_probe_does_not_leave_the_guard_half_open(
    guard: StoreGuard, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    store.failing.add("routing_for_key")
    with pytest.raises(StoreError):
        await guard.call(read_known(store))
    store.failing.discard("routing_for_key")
    store.delays["routing_for_key"] = 0.01
    clock.now = 0.5
    probe = asyncio.create_task(guard.call(read_known(store)))
    await asyncio.sleep(0)
    probe.cancel()
    with suppress(asyncio.CancelledError):
        await probe
    clock.now = 10.0
    assert await guard.call(read_known(store)) == org.routing()


async def test_slow_store_beyond_the_budget_raises_store_error(
    store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    guard = StoreGuard(timeout=0.01, clock=clock)
    store.delay = 30.0  # far past the budget, and past any scheduling delay
    started = time.monotonic()
    with pytest.raises(StoreError) as failed:
        await guard.call(read_known(store))
    assert time.monotonic() - started < 10
    assert isinstance(failed.value.__cause__, TimeoutError)
    assert guard.is_open


async def test_call_budget_overrides_the_timeout(
    guard: StoreGuard, store: FlakyStore, org: OrgRecord
) -> None:
    store.delay = 30.0  # within the guard's 30 s timeout, far past the call's budget
    started = time.monotonic()
    with pytest.raises(StoreError):
        await guard.call(read_known(store), budget=0.01)
    assert time.monotonic() - started < 10


async def test_unmapped_driver_errors_become_store_errors(guard: StoreGuard) -> None:
    async def broken() -> None:
        raise RuntimeError("driver exploded")

    with pytest.raises(StoreError, match="RuntimeError") as failed:
        await guard.call(broken)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert guard.is_open


async def test_a_key_in_use_is_refreshed_ahead_of_expiry_without_waiting(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    """Regression: each TTL expiry made a request wait for the store (p99 stalls under load)."""
    await cache.lookup(KNOWN)
    await store.set_suspension(org.id, True, "unpaid")
    store.delay = 0.05
    clock.now = 0.85  # past 80% of the TTL: served from the cache, refreshed behind it
    served = await cache.lookup(KNOWN)
    assert served is not None and not served.suspended
    await cache.settled()
    routing = await cache.lookup(KNOWN)
    assert routing is not None and routing.suspended, "the refresh ahead never landed"
    assert store.calls["routing_for_key"] == 2
    clock.now = 1.5  # the first entry would have expired; the refreshed one has not
    before = store.calls["routing_for_key"]
    routing = await cache.lookup(KNOWN)
    assert routing is not None and routing.suspended
    assert store.calls["routing_for_key"] == before


async def test_the_cache_holds_at_most_maxsize_keys_the_least_recent_going_first(
    store: FlakyStore, guard: StoreGuard, clock: Clock, org: OrgRecord
) -> None:
    # Before: the last-known map and the refresh times grew with every key ever seen.
    hashes = [f"hash-{n}".encode() for n in range(50)]
    for key_hash in hashes:
        assert await store.create_key(org.id, key_hash) is not None
    bounded = RoutingCache(store, guard, ttl=1.0, maxsize=10, timer=clock)
    for key_hash in hashes:
        assert await bounded.lookup(key_hash) is not None
    for n in range(50):
        assert await bounded.lookup(f"hash-unknown-{n}".encode()) is None
    assert len(bounded) == 10
    assert len(bounded._fresh) <= 10 and len(bounded._negative) <= 10
    # Only the most recent keys are known while the store is down.
    store.down = True
    clock.advance(5.0)
    assert (await bounded.lookup(hashes[-1])) is not None
    with pytest.raises(StoreError):
        await bounded.lookup(hashes[0])


def test_cache_max_keys_must_be_positive() -> None:
    from gateway.errors import ConfigError
    from gateway.settings import Settings

    assert Settings.from_env({"GATEWAY_CACHE_MAX_KEYS": "5000"}).cache_max_keys == 5000
    with pytest.raises(ConfigError, match="GATEWAY_CACHE_MAX_KEYS"):
        Settings.from_env({"GATEWAY_CACHE_MAX_KEYS": "0"})


async def test_a_refresh_ahead_that_finds_the_key_revoked_stops_serving_it_at_once(
    cache: RoutingCache, store: FlakyStore, clock: Clock, org: OrgRecord
) -> None:
    """Review finding: the fresh entry stayed, its refresh time past, so every hit until its
    TTL ended served the revoked key and started another store read."""
    await cache.lookup(KNOWN)
    key_id = (await store.list_keys(org.id))[0].id
    await store.revoke_key(key_id)
    clock.now = 0.85  # past 80% of the TTL: this hit refreshes behind it
    await cache.lookup(KNOWN)
    await cache.settled()
    reads = store.calls["routing_for_key"]
    assert await cache.lookup(KNOWN) is None
    assert await cache.lookup(KNOWN) is None
    assert store.calls["routing_for_key"] == reads  # the negative cache answers
