"""The Store contract, live holders: every backend counts the processes sharing it alike.

Rates are divided by this count (gateway/limits/rates.py), so a holder missing from it lets an
org over its rate, and a dead one still in it holds the others below it.
"""

from __future__ import annotations

import asyncio

from gateway.store import Store
from tests.store.conftest import NewStore


async def test_a_holder_alone_counts_itself(store: Store) -> None:
    assert await store.live_holders("a", now=100.0, ttl=5.0) == 1
    assert await store.live_holders("a", now=101.0, ttl=5.0) == 1


async def test_every_live_holder_counts_once(store: Store) -> None:
    assert await store.live_holders("a", now=100.0, ttl=5.0) == 1
    assert await store.live_holders("b", now=100.5, ttl=5.0) == 2
    assert await store.live_holders("c", now=101.0, ttl=5.0) == 3
    assert await store.live_holders("a", now=102.0, ttl=5.0) == 3


async def test_a_holder_silent_for_its_ttl_no_longer_counts(store: Store) -> None:
    await store.live_holders("a", now=100.0, ttl=5.0)
    await store.live_holders("b", now=103.0, ttl=5.0)
    assert await store.live_holders("c", now=104.9, ttl=5.0) == 3
    assert await store.live_holders("c", now=105.0, ttl=5.0) == 2  # a's presence ended at 105
    assert await store.live_holders("c", now=108.5, ttl=5.0) == 1
    # One that comes back (a stalled loop, a healed partition) counts again at once.
    assert await store.live_holders("a", now=109.0, ttl=5.0) == 2


async def test_a_holder_leaves_with_a_zero_ttl(store: Store) -> None:
    await store.live_holders("a", now=100.0, ttl=5.0)
    await store.live_holders("b", now=100.0, ttl=5.0)
    await store.live_holders("a", now=101.0, ttl=0.0)
    assert await store.live_holders("b", now=101.0, ttl=5.0) == 1


async def test_other_leases_are_not_holders(store: Store) -> None:
    assert await store.acquire_lease("reconciler", "a", now=100.0, ttl=60.0)
    assert await store.live_holders("b", now=100.0, ttl=5.0) == 1
    # Counting never takes or ends another lease.
    assert not await store.acquire_lease("reconciler", "b", now=101.0, ttl=60.0)


async def test_holders_counting_at_once_all_count(store: Store) -> None:
    await asyncio.gather(*(store.live_holders(f"h{i}", now=100.0, ttl=5.0) for i in range(20)))
    assert await store.live_holders("h0", now=100.1, ttl=5.0) == 20


async def test_processes_on_one_database_count_each_other(durable: NewStore) -> None:
    stores = [durable() for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        counts = await asyncio.gather(
            *(s.live_holders(f"p{i}", now=100.0, ttl=5.0) for i, s in enumerate(stores))
        )
        assert max(counts) <= 3  # counting at once, each sees those committed before it
        assert [await s.live_holders(f"p{i}", 101.0, 5.0) for i, s in enumerate(stores)] == [3] * 3
        await stores[2].live_holders("p2", now=102.0, ttl=0.0)  # p2 shuts down
        assert await stores[0].live_holders("p0", now=102.0, ttl=5.0) == 2
    finally:
        for store in stores:
            await store.close()
